"""Losses of the classification stage."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["multilabel_focal_loss"]


def multilabel_focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss (Lin et al. 2017, no class weighting) averaged over images and classes.

    ``-(1 - p_t)^gamma log p_t`` per (image, class), ``p_t`` the predicted probability of the true state; the GRM
    paper's code uses it (gamma 2, weight 1e-4) on the knowledge-GCN branch.

    Args:
        logits: ``[B, K]``.  targets: ``[B, K]`` multi-hot (0 / 1).  gamma: focusing exponent (0: binary CE).

    Returns:
        A scalar in the dtype of ``logits``.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"multilabel_focal_loss: 'targets' must have the shape of 'logits' {list(logits.shape)}, "
                         f"got {list(targets.shape)}")
    if gamma < 0:
        raise ValueError(f"multilabel_focal_loss: 'gamma' must be >= 0, got {gamma}")
    t = targets.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = (-bce).exp()
    return ((1 - p_t).pow(gamma) * bce).mean()
