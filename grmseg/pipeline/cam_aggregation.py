"""Multi-scale + horizontal-flip CAM aggregation (IRN / ReCAM ``make_cam``).

For each scale the image is resized (bilinear, ``align_corners=False``), the classifier's features give ReLU'd
class scores for the image and for its mirror (flipped back), all maps are resized to a common size (bilinear,
``align_corners=False``) and summed, and the sum is normalised per (image, class) by its spatial maximum + 1e-5;
classes absent from the image labels are zero.

Two entry points: :func:`aggregate_cams` for maps already computed, :func:`multiscale_cams` for a feature extractor
and classifier weights (it computes the per-scale scores with the fused :func:`grmseg.ops.cam` when
``normalise_each=True``, or IRN's raw ReLU scores otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from grmseg import ops

__all__ = ["CAM_EPS", "aggregate_cams", "multiscale_cams"]

CAM_EPS = 1e-5


def _normalise(cam: Tensor, labels: Tensor | None, eps: float) -> Tensor:
    out = cam / (cam.amax(dim=(2, 3), keepdim=True) + eps)
    if labels is not None:
        if labels.shape != cam.shape[:2]:
            raise ValueError(f"argument 'labels' must have shape [B, K] = {list(cam.shape[:2])}, "
                             f"got {list(labels.shape)}")
        out = out * (labels.to(out.device) != 0).to(out.dtype)[:, :, None, None]
    return out


def aggregate_cams(
    cams: Sequence[Tensor],
    size: tuple[int, int] | None = None,
    *,
    flipped: Sequence[bool] | None = None,
    labels: Tensor | None = None,
    eps: float = CAM_EPS,
) -> Tensor:
    """Sum CAMs computed at several scales (and on mirrored images) and normalise the sum.

    Args:
        cams: maps ``[B, K, h_i, w_i]`` (non-negative, e.g. ReLU'd class scores), one per scale / flip.
        size: the common ``(h, w)``; default: the size of ``cams[0]`` (IRN: the scale-1.0 map comes first).
        flipped: per map, whether it was computed on the horizontally mirrored image (it is flipped back here);
            default: none is.
        labels: ``[B, K]`` multi-hot image labels or None; absent classes are zeroed.
        eps: added to the maximum (1e-5, as the ``cam`` op).

    Returns:
        ``[B, K, h, w]`` fp32 (fp64 for fp64 maps) in ``[0, 1)``: ``sum / (spatial max per (b, k) + eps)``.
    """
    if len(cams) == 0:
        raise ValueError("argument 'cams' must hold at least one map")
    if flipped is not None and len(flipped) != len(cams):
        raise ValueError(f"argument 'flipped' must have one flag per map ({len(cams)}), got {len(flipped)}")
    first = cams[0]
    if first.dim() != 4:
        raise ValueError(f"argument 'cams' must hold [B, K, h, w] maps, got shape {list(first.shape)}")
    size = tuple(size) if size is not None else tuple(first.shape[-2:])
    dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    total = None
    for i, cam in enumerate(cams):
        if cam.dim() != 4 or cam.shape[:2] != first.shape[:2]:
            raise ValueError(f"cams[{i}] must have shape [B, K, h, w] = {list(first.shape[:2])} + [h, w], "
                             f"got {list(cam.shape)}")
        c = cam.to(dtype)
        if flipped is not None and flipped[i]:
            c = c.flip(-1)
        if tuple(c.shape[-2:]) != size:
            c = F.interpolate(c, size=size, mode="bilinear", align_corners=False)
        total = c if total is None else total + c
    return _normalise(total, labels, eps)


def _raw_scores(feat: Tensor, weight: Tensor) -> Tensor:
    """IRN's per-scale CAM: ``relu(weight feat)`` ``[B, K, h, w]``, unnormalised, in fp32 (fp64 for fp64)."""
    dtype = torch.float64 if feat.dtype == torch.float64 else torch.float32
    return torch.relu(torch.einsum("kc,bchw->bkhw", weight.to(dtype), feat.to(dtype)))


@torch.no_grad()
def multiscale_cams(
    features: Callable[[Tensor], Tensor],
    image: Tensor,
    weight: Tensor,
    *,
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    flip: bool = True,
    labels: Tensor | None = None,
    size: tuple[int, int] | None = None,
    normalise_each: bool = False,
    backend: str = "auto",
) -> Tensor:
    """Multi-scale + flip CAMs of a classifier.

    Args:
        features: maps an image batch ``[B, 3, H', W']`` to backbone features ``[B, C, h', w']`` (e.g. the
            classifier's stride-16 trunk).
        image: ``[B, 3, H, W]``.  weight: ``[K, C]`` classifier weights (1x1 conv / linear).
        scales: image scales (IRN: 1.0, 0.5, 1.5, 2.0).  flip: also run the mirrored images.
        labels: ``[B, K]`` multi-hot or None (absent classes zeroed).
        size: output ``(h, w)``; default: the feature size at scale ``scales[0]``.
        normalise_each: per scale, take the normalised CAM of :func:`grmseg.ops.cam` (the fused op) instead of
            IRN's raw ReLU scores; every scale then weighs the same in the sum.
        backend: for :func:`grmseg.ops.cam`.

    Returns:
        ``[B, K, h, w]`` fp32 in ``[0, 1)``, normalised per (image, class) by the max of the sum + 1e-5.
    """
    if image.dim() != 4:
        raise ValueError(f"argument 'image' must have shape [B, 3, H, W], got {list(image.shape)}")
    if len(scales) == 0:
        raise ValueError("argument 'scales' must hold at least one scale")
    maps, flags = [], []
    h, w = image.shape[-2:]
    for s in scales:
        img = image if s == 1.0 else F.interpolate(
            image, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear", align_corners=False
        )
        batch = torch.cat([img, img.flip(-1)]) if flip else img
        feat = features(batch)
        if normalise_each:
            lab = None if labels is None else labels.repeat(2 if flip else 1, 1)
            cam = ops.cam(feat, weight.to(feat.dtype), lab, backend=backend)
        else:
            cam = _raw_scores(feat, weight)
        if flip:
            maps += [cam[: image.shape[0]], cam[image.shape[0]:]]
            flags += [False, True]
        else:
            maps.append(cam)
            flags.append(False)
    return aggregate_cams(maps, size, flipped=flags, labels=labels)
