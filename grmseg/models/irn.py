"""IRN's inter-pixel relation network, boundary branch (Ahn, Cho, Kwak, CVPR 2019).

A frozen backbone gives features at every stage; each stage of stride >= 4 goes through a 1x1 conv to 32
channels, GroupNorm(4) and ReLU, is upsampled by exactly its stride / 4 onto the stride-4 grid (cropped to
``ceil(H / 4) x ceil(W / 4)``), and a 1x1 conv over the concatenation predicts a class-boundary logit per cell.
Trained from the confident regions of the CAMs through the path affinities of :func:`grmseg.reference.
boundary_affinity` (IRN's loss), it gives the boundary map whose path maxima make the random walk's affinities.
IRN's displacement-field branch (for instance masks) is not part of it.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grmseg.models.backbones import build_backbone

__all__ = ["BoundaryNet"]

GRID_STRIDE = 4


class BoundaryNet(nn.Module):
    """Boundary branch of IRN on a frozen backbone.

    Args:
        backbone / width / weights_path / output_stride: as for :class:`grmseg.models.MultiLabelClassifier`
            (IRN: an ImageNet ResNet-50 at output stride 16).
        channels: width of each level's 1x1 projection (IRN: 32).
        freeze_backbone: keep the backbone fixed (IRN, on ImageNet features); False trains it too (a backbone
            trained from scratch on little data gives too few edge cues when frozen).

    Shapes:
        ``forward(x [B, 3, H, W]) -> logits [B, 1, ceil(H / 4), ceil(W / 4)]``;
        :meth:`boundary` gives IRN's inference map (image and mirror averaged, sigmoid) in ``[0, 1]``.
    """

    def __init__(self, backbone: str = "tiny", width: int = 16, weights_path: str | os.PathLike | None = None,
                 output_stride: int = 16, channels: int = 32, freeze_backbone: bool = True) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, width, weights_path, output_stride)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        self.level_ids = [i for i, s in enumerate(self.backbone.level_strides) if s >= GRID_STRIDE]
        if not self.level_ids or self.backbone.level_strides[self.level_ids[0]] != GRID_STRIDE:
            raise ValueError(f"BoundaryNet: backbone {backbone!r} has no stride-{GRID_STRIDE} level")
        groups = 4 if channels % 4 == 0 else 1
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(self.backbone.level_channels[i], channels, 1, bias=False),
                          nn.GroupNorm(groups, channels), nn.ReLU(inplace=True))
            for i in self.level_ids)
        self.fuse = nn.Conv2d(channels * len(self.level_ids), 1, 1, bias=True)
        self.output_stride = GRID_STRIDE

    def train(self, mode: bool = True) -> BoundaryNet:
        """As ``nn.Module.train``; a frozen backbone stays in eval mode (its BatchNorm statistics fixed)."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            feats = self.backbone.levels(x)
        size = feats[self.level_ids[0]].shape[-2:]
        outs = []
        for head, i in zip(self.heads, self.level_ids):
            y = head(feats[i])
            factor = self.backbone.level_strides[i] // GRID_STRIDE
            if factor > 1:
                y = F.interpolate(y, scale_factor=factor, mode="bilinear", align_corners=False)
            outs.append(y[..., : size[0], : size[1]])
        return self.fuse(torch.cat(outs, dim=1))

    @torch.no_grad()
    def boundary(self, x: Tensor, flip: bool = True) -> Tensor:
        """Boundary probabilities ``[B, 1, ceil(H / 4), ceil(W / 4)]``: ``sigmoid`` of the logits, averaged
        with those of the mirrored image (IRN's ``EdgeDisplacement``)."""
        logits = self(x)
        if flip:
            logits = (logits + self(x.flip(-1)).flip(-1)) / 2
        return torch.sigmoid(logits)
