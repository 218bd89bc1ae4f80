"""A learned affinity (PSA's AffinityNet, Ahn & Kwak 2018), trained from the confident regions of the CAMs.

Features ``f = head(backbone(x))``; the affinity of two pixels within the radius is PSA's
``exp(-mean_c |f_i - f_j|)`` (:func:`grmseg.ops.local_affinity` at inference). Training pairs come from the
CAMs: pixels confidently of one class (CAM above ``conf_fg``), confidently background (every CAM below
``conf_bg``), or unknown (ignored). Loss (PSA): ``-log a`` for same-label pairs (background and foreground
pairs averaged separately), ``-log(1 - a)`` for pairs of different labels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from grmseg.models.backbones import build_backbone
from grmseg.pipeline.pseudo_masks import confident_masks
from grmseg.reference import affinity_offsets
from grmseg.reference import local_affinity as local_affinity_differentiable

IGNORE = 255


class AffinityNet(nn.Module):
    """Backbone + 1x1 conv head: ``[B, 3, H, W] -> features [B, dim, H / s, W / s]`` for PSA affinities.

    Args:
        backbone / width / weights_path / output_stride: as for the classifier (``grmseg.models``).
        dim: feature channels of the head.
    """

    def __init__(self, backbone: str = "tiny", width: int = 16, weights_path: str | None = None,
                 output_stride: int = 16, dim: int = 64) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, width, weights_path, output_stride)
        self.head = nn.Sequential(nn.Conv2d(self.backbone.out_channels, dim, 1, bias=False), nn.BatchNorm2d(dim),
                                  nn.ReLU(inplace=True), nn.Conv2d(dim, dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def confident_labels(keys: np.ndarray, cam: np.ndarray, conf_fg: float, conf_bg: float) -> np.ndarray:
    """IRN's confident regions of one image's CAMs (:func:`grmseg.pipeline.pseudo_masks.confident_masks`).

    Args:
        keys: ``[n]`` 1-based classes of the CAM channels.  cam: ``[n, h, w]`` in ``[0, 1]``.
        conf_fg: a pixel is confidently class k where CAM_k is the largest and above this.
        conf_bg: a pixel is confidently background where every CAM is at most this.

    Returns:
        uint8 ``[h, w]``: class index, 0 (background) or 255 (unknown).
    """
    out = confident_masks(torch.from_numpy(np.ascontiguousarray(cam, np.float32))[None], conf_fg=conf_fg,
                          conf_bg=conf_bg, class_indices=torch.from_numpy(np.asarray(keys)).long(),
                          ignore_index=IGNORE)
    return out[0].numpy().astype(np.uint8)


def _shift(t: Tensor, dy: int, dx: int, fill: int) -> Tensor:
    """``out[..., y, x] = t[..., y + dy, x + dx]``; ``fill`` outside."""
    out = torch.full_like(t, fill)
    h, w = t.shape[-2:]
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    out[..., yd, xd] = t[..., ys, xs]
    return out


def affinity_loss(feat: Tensor, labels: Tensor, radius: int) -> tuple[Tensor, dict[str, float]]:
    """PSA's affinity loss.

    Args:
        feat: ``[B, C, h, w]`` AffinityNet features.  labels: ``[B, h, w]`` long from :func:`confident_labels`.
        radius: pair radius (the offsets of :func:`grmseg.ops.affinity_offsets`).

    Returns:
        ``(loss, {"bg_pos", "fg_pos", "neg": pair counts})``.
    """
    aff = local_affinity_differentiable(feat, radius)  # [B, D, h, w], differentiable plain PyTorch
    planes = [_shift(labels, dy, dx, IGNORE) for dy, dx in affinity_offsets(radius)]
    other = torch.stack(planes, dim=1)  # [B, D, h, w]
    here = labels[:, None].expand_as(other)
    known = (here != IGNORE) & (other != IGNORE)
    same = known & (here == other)
    bg_pos = same & (here == 0)
    fg_pos = same & (here > 0)
    neg = known & (here != other)
    eps = 1e-5
    terms = []
    for mask, value in ((bg_pos, -torch.log(aff + eps)), (fg_pos, -torch.log(aff + eps)),
                        (neg, -torch.log(1 - aff + eps))):
        terms.append(value[mask].sum() / mask.sum().clamp_min(1))
    loss = terms[0] / 2 + terms[1] / 2 + terms[2]
    return loss, {"bg_pos": float(bg_pos.sum()), "fg_pos": float(fg_pos.sum()), "neg": float(neg.sum())}
