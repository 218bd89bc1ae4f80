"""Where a strided map lies on its image: the one geometry rule every stage and model follows (DESIGN.md, IRN).

A map at stride ``s`` of an ``H x W`` image has ``ceil(H / s) x ceil(W / s)`` cells, and cell ``i`` covers pixels
``[s * i, s * i + s)``: its centre is at pixel coordinate ``s * (i + 0.5)`` (pixel ``j`` spans ``[j, j + 1)``).
Every backbone here produces exactly that size (3x3/7x7 convolutions of stride 2 with "same" padding round up).
Going back to pixels is an upsampling by exactly ``s`` followed by a crop to ``[:H, :W]`` (IRN's
``strided_up_size``); a resize that stretches the map onto ``(H, W)`` would misplace labels by up to a stride.

A map computed on the image rescaled by a factor (multi-scale CAMs) is brought onto a grid of the original image
by :func:`resample`, which places every output cell centre at its true position in the rescaled image's map. At
scale 1 it equals the exact upsampling (bilinear, ``align_corners=False``) and crop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cell_centres", "resample", "rescaled_size", "strided_size", "strided_up_size", "upsample_to_image"]


def strided_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """``(ceil(H / s), ceil(W / s))``: the cells of a stride-``s`` map of an ``H x W`` image."""
    if stride < 1:
        raise ValueError(f"argument 'stride' must be >= 1, got {stride}")
    return (-(-int(size[0]) // stride), -(-int(size[1]) // stride))


def strided_up_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """``(ceil(H / s) * s, ceil(W / s) * s)``: the pixels a stride-``s`` map covers (at least ``H x W``)."""
    h, w = strided_size(size, stride)
    return (h * stride, w * stride)


def rescaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """The size of an ``H x W`` image rescaled by ``scale``: ``(round(H * scale), round(W * scale))``, at least 1."""
    return (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))


def _check_map(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"argument '{name}' must be a tensor of shape [B, K, h, w], got {shape}")


def upsample_to_image(x: Tensor, stride: int, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """A stride-``s`` map on the pixels of its ``H x W`` image: upsample by exactly ``s``, then crop.

    Args:
        x: ``[B, K, ceil(H / s), ceil(W / s)]``.  stride: ``s``.  size: ``(H, W)``.
        mode: ``"bilinear"`` (``align_corners=False``, as IRN) or ``"nearest"``.

    Returns:
        ``[B, K, H, W]`` in the dtype of ``x``.
    """
    _check_map(x, "x")
    expected = strided_size(size, stride)
    if tuple(x.shape[-2:]) != expected:
        raise ValueError(f"argument 'x' must be the stride-{stride} map of a {tuple(size)} image, i.e. "
                         f"[..., {expected[0]}, {expected[1]}], got {list(x.shape)}")
    if stride == 1:
        return x
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    up = F.interpolate(x, scale_factor=stride, mode=mode, **kwargs)
    return up[..., : size[0], : size[1]]


def _axis_coords(n_out: int, out_stride: int, factor: float, src_stride: int, n_src: int, mirrored_extent: float | None,
                 device: torch.device, dtype: torch.dtype) -> Tensor:
    """Normalised ``grid_sample`` coordinates (``align_corners=False``) of the output cell centres along one axis.

    ``mirrored_extent``: the source map was computed on the image mirrored along this axis, whose (rescaled)
    extent in pixels this is; a point at ``c`` then lies at ``extent - c`` in the mirrored image.
    """
    centre = (torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * out_stride * factor  # scaled px
    if mirrored_extent is not None:
        centre = mirrored_extent - centre
    u = centre / src_stride - 0.5  # source cell index (fractional)
    return ((2 * u + 1) / n_src - 1).to(dtype)


def resample(x: Tensor, image_size: tuple[int, int], src_stride: int, out_stride: int,
             scaled_size: tuple[int, int] | None = None, mirrored: bool = False) -> Tensor:
    """Bring a strided map of a (possibly rescaled, possibly mirrored) image onto the stride-``out_stride`` grid
    of the image.

    Args:
        x: ``[B, K, h, w]``, the stride-``src_stride`` map of the image rescaled to ``scaled_size``
            (``h, w = strided_size(scaled_size, src_stride)``).
        image_size: ``(H, W)`` of the original image.
        src_stride: stride of ``x`` in the rescaled image.  out_stride: stride of the output grid (1: pixels).
        scaled_size: the rescaled image size; default ``image_size`` (no rescaling).
        mirrored: ``x`` was computed on the horizontally mirrored image; it is mirrored back exactly (in pixel
            coordinates: flipping the cells of ``x`` is exact only when the width is a multiple of the stride).

    Returns:
        ``[B, K, ceil(H / out_stride), ceil(W / out_stride)]``: bilinear samples at the output cell centres
        (edges clamped), in the dtype of ``x``. With ``scaled_size == image_size``, no mirroring and
        ``src_stride`` a multiple of ``out_stride`` this is the exact upsampling of :func:`upsample_to_image`,
        computed by ``F.interpolate``.
    """
    _check_map(x, "x")
    scaled = tuple(image_size) if scaled_size is None else tuple(scaled_size)
    expected = strided_size(scaled, src_stride)
    if tuple(x.shape[-2:]) != expected:
        raise ValueError(f"argument 'x' must be the stride-{src_stride} map of a {scaled} image, i.e. "
                         f"[..., {expected[0]}, {expected[1]}], got {list(x.shape)}")
    out_h, out_w = strided_size(image_size, out_stride)
    if scaled == tuple(image_size) and src_stride % out_stride == 0 and not mirrored:
        factor = src_stride // out_stride
        if factor == 1:
            return x
        up = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        return up[..., :out_h, :out_w]
    dtype = x.dtype if x.is_floating_point() else torch.float32
    gy = _axis_coords(out_h, out_stride, scaled[0] / image_size[0], src_stride, x.shape[-2], None, x.device, dtype)
    gx = _axis_coords(out_w, out_stride, scaled[1] / image_size[1], src_stride, x.shape[-1],
                      float(scaled[1]) if mirrored else None, x.device, dtype)
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)  # [h, w, (x, y)]
    grid = grid[None].expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x.to(dtype), grid, mode="bilinear", padding_mode="border", align_corners=False)


def cell_centres(mask: Tensor, stride: int) -> Tensor:
    """A label map ``[..., H, W]`` read at the centre pixel of every stride-``s`` cell (nearest, as IRN's 1/4
    label rescale): ``[..., ceil(H / s), ceil(W / s)]``. The last cell of a side is clamped to the image."""
    if stride == 1:
        return mask
    h, w = mask.shape[-2:]
    ch, cw = strided_size((h, w), stride)
    ys = (torch.arange(ch, device=mask.device) * stride + stride // 2).clamp_max(h - 1)
    xs = (torch.arange(cw, device=mask.device) * stride + stride // 2).clamp_max(w - 1)
    return mask[..., ys[:, None], xs[None, :]]
