"""Multi-scale + horizontal-flip CAM aggregation (IRN / ReCAM ``make_cam``), on exact image geometry.

For each scale the image is resized (bilinear, ``align_corners=False``, to ``round(H * s) x round(W * s)``), the
classifier's features give raw class scores ``relu(weight feat)`` for the image and for its mirror; every map is
brought onto a grid of the original image by :func:`grmseg.geometry.resample` (cell centres at their true place,
mirrored maps mirrored back in pixel coordinates), the raw maps are summed, and the sum is divided per
(image, class) by its spatial maximum + 1e-5; classes absent from the image labels are zero. At scale 1 this is
IRN's exact upsampling by the feature stride and crop; IRN stretches the other scales' maps onto ``ceil(H / 4)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from grmseg.geometry import resample, rescaled_size

__all__ = ["CAM_EPS", "ScaledCam", "aggregate_cams", "multiscale_cams", "raw_cam"]

CAM_EPS = 1e-5


class ScaledCam:
    """One raw CAM ``[B, K, h, w]`` of the image rescaled to ``scaled_size`` (and mirrored when ``mirrored``)."""

    def __init__(self, cam: Tensor, scaled_size: tuple[int, int], mirrored: bool = False) -> None:
        self.cam, self.scaled_size, self.mirrored = cam, tuple(scaled_size), mirrored


def _normalise(cam: Tensor, labels: Tensor | None, eps: float) -> Tensor:
    out = cam / (cam.amax(dim=(2, 3), keepdim=True) + eps)
    if labels is not None:
        if labels.shape != cam.shape[:2]:
            raise ValueError(f"argument 'labels' must have shape [B, K] = {list(cam.shape[:2])}, "
                             f"got {list(labels.shape)}")
        out = out * (labels.to(out.device) != 0).to(out.dtype)[:, :, None, None]
    return out


def aggregate_cams(cams: Sequence[ScaledCam], image_size: tuple[int, int], feature_stride: int, out_stride: int = 1,
                   *, labels: Tensor | None = None, eps: float = CAM_EPS) -> Tensor:
    """Sum raw CAMs of several scales / mirrors on the stride-``out_stride`` grid of the image and normalise.

    Args:
        cams: the raw maps (non-negative, e.g. ReLU'd class scores), each the stride-``feature_stride`` map of
            the image rescaled to its ``scaled_size``.
        image_size: ``(H, W)``.  feature_stride: the network's output stride.
        out_stride: the output grid (1: pixels, IRN's ``high_res``; 4: IRN's ``cam``).
        labels: ``[B, K]`` multi-hot image labels or None; absent classes are zeroed.  eps: added to the maximum.

    Returns:
        ``[B, K, ceil(H / out_stride), ceil(W / out_stride)]`` fp32 (fp64 for fp64 maps) in ``[0, 1)``.
    """
    if len(cams) == 0:
        raise ValueError("argument 'cams' must hold at least one map")
    first = cams[0].cam
    if first.dim() != 4:
        raise ValueError(f"argument 'cams' must hold [B, K, h, w] maps, got shape {list(first.shape)}")
    dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    total = None
    for i, item in enumerate(cams):
        if item.cam.dim() != 4 or item.cam.shape[:2] != first.shape[:2]:
            raise ValueError(f"cams[{i}] must have shape [B, K, h, w] = {list(first.shape[:2])} + [h, w], "
                             f"got {list(item.cam.shape)}")
        c = resample(item.cam.to(dtype), image_size, feature_stride, out_stride, item.scaled_size, item.mirrored)
        total = c if total is None else total + c
    return _normalise(total, labels, eps)


def raw_cam(feat: Tensor, weight: Tensor) -> Tensor:
    """IRN's per-scale CAM: ``relu(weight feat)`` ``[B, K, h, w]``, unnormalised, in fp32 (fp64 for fp64)."""
    dtype = torch.float64 if feat.dtype == torch.float64 else torch.float32
    return torch.relu(torch.einsum("kc,bchw->bkhw", weight.to(dtype), feat.to(dtype)))


@torch.no_grad()
def multiscale_cams(
    features: Callable[[Tensor], Tensor],
    image: Tensor,
    weight: Tensor,
    feature_stride: int,
    *,
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    flip: bool = True,
    labels: Tensor | None = None,
    out_strides: Sequence[int] = (1,),
) -> list[Tensor]:
    """Multi-scale (+ flip) CAMs of a classifier, as IRN's ``make_cam``.

    Args:
        features: maps an image batch ``[B, 3, H', W']`` to backbone features ``[B, C, ceil(H'/s), ceil(W'/s)]``.
        image: ``[B, 3, H, W]``.  weight: ``[K, C]`` classifier weights (1x1 conv / linear).
        feature_stride: ``s``, the output stride of ``features``.
        scales: image scales (IRN: 1.0, 0.5, 1.5, 2.0).  flip: also run the mirrored images.
        labels: ``[B, K]`` multi-hot or None (absent classes zeroed).
        out_strides: the grids wanted (IRN: ``(4, 1)`` for ``cam`` and ``high_res``).

    Returns:
        One ``[B, K, ceil(H / t), ceil(W / t)]`` fp32 map in ``[0, 1)`` per ``t`` of ``out_strides``.
    """
    if image.dim() != 4:
        raise ValueError(f"argument 'image' must have shape [B, 3, H, W], got {list(image.shape)}")
    if len(scales) == 0:
        raise ValueError("argument 'scales' must hold at least one scale")
    size = tuple(image.shape[-2:])
    n = image.shape[0]
    maps: list[ScaledCam] = []
    for s in scales:
        scaled = rescaled_size(size, s)
        img = image if scaled == size else F.interpolate(image, size=scaled, mode="bilinear", align_corners=False)
        batch = torch.cat([img, img.flip(-1)]) if flip else img
        cam = raw_cam(features(batch), weight)
        maps.append(ScaledCam(cam[:n], scaled))
        if flip:
            maps.append(ScaledCam(cam[n:], scaled, mirrored=True))
    return [aggregate_cams(maps, size, feature_stride, t, labels=labels) for t in out_strides]
