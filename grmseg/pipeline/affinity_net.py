"""A learned affinity (PSA's AffinityNet, Ahn & Kwak 2018), trained from the confident regions of the CAMs.

Features ``f = head(backbone(x))``; the affinity of two pixels within the radius is PSA's
``exp(-mean_c |f_i - f_j|)`` (:func:`grmseg.ops.local_affinity` at inference). Training pairs come from the
confident regions of the CAMs (:mod:`grmseg.pipeline.confident_regions`): pixels confidently of one class,
confidently background, or unknown (ignored). Loss (PSA, and IRN's for its boundary net, :func:`pair_loss`): ``-log a``
for same-label pairs (background and foreground pairs averaged separately), ``-log(1 - a)`` for pairs of
different labels. Every in-map pair is used (PSA drops pairs whose source lies in a 4-pixel border of the
crop, IRN a ``radius - 1`` border; grmseg keeps them: the offsets never leave the map).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from grmseg.models.backbones import build_backbone
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
        self.output_stride = self.backbone.output_stride

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def _shift(t: Tensor, dy: int, dx: int, fill: int) -> Tensor:
    """``out[..., y, x] = t[..., y + dy, x + dx]``; ``fill`` outside."""
    out = torch.full_like(t, fill)
    h, w = t.shape[-2:]
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    out[..., yd, xd] = t[..., ys, xs]
    return out


def pair_masks(labels: Tensor, radius: int) -> tuple[Tensor, Tensor, Tensor]:
    """The training pairs of an affinity: for every offset ``d`` of radius ``radius`` and pixel ``p`` with both
    ``p`` and ``p + o_d`` in the map and of known label (not 255).

    Args:
        labels: ``[B, h, w]`` long, from :func:`confident_labels` on the grid of the affinity.

    Returns:
        ``(bg_pos, fg_pos, neg)`` bool ``[B, D, h, w]``: both background; both the same object class;
        different labels.
    """
    planes = [_shift(labels, dy, dx, IGNORE) for dy, dx in affinity_offsets(radius)]
    other = torch.stack(planes, dim=1)  # [B, D, h, w]
    here = labels[:, None].expand_as(other)
    known = (here != IGNORE) & (other != IGNORE)
    same = known & (here == other)
    return same & (here == 0), same & (here > 0), known & (here != other)


def pair_loss(aff: Tensor, labels: Tensor, radius: int, eps: float = 1e-5) -> tuple[Tensor, dict[str, float]]:
    """PSA's / IRN's affinity loss: ``-log a`` on same-label pairs (background and foreground pairs averaged
    separately, then halved each), ``-log(1 - a)`` on pairs of different labels; the two halves averaged.

    Args:
        aff: ``[B, D, h, w]`` affinities in ``[0, 1]`` (differentiable).  labels: ``[B, h, w]`` long.
        radius: the radius of ``aff``'s offsets.  eps: inside the logs (IRN: 1e-5).

    Returns:
        ``(loss, {"bg_pos", "fg_pos", "neg": pair counts})``.
    """
    bg_pos, fg_pos, neg = pair_masks(labels, radius)
    pos = -torch.log(aff + eps)
    terms = [(pos * m).sum() / (m.sum() + eps) for m in (bg_pos, fg_pos)]
    neg_term = (-torch.log(1 + eps - aff) * neg).sum() / (neg.sum() + eps)
    loss = (terms[0] / 2 + terms[1] / 2 + neg_term) / 2
    return loss, {"bg_pos": float(bg_pos.sum()), "fg_pos": float(fg_pos.sum()), "neg": float(neg.sum())}


def affinity_loss(feat: Tensor, labels: Tensor, radius: int) -> tuple[Tensor, dict[str, float]]:
    """PSA's AffinityNet loss: :func:`pair_loss` of ``exp(-mean_c |f_i - f_j|)``.

    Args:
        feat: ``[B, C, h, w]`` AffinityNet features.  labels: ``[B, h, w]`` long from :func:`confident_labels`.
        radius: pair radius (the offsets of :func:`grmseg.ops.affinity_offsets`).

    Returns:
        ``(loss, {"bg_pos", "fg_pos", "neg": pair counts})``.
    """
    return pair_loss(local_affinity_differentiable(feat, radius), labels, radius)
