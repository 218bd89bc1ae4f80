"""Triton kernels for ``grm_project`` (pixel -> node voting), forward and backward. Kernels only: the launch
policy (grids, block sizes, splits, the final reductions) lives in ``grmseg.ops.impl.triton``.

Math (``DESIGN.md``), per batch: ``s = w x + b``, ``a = softmax_K(s)``, ``h = a x^T``, ``m = sum_p a``; backward
``ga = gh x + gm``, ``gs = a (ga - sum_k a ga)``, ``gx = gh^T a + w^T gs``, ``gw = sum gs x^T``, ``gb = sum gs``.

Work split (both kernels): program ``pid`` covers channel block ``cb`` (fastest, so the programs that share
pixels run together and re-read ``x`` from L2), pixel split ``sp`` and batch ``b``. It walks the pixel tiles of
its split; per tile a first loop over all channels in chunks of BLOCK_C builds the logits (and ``ga``), the
softmax over K (padded to BLOCK_K >= 16, masked) stays in registers, and a second step on the program's own
BLOCK_CO channels accumulates ``h`` (``gw``) in registers and, in backward, writes ``gx``. With ``FUSED``
(BLOCK_CO covers all of C: one channel block) the tile of ``x`` is loaded once and serves both steps.
Nothing of size ``[B, K, P]`` touches memory. Each program writes its fp32 partial sums to its own slot ``[sp, b]`` of a
``[S, B, K, C]`` buffer, which the adapter sums in a fixed order (deterministic, no atomics).
"""

from __future__ import annotations

import triton
import triton.language as tl

from grmseg.triton.common import grid_3d, offsets, operand, softmax_k


@triton.jit
def grm_project_fwd_kernel(
    x_ptr, w_ptr, b_ptr, h_ptr, m_ptr,
    B, C, P, K, P_PER_SPLIT, NUM_SPLITS,
    sxb, sxc, sxp, swk, swc, sbk,
    BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_P: tl.constexpr,
    FUSED: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, INT64: tl.constexpr,
):
    """Partial ``h [S, B, K, C]`` and ``m [S, B, K]`` (fp32, contiguous) of ``x [B, C, P]``, ``w [K, C]``, ``b [K]``."""
    cb, sp, bi = grid_3d(tl.cdiv(C, BLOCK_CO), NUM_SPLITS)

    offs_k = tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    offs_co = cb * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_mask = offs_co < C
    bias = tl.load(b_ptr + offs_k * sbk, mask=k_mask, other=0.0).to(tl.float32)
    x_base = x_ptr + bi * sxb
    p_start = sp * P_PER_SPLIT
    p_end = tl.minimum(P, p_start + P_PER_SPLIT)
    # the program's own channels, as [BLOCK_CO, 1] offsets (loop invariant)
    co_off = offsets(offs_co, INT64)[:, None] * sxc

    if FUSED:  # BLOCK_CO covers every channel: w stays in registers, x is loaded once per tile
        w_all = tl.load(w_ptr + offs_k[:, None] * swk + offs_co[None, :] * swc,
                        mask=k_mask[:, None] & co_mask[None, :], other=0.0)
        w_all = operand(w_all, x_ptr, UPCAST)

    acc_h = tl.zeros((BLOCK_K, BLOCK_CO), dtype=tl.float32)
    acc_m = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for p0 in range(p_start, p_end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        p_mask = offs_p < p_end
        p_off = offsets(offs_p, INT64)[None, :] * sxp
        if FUSED:
            xo = tl.load(x_base + co_off + p_off, mask=co_mask[:, None] & p_mask[None, :], other=0.0)
            xo = operand(xo, x_ptr, UPCAST)
            s = tl.dot(w_all, xo, input_precision=PRECISION)
        else:
            s = tl.zeros((BLOCK_K, BLOCK_P), dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                offs_c = c0 + tl.arange(0, BLOCK_C)
                c_mask = offs_c < C
                xt = tl.load(x_base + offsets(offs_c, INT64)[:, None] * sxc + p_off,
                             mask=c_mask[:, None] & p_mask[None, :], other=0.0)
                wt = tl.load(w_ptr + offs_k[:, None] * swk + offs_c[None, :] * swc,
                             mask=k_mask[:, None] & c_mask[None, :], other=0.0)
                s = tl.dot(operand(wt, x_ptr, UPCAST), operand(xt, x_ptr, UPCAST), s, input_precision=PRECISION)
            xo = tl.load(x_base + co_off + p_off, mask=co_mask[:, None] & p_mask[None, :], other=0.0)
            xo = operand(xo, x_ptr, UPCAST)
        a = softmax_k(s + bias[:, None], k_mask)
        a = tl.where(p_mask[None, :], a, 0.0)
        acc_m += tl.sum(a, axis=1)
        acc_h = tl.dot(operand(a, x_ptr, UPCAST), tl.trans(xo), acc_h, input_precision=PRECISION)

    slot = sp.to(tl.int64) * B + bi
    h_out = h_ptr + slot * K * C + offs_k[:, None] * C + offs_co[None, :]
    tl.store(h_out, acc_h, mask=k_mask[:, None] & co_mask[None, :])
    tl.store(m_ptr + slot * K + offs_k, acc_m, mask=k_mask & (cb == 0))


@triton.jit
def grm_project_bwd_kernel(
    gh_ptr, gm_ptr, x_ptr, w_ptr, b_ptr, gx_ptr, gw_ptr, gb_ptr,
    B, C, P, K, P_PER_SPLIT, NUM_SPLITS,
    sghb, sghk, sghc, sgmb, sgmk, sxb, sxc, sxp, swk, swc, sbk,
    BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_P: tl.constexpr,
    FUSED: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, INT64: tl.constexpr,
):
    """``gx [B, C, P]`` (contiguous, dtype of x) and partial ``gw [S, B, K, C]``, ``gb [S, B, K]`` (fp32).

    Inputs: ``gh [B, K, C]``, ``gm [B, K]``, ``x [B, C, P]``, ``w [K, C]``, ``b [K]``. The assignment is
    recomputed from ``x``; one read of ``x`` per tile for the logits and ``ga``, the program's channel block
    read again (from cache) for ``gw`` and written once as ``gx``.
    """
    cb, sp, bi = grid_3d(tl.cdiv(C, BLOCK_CO), NUM_SPLITS)

    offs_k = tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    offs_co = cb * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_mask = offs_co < C
    bias = tl.load(b_ptr + offs_k * sbk, mask=k_mask, other=0.0).to(tl.float32)
    gm = tl.load(gm_ptr + bi * sgmb + offs_k * sgmk, mask=k_mask, other=0.0).to(tl.float32)
    x_base = x_ptr + bi * sxb
    gh_base = gh_ptr + bi * sghb
    gx_base = gx_ptr + bi * C * P
    p_start = sp * P_PER_SPLIT
    p_end = tl.minimum(P, p_start + P_PER_SPLIT)
    co_off = offsets(offs_co, INT64)[:, None] * sxc
    gx_co_off = offsets(offs_co, INT64)[:, None] * P
    kc_mask = co_mask[:, None] & k_mask[None, :]
    # the program's channel block of gh and w, transposed: [BLOCK_CO, BLOCK_K] (loop invariant)
    gh_t = tl.load(gh_base + offs_co[:, None] * sghc + offs_k[None, :] * sghk, mask=kc_mask, other=0.0)
    w_t = tl.load(w_ptr + offs_co[:, None] * swc + offs_k[None, :] * swk, mask=kc_mask, other=0.0)
    gh_t = operand(gh_t, x_ptr, UPCAST)
    w_t = operand(w_t, x_ptr, UPCAST)

    acc_gw = tl.zeros((BLOCK_K, BLOCK_CO), dtype=tl.float32)
    acc_gb = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for p0 in range(p_start, p_end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        p_mask = offs_p < p_end
        p_off = offsets(offs_p, INT64)[None, :] * sxp
        cp_mask = co_mask[:, None] & p_mask[None, :]
        if FUSED:  # BLOCK_CO covers every channel: x is loaded once per tile
            xo = operand(tl.load(x_base + co_off + p_off, mask=cp_mask, other=0.0), x_ptr, UPCAST)
            s = tl.dot(tl.trans(w_t), xo, input_precision=PRECISION)
            ga = tl.dot(tl.trans(gh_t), xo, input_precision=PRECISION)
        else:
            s = tl.zeros((BLOCK_K, BLOCK_P), dtype=tl.float32)
            ga = tl.zeros((BLOCK_K, BLOCK_P), dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                offs_c = c0 + tl.arange(0, BLOCK_C)
                c_mask = offs_c < C
                kc = k_mask[:, None] & c_mask[None, :]
                xt = tl.load(x_base + offsets(offs_c, INT64)[:, None] * sxc + p_off,
                             mask=c_mask[:, None] & p_mask[None, :], other=0.0)
                xt = operand(xt, x_ptr, UPCAST)
                wt = tl.load(w_ptr + offs_k[:, None] * swk + offs_c[None, :] * swc, mask=kc, other=0.0)
                ght = tl.load(gh_base + offs_k[:, None] * sghk + offs_c[None, :] * sghc, mask=kc, other=0.0)
                s = tl.dot(operand(wt, x_ptr, UPCAST), xt, s, input_precision=PRECISION)
                ga = tl.dot(operand(ght, x_ptr, UPCAST), xt, ga, input_precision=PRECISION)
            xo = operand(tl.load(x_base + co_off + p_off, mask=cp_mask, other=0.0), x_ptr, UPCAST)
        a = softmax_k(s + bias[:, None], k_mask)
        a = tl.where(p_mask[None, :], a, 0.0)
        ga = ga + gm[:, None]
        gs = a * (ga - tl.sum(a * ga, axis=0)[None, :])
        acc_gb += tl.sum(gs, axis=1)
        a_op = operand(a, x_ptr, UPCAST)
        gs_op = operand(gs, x_ptr, UPCAST)
        acc_gw = tl.dot(gs_op, tl.trans(xo), acc_gw, input_precision=PRECISION)
        gx = tl.dot(gh_t, a_op, input_precision=PRECISION)
        gx = tl.dot(w_t, gs_op, gx, input_precision=PRECISION)
        tl.store(gx_base + gx_co_off + offs_p[None, :], gx.to(gx_ptr.dtype.element_ty), mask=cp_mask)

    slot = sp.to(tl.int64) * B + bi
    tl.store(gw_ptr + slot * K * C + offs_k[:, None] * C + offs_co[None, :], acc_gw,
             mask=k_mask[:, None] & co_mask[None, :])
    tl.store(gb_ptr + slot * K + offs_k, acc_gb, mask=k_mask & (cb == 0))
