"""Triton kernels for the ``cam`` op (class activation maps). Kernels only: the launch policy lives in
``grmseg.ops.impl.triton_wsss``.

Math (``DESIGN.md``): ``cam[b, k] = relu(w feat[b])[k] / (max_p relu(w feat[b])[k, p] + 1e-5)``, zero for the
classes absent from ``labels``. The spatial max needs every pixel, so the op is two kernels:

1. ``cam_project_kernel``: program ``(b, pixel block, class block)`` computes ``relu(w x)`` for its tile with
   ``tl.dot`` over channel chunks, stores it (fp32) and the tile's per-class max to its own slot of a
   ``[B, NPB, K]`` buffer (no atomics).
2. ``cam_normalise_kernel``: program ``(b, pixel block, class block)`` reduces the ``NPB`` partial maxima of its
   classes in a fixed order, divides its tile by ``max + 1e-5``, applies the label mask and stores in the output
   dtype (in place when the output is the fp32 buffer itself).
"""

from __future__ import annotations

import triton
import triton.language as tl

from grmseg.triton.common import grid_3d, nan_max, offsets, operand


@triton.jit
def cam_project_kernel(
    x_ptr, w_ptr, raw_ptr, pmax_ptr,
    C, W, P, K, NPB, NKB,
    sxb, sxc, sxh, sxw, swk, swc,
    BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, INT64: tl.constexpr,
):
    """``raw [B, K, P] = relu(w x)`` (fp32, contiguous) and per-tile maxima ``pmax [B, NPB, K]`` (fp32) of
    ``x [B, C, h, w]`` (any strides; ``W`` its width, ``P = h w``) and ``w [K, C]``."""
    kb, pb, bi = grid_3d(NKB, NPB)

    offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < P
    p_off = offsets(offs_p // W, INT64) * sxh + offsets(offs_p % W, INT64) * sxw
    x_base = x_ptr + bi * sxb

    offs_c = tl.arange(0, BLOCK_C)
    x_ptrs = x_base + offsets(offs_c, INT64)[:, None] * sxc + p_off[None, :]
    w_ptrs = w_ptr + offs_k[:, None] * swk + offs_c[None, :] * swc
    s = tl.zeros((BLOCK_K, BLOCK_P), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c_mask = offs_c < C - c0
        xt = tl.load(x_ptrs, mask=c_mask[:, None] & p_mask[None, :], other=0.0)
        wt = tl.load(w_ptrs, mask=k_mask[:, None] & c_mask[None, :], other=0.0)
        s = tl.dot(operand(wt, x_ptr, UPCAST), operand(xt, x_ptr, UPCAST), s, input_precision=PRECISION)
        x_ptrs += BLOCK_C * sxc
        w_ptrs += BLOCK_C * swc
    s = nan_max(s, 0.0)  # relu; NaN stays NaN
    s = tl.where(p_mask[None, :], s, 0.0)  # relu >= 0, so 0 is neutral for the max

    out = raw_ptr + bi * K * P + offsets(offs_k, INT64)[:, None] * P + offs_p[None, :]
    tl.store(out, s, mask=k_mask[:, None] & p_mask[None, :])
    tl.store(pmax_ptr + (bi * NPB + pb) * K + offs_k, tl.reduce(s, 1, nan_max), mask=k_mask)


@triton.jit
def cam_normalise_kernel(
    raw_ptr, pmax_ptr, label_ptr, out_ptr,
    P, K, NPB, NKB, eps,
    HAS_LABELS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    INT64: tl.constexpr,
):
    """``out [B, K, P] = raw / (max over the NPB tiles + eps)``, times ``label [B, K]`` (0/1 fp32) when
    HAS_LABELS; ``raw`` and ``out`` contiguous (they may be the same fp32 buffer)."""
    kb, pb, bi = grid_3d(NKB, NPB)

    offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    mx = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for n0 in range(0, NPB, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        pm = tl.load(pmax_ptr + (bi * NPB + offs_n[:, None]) * K + offs_k[None, :],
                     mask=(offs_n[:, None] < NPB) & k_mask[None, :], other=0.0)
        mx = nan_max(mx, tl.reduce(pm, 0, nan_max))
    if HAS_LABELS:
        keep = tl.load(label_ptr + bi * K + offs_k, mask=k_mask, other=0.0)
    else:
        keep = tl.full((BLOCK_K,), 1.0, dtype=tl.float32)
    denom = mx + eps

    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    mask = k_mask[:, None] & (offs_p < P)[None, :]
    off = bi * K * P + offsets(offs_k, INT64)[:, None] * P + offs_p[None, :]
    v = tl.load(raw_ptr + off, mask=mask, other=0.0)
    v = tl.where(keep[:, None] != 0, v / denom[:, None], 0.0)  # absent classes are 0, even beside a NaN
    tl.store(out_ptr + off, v.to(out_ptr.dtype.element_ty), mask=mask)
