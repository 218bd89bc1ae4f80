"""Triton kernels for ``graph_conv`` (one GCN layer over the K nodes), forward and backward. Kernels only:
the launch policy lives in ``grmseg.ops.impl.triton``.

Math: ``zw = z weight``, ``pre = adj zw + bias``, ``out = act(pre)``; backward ``gpre = gout act'(out)``,
``gzw = adj^T gpre``, ``gz = gzw weight^T``, ``gweight = sum_b z^T gzw``, ``gadj = sum_b gpre zw^T``,
``gbias = sum_{b,k} gpre``. ``ACTIVATION``: 0 none, 1 relu, 2 leaky_relu (slope 0.2).

Forward: one kernel, a program per (block of D, batch): ``z weight`` over F chunks, then ``adj`` (all K <= 128
rows, in fp32), bias and activation in registers. Backward: three kernels, (1) per (block of D, batch):
``gpre``, ``gzw`` (kept in an fp32 scratch ``[B, K, D]``), the bias partial ``[B, D]`` and, recomputing ``zw``,
the adjacency partial ``[B, nD, K, K]``; (2) ``gz`` per (block of F, batch); (3) ``gweight`` per
(block of F, block of D), summing over the batch in order. Partials are summed by the adapter in a fixed order.
"""

from __future__ import annotations

import triton
import triton.language as tl

from grmseg.triton.common import operand


@triton.jit
def _zw_block(z_base, w_ptr, offs_k, k_mask, offs_d, d_mask, F, szk, szf, swf, swd,
              BLOCK_K: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
              UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """``(z weight)[:, d block]`` for one batch: fp32 ``[BLOCK_K, BLOCK_D]``."""
    acc = tl.zeros((BLOCK_K, BLOCK_D), dtype=tl.float32)
    for f0 in range(0, F, BLOCK_F):
        offs_f = f0 + tl.arange(0, BLOCK_F)
        f_mask = offs_f < F
        zt = tl.load(z_base + offs_k[:, None] * szk + offs_f[None, :] * szf,
                     mask=k_mask[:, None] & f_mask[None, :], other=0.0)
        wt = tl.load(w_ptr + offs_f[:, None] * swf + offs_d[None, :] * swd,
                     mask=f_mask[:, None] & d_mask[None, :], other=0.0)
        acc = tl.dot(operand(zt, w_ptr, UPCAST), operand(wt, w_ptr, UPCAST), acc, input_precision=PRECISION)
    return acc


@triton.jit
def graph_conv_fwd_kernel(
    z_ptr, adj_ptr, w_ptr, bias_ptr, out_ptr,
    K, F, D,
    szb, szk, szf, sai, saj, swf, swd, sbd,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """``out [B, K, D]`` (contiguous, dtype of z) from ``z [B, K, F]``, ``adj [K, K]``, ``w [F, D]``, ``bias [D]``."""
    pid = tl.program_id(0)
    num_db = tl.cdiv(D, BLOCK_D)
    db = pid % num_db
    bi = (pid // num_db).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < D

    zw = _zw_block(z_ptr + bi * szb, w_ptr, offs_k, k_mask, offs_d, d_mask, F, szk, szf, swf, swd,
                   BLOCK_K, BLOCK_F, BLOCK_D, UPCAST, PRECISION)
    adj = tl.load(adj_ptr + offs_k[:, None] * sai + offs_k[None, :] * saj,
                  mask=k_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
    pre = tl.dot(adj, zw, input_precision=PRECISION)
    if HAS_BIAS:
        pre += tl.load(bias_ptr + offs_d * sbd, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    if ACTIVATION == 1:
        pre = tl.maximum(pre, 0.0)
    elif ACTIVATION == 2:
        pre = tl.where(pre > 0, pre, pre * 0.2)
    out = out_ptr + bi * K * D + offs_k[:, None] * D + offs_d[None, :]
    tl.store(out, pre.to(out_ptr.dtype.element_ty), mask=k_mask[:, None] & d_mask[None, :])


@triton.jit
def graph_conv_bwd_pre_kernel(
    gout_ptr, out_ptr, z_ptr, adj_ptr, w_ptr, gzw_ptr, gadj_ptr, gbias_ptr,
    B, K, F, D,
    sgb, sgk, sgd, sob, sok, sod, szb, szk, szf, sai, saj, swf, swd,
    ACTIVATION: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """Per (D block, batch): ``gzw [B, K, D]`` (fp32), partial ``gbias [B, D]`` and ``gadj [B, nD, K, K]`` (fp32)."""
    pid = tl.program_id(0)
    num_db = tl.cdiv(D, BLOCK_D)
    db = pid % num_db
    bi = (pid // num_db).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    kd = k_mask[:, None] & d_mask[None, :]

    gpre = tl.load(gout_ptr + bi * sgb + offs_k[:, None] * sgk + offs_d[None, :] * sgd, mask=kd, other=0.0)
    gpre = gpre.to(tl.float32)
    if ACTIVATION != 0:
        out = tl.load(out_ptr + bi * sob + offs_k[:, None] * sok + offs_d[None, :] * sod, mask=kd, other=0.0)
        out = out.to(tl.float32)
        if ACTIVATION == 1:
            gpre = tl.where(out > 0, gpre, 0.0)
        else:
            gpre = tl.where(out > 0, gpre, gpre * 0.2)
    # adj^T as a [BLOCK_K, BLOCK_K] block: element (i, j) = adj[j, i]
    adj_t = tl.load(adj_ptr + offs_k[None, :] * sai + offs_k[:, None] * saj,
                    mask=k_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
    gzw = tl.dot(adj_t, gpre, input_precision=PRECISION)
    tl.store(gzw_ptr + bi * K * D + offs_k[:, None] * D + offs_d[None, :], gzw, mask=kd)
    tl.store(gbias_ptr + bi * D + offs_d, tl.sum(gpre, axis=0), mask=d_mask)

    zw = _zw_block(z_ptr + bi * szb, w_ptr, offs_k, k_mask, offs_d, d_mask, F, szk, szf, swf, swd,
                   BLOCK_K, BLOCK_F, BLOCK_D, UPCAST, PRECISION)
    gadj = tl.dot(gpre, tl.trans(zw), input_precision=PRECISION)
    slot = (bi * num_db + db) * K * K
    tl.store(gadj_ptr + slot + offs_k[:, None] * K + offs_k[None, :], gadj,
             mask=k_mask[:, None] & k_mask[None, :])


@triton.jit
def graph_conv_bwd_z_kernel(
    gzw_ptr, w_ptr, gz_ptr,
    K, F, D, swf, swd,
    BLOCK_K: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """``gz [B, K, F] = gzw weight^T`` (contiguous, dtype of weight) from ``gzw [B, K, D]`` (fp32), ``w [F, D]``."""
    pid = tl.program_id(0)
    num_fb = tl.cdiv(F, BLOCK_F)
    fb = pid % num_fb
    bi = (pid // num_fb).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    offs_f = fb * BLOCK_F + tl.arange(0, BLOCK_F)
    f_mask = offs_f < F
    acc = tl.zeros((BLOCK_K, BLOCK_F), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        g = tl.load(gzw_ptr + bi * K * D + offs_k[:, None] * D + offs_d[None, :],
                    mask=k_mask[:, None] & d_mask[None, :], other=0.0)
        w_t = tl.load(w_ptr + offs_d[:, None] * swd + offs_f[None, :] * swf,
                      mask=d_mask[:, None] & f_mask[None, :], other=0.0)
        acc = tl.dot(operand(g, w_ptr, UPCAST), operand(w_t, w_ptr, UPCAST), acc, input_precision=PRECISION)
    out = gz_ptr + bi * K * F + offs_k[:, None] * F + offs_f[None, :]
    tl.store(out, acc.to(gz_ptr.dtype.element_ty), mask=k_mask[:, None] & f_mask[None, :])


@triton.jit
def graph_conv_bwd_w_kernel(
    z_ptr, gzw_ptr, gw_ptr,
    B, K, F, D, szb, szk, szf,
    BLOCK_K: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """``gweight [F, D] = sum_b z^T gzw`` (contiguous, dtype of gw_ptr), summed over the batch in order."""
    pid = tl.program_id(0)
    num_db = tl.cdiv(D, BLOCK_D)
    db = pid % num_db
    fb = pid // num_db
    offs_k = tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    offs_f = fb * BLOCK_F + tl.arange(0, BLOCK_F)
    f_mask = offs_f < F
    offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    acc = tl.zeros((BLOCK_F, BLOCK_D), dtype=tl.float32)
    z_b = z_ptr
    g_b = gzw_ptr
    for _ in range(B):  # the batch in order: deterministic; the pointers advance one batch per step
        z_t = tl.load(z_b + offs_f[:, None] * szf + offs_k[None, :] * szk,
                      mask=f_mask[:, None] & k_mask[None, :], other=0.0)
        g = tl.load(g_b + offs_k[:, None] * D + offs_d[None, :], mask=k_mask[:, None] & d_mask[None, :], other=0.0)
        acc = tl.dot(operand(z_t, gw_ptr, UPCAST), operand(g, gw_ptr, UPCAST), acc, input_precision=PRECISION)
        z_b += szb
        g_b += K * D
    out = gw_ptr + offs_f[:, None] * D + offs_d[None, :]
    tl.store(out, acc.to(gw_ptr.dtype.element_ty), mask=f_mask[:, None] & d_mask[None, :])
