"""Triton kernels for the affinity ops: PSA's ``local_affinity`` and IRN's ``boundary_affinity``. Kernels only:
the launch policy lives in ``grmseg.ops.impl.triton_wsss``.

Both take the offsets of ``grmseg.reference.affinity_offsets(radius)`` as a small int32 tensor, so one compiled
kernel serves every radius. Program ``(b, pixel block, offset block)`` owns an ``[BLOCK_D, BLOCK_P]`` tile of the
``[B, D, h, w]`` output (contiguous); a pair whose far end ``p + o_d`` leaves the map gets 0.

* local: ``aff[d, p] = exp(-mean_c |f(p) - f(p + o_d)|)``; the channel loop gathers the shifted pixels.
* boundary: ``aff[d, p] = 1 - max`` of the boundary map over the path pixels of ``grmseg.reference.path_offsets``
  (IRN's: every pixel of the offset's box within distance 1 of the segment), passed as ``[D, L, 2]`` int32 points,
  ``L`` the longest path, the shorter ones padded by repeating a point (harmless for a max).
"""

from __future__ import annotations

import triton
import triton.language as tl

from grmseg.triton.common import grid_3d, nan_max, offsets, shifted_pixels


@triton.jit
def local_affinity_kernel(
    f_ptr, off_ptr, out_ptr,
    C, H, W, D, NPB, NDB,
    sfb, sfc, sfh, sfw,
    BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr, INT64: tl.constexpr,
):
    """``out [B, D, H, W]`` (contiguous, output dtype) of ``f [B, C, H, W]`` (any strides), offsets ``[D, 2]``."""
    db, pb, bi = grid_3d(NDB, NPB)
    P = H * W

    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < P
    py = offs_p // W
    px = offs_p % W
    offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    _, _, qy, qx, valid = shifted_pixels(off_ptr, offs_d, d_mask, py, px, p_mask, H, W)

    c_off = offsets(py, INT64) * sfh + offsets(px, INT64) * sfw
    q_off = offsets(qy, INT64) * sfh + offsets(qx, INT64) * sfw
    base = f_ptr + bi * sfb
    acc = tl.zeros((BLOCK_D, BLOCK_P), dtype=tl.float32)
    for _ in range(C):
        fc = tl.load(base + c_off, mask=p_mask, other=0.0).to(tl.float32)
        fq = tl.load(base + q_off, mask=valid, other=0.0).to(tl.float32)
        acc += tl.abs(fc[None, :] - fq)
        base += sfc
    aff = tl.exp(-(acc / C))
    aff = tl.where(valid, aff, 0.0)
    out = out_ptr + (bi * D + offsets(offs_d, INT64)[:, None]) * P + offs_p[None, :]
    tl.store(out, aff.to(out_ptr.dtype.element_ty), mask=d_mask[:, None] & p_mask[None, :])


@triton.jit
def boundary_affinity_kernel(
    bd_ptr, off_ptr, path_ptr, out_ptr,
    H, W, D, L, NPB, NDB,
    sbb, sbh, sbw,
    BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr, INT64: tl.constexpr,
):
    """``out [B, D, H, W]`` (contiguous, output dtype) of ``bd [B, 1, H, W]`` (any strides), the offsets
    ``[D, 2]`` and the padded paths ``[D, L, 2]``."""
    db, pb, bi = grid_3d(NDB, NPB)
    P = H * W

    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < P
    py = offs_p // W
    px = offs_p % W
    offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    # Every point of the path lies in the box spanned by p and p + o_d, so all are inside when the end is.
    _, _, _, _, valid = shifted_pixels(off_ptr, offs_d, d_mask, py, px, p_mask, H, W)

    base = bd_ptr + bi * sbb
    py = offsets(py, INT64)
    px = offsets(px, INT64)
    mx = tl.zeros((BLOCK_D, BLOCK_P), dtype=tl.float32) - float("inf")
    pt = path_ptr + offs_d * (2 * L)
    for _ in range(L):
        sy = tl.load(pt, mask=d_mask, other=0)
        sx = tl.load(pt + 1, mask=d_mask, other=0)
        v = tl.load(base + (py[None, :] + sy[:, None]) * sbh + (px[None, :] + sx[:, None]) * sbw,
                    mask=valid, other=0.0).to(tl.float32)
        mx = nan_max(mx, v)
        pt += 2
    aff = tl.where(valid, 1.0 - mx, 0.0)
    out = out_ptr + (bi * D + offsets(offs_d, INT64)[:, None]) * P + offs_p[None, :]
    tl.store(out, aff.to(out_ptr.dtype.element_ty), mask=d_mask[:, None] & p_mask[None, :])
