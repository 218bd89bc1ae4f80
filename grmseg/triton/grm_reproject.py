"""Triton kernels for ``grm_reproject`` (node -> pixel mapping with the residual), forward and backward.
Kernels only: the launch policy lives in ``grmseg.ops.impl.triton``.

Math (``DESIGN.md``), per batch: ``e = q x``, ``a = softmax_K(e)``, ``y = x + v^T a``; backward ``ga = v gy``,
``ge = a (ga - sum_k a ga)``, ``gx = gy + q^T ge``, ``gq = sum_p ge x^T``, ``gv = sum_p a gy^T``.

Forward: one program per (pixel tile, batch); a first loop over channel chunks builds the logits, the softmax
over K (padded to BLOCK_K >= 16, masked) stays in registers, a second loop writes ``y`` chunk by chunk (the
re-read ``x`` chunk comes from cache; with ``FUSED``, BLOCK_C covers all of C and the tile is loaded once).
Backward: the split layout of ``grm_project``'s backward (channel block fastest, pixel split, batch): logits
and ``ga`` in one loop over channel chunks of ``x`` and ``gy``, then on the program's own BLOCK_CO channels
``gx`` is written and ``gq``, ``gv`` accumulate in registers into fp32 partial slots ``[S, B, K, C]`` that the
adapter sums in a fixed order (``FUSED``: one channel block, ``x`` and ``gy`` loaded once per tile).
"""

from __future__ import annotations

import triton
import triton.language as tl

from grmseg.triton.common import grid_2d, grid_3d, offsets, operand, softmax_k


@triton.jit
def grm_reproject_fwd_kernel(
    x_ptr, q_ptr, v_ptr, y_ptr,
    C, P, K,
    sxb, sxc, sxp, sqb, sqk, sqc, svb, svk, svc,
    BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    FUSED: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, INT64: tl.constexpr,
):
    """``y [B, C, P]`` (contiguous, dtype of x) from ``x [B, C, P]``, ``q [B, K, C]``, ``v [B, K, C]``."""
    tile, bi = grid_2d(tl.cdiv(P, BLOCK_P))

    offs_k = tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < P
    p_off = offsets(offs_p, INT64)[None, :] * sxp
    x_base = x_ptr + bi * sxb
    q_base = q_ptr + bi * sqb
    v_base = v_ptr + bi * svb
    y_base = y_ptr + bi * C * P

    if FUSED:  # BLOCK_C covers every channel: one load of the x tile serves the logits and the residual
        offs_c = tl.arange(0, BLOCK_C)
        c_mask = offs_c < C
        cp_mask = c_mask[:, None] & p_mask[None, :]
        offs_c_w = offsets(offs_c, INT64)
        xt = tl.load(x_base + offs_c_w[:, None] * sxc + p_off, mask=cp_mask, other=0.0)
        qt = tl.load(q_base + offs_k[:, None] * sqk + offs_c[None, :] * sqc,
                     mask=k_mask[:, None] & c_mask[None, :], other=0.0)
        e = tl.dot(operand(qt, x_ptr, UPCAST), operand(xt, x_ptr, UPCAST), input_precision=PRECISION)
        a_op = operand(softmax_k(e, k_mask), x_ptr, UPCAST)
        vt = tl.load(v_base + offs_c[:, None] * svc + offs_k[None, :] * svk,
                     mask=c_mask[:, None] & k_mask[None, :], other=0.0)
        y = tl.dot(operand(vt, x_ptr, UPCAST), a_op, input_precision=PRECISION) + xt.to(tl.float32)
        tl.store(y_base + offs_c_w[:, None] * P + offs_p[None, :], y.to(y_ptr.dtype.element_ty), mask=cp_mask)
    else:
        e = tl.zeros((BLOCK_K, BLOCK_P), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            c_mask = offs_c < C
            xt = tl.load(x_base + offsets(offs_c, INT64)[:, None] * sxc + p_off,
                         mask=c_mask[:, None] & p_mask[None, :], other=0.0)
            qt = tl.load(q_base + offs_k[:, None] * sqk + offs_c[None, :] * sqc,
                         mask=k_mask[:, None] & c_mask[None, :], other=0.0)
            e = tl.dot(operand(qt, x_ptr, UPCAST), operand(xt, x_ptr, UPCAST), e, input_precision=PRECISION)
        a_op = operand(softmax_k(e, k_mask), x_ptr, UPCAST)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            c_mask = offs_c < C
            cp_mask = c_mask[:, None] & p_mask[None, :]
            offs_c_w = offsets(offs_c, INT64)
            xt = tl.load(x_base + offs_c_w[:, None] * sxc + p_off, mask=cp_mask, other=0.0)
            vt = tl.load(v_base + offs_c[:, None] * svc + offs_k[None, :] * svk,
                         mask=c_mask[:, None] & k_mask[None, :], other=0.0)
            y = tl.dot(operand(vt, x_ptr, UPCAST), a_op, input_precision=PRECISION) + xt.to(tl.float32)
            tl.store(y_base + offs_c_w[:, None] * P + offs_p[None, :], y.to(y_ptr.dtype.element_ty), mask=cp_mask)


@triton.jit
def grm_reproject_bwd_kernel(
    gy_ptr, x_ptr, q_ptr, v_ptr, gx_ptr, gq_ptr, gv_ptr,
    B, C, P, K, P_PER_SPLIT, NUM_SPLITS,
    sgyb, sgyc, sgyp, sxb, sxc, sxp, sqb, sqk, sqc, svb, svk, svc,
    BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_P: tl.constexpr,
    FUSED: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, INT64: tl.constexpr,
):
    """``gx [B, C, P]`` (contiguous, dtype of x) and partial ``gq``, ``gv [S, B, K, C]`` (fp32).

    Inputs: ``gy [B, C, P]``, ``x [B, C, P]``, ``q [B, K, C]``, ``v [B, K, C]``.
    """
    cb, sp, bi = grid_3d(tl.cdiv(C, BLOCK_CO), NUM_SPLITS)

    offs_k = tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    offs_co = cb * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_mask = offs_co < C
    x_base = x_ptr + bi * sxb
    gy_base = gy_ptr + bi * sgyb
    q_base = q_ptr + bi * sqb
    v_base = v_ptr + bi * svb
    gx_base = gx_ptr + bi * C * P
    p_start = sp * P_PER_SPLIT
    p_end = tl.minimum(P, p_start + P_PER_SPLIT)
    offs_co_w = offsets(offs_co, INT64)
    # the program's channel block of q, transposed: [BLOCK_CO, BLOCK_K] (loop invariant)
    q_t = tl.load(q_base + offs_co[:, None] * sqc + offs_k[None, :] * sqk,
                  mask=co_mask[:, None] & k_mask[None, :], other=0.0)
    q_t = operand(q_t, x_ptr, UPCAST)
    if FUSED:
        v_all = tl.load(v_base + offs_k[:, None] * svk + offs_co[None, :] * svc,
                        mask=k_mask[:, None] & co_mask[None, :], other=0.0)
        v_all = operand(v_all, x_ptr, UPCAST)

    acc_gq = tl.zeros((BLOCK_K, BLOCK_CO), dtype=tl.float32)
    acc_gv = tl.zeros((BLOCK_K, BLOCK_CO), dtype=tl.float32)
    for p0 in range(p_start, p_end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        p_mask = offs_p < p_end
        offs_p_w = offsets(offs_p, INT64)[None, :]
        cp_mask = co_mask[:, None] & p_mask[None, :]
        if FUSED:  # BLOCK_CO covers every channel: x and gy are loaded once per tile
            xo = operand(tl.load(x_base + offs_co_w[:, None] * sxc + offs_p_w * sxp, mask=cp_mask, other=0.0),
                         x_ptr, UPCAST)
            gyo = tl.load(gy_base + offs_co_w[:, None] * sgyc + offs_p_w * sgyp, mask=cp_mask, other=0.0)
            e = tl.dot(tl.trans(q_t), xo, input_precision=PRECISION)
            ga = tl.dot(v_all, operand(gyo, x_ptr, UPCAST), input_precision=PRECISION)
        else:
            e = tl.zeros((BLOCK_K, BLOCK_P), dtype=tl.float32)
            ga = tl.zeros((BLOCK_K, BLOCK_P), dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                offs_c = c0 + tl.arange(0, BLOCK_C)
                c_mask = offs_c < C
                kc = k_mask[:, None] & c_mask[None, :]
                cp = c_mask[:, None] & p_mask[None, :]
                offs_c_w = offsets(offs_c, INT64)[:, None]
                xt = tl.load(x_base + offs_c_w * sxc + offs_p_w * sxp, mask=cp, other=0.0)
                gyt = tl.load(gy_base + offs_c_w * sgyc + offs_p_w * sgyp, mask=cp, other=0.0)
                qt = tl.load(q_base + offs_k[:, None] * sqk + offs_c[None, :] * sqc, mask=kc, other=0.0)
                vt = tl.load(v_base + offs_k[:, None] * svk + offs_c[None, :] * svc, mask=kc, other=0.0)
                e = tl.dot(operand(qt, x_ptr, UPCAST), operand(xt, x_ptr, UPCAST), e, input_precision=PRECISION)
                ga = tl.dot(operand(vt, x_ptr, UPCAST), operand(gyt, x_ptr, UPCAST), ga, input_precision=PRECISION)
            xo = operand(tl.load(x_base + offs_co_w[:, None] * sxc + offs_p_w * sxp, mask=cp_mask, other=0.0),
                         x_ptr, UPCAST)
            gyo = tl.load(gy_base + offs_co_w[:, None] * sgyc + offs_p_w * sgyp, mask=cp_mask, other=0.0)
        a = softmax_k(e, k_mask)
        a = tl.where(p_mask[None, :], a, 0.0)
        ge = a * (ga - tl.sum(a * ga, axis=0)[None, :])
        ge_op = operand(ge, x_ptr, UPCAST)
        acc_gq = tl.dot(ge_op, tl.trans(xo), acc_gq, input_precision=PRECISION)
        acc_gv = tl.dot(operand(a, x_ptr, UPCAST), tl.trans(operand(gyo, x_ptr, UPCAST)), acc_gv,
                        input_precision=PRECISION)
        gx = tl.dot(q_t, ge_op, input_precision=PRECISION) + gyo.to(tl.float32)
        tl.store(gx_base + offs_co_w[:, None] * P + offs_p[None, :], gx.to(gx_ptr.dtype.element_ty), mask=cp_mask)

    slot = (sp.to(tl.int64) * B + bi) * K * C
    out_off = offs_k[:, None] * C + offs_co[None, :]
    kco = k_mask[:, None] & co_mask[None, :]
    tl.store(gq_ptr + slot + out_off, acc_gq, mask=kco)
    tl.store(gv_ptr + slot + out_off, acc_gv, mask=kco)
