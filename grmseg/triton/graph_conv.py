"""Triton kernels for ``graph_conv`` (one GCN layer over the K nodes), forward and backward. Kernels only:
the launch policy lives in ``grmseg.ops.impl.triton``.

Math: ``zw = z weight``, ``pre = adj zw + bias``, ``out = act(pre)``; backward ``gpre = gout act'(out)``,
``gzw = adj^T gpre``, ``gz = gzw weight^T``, ``gweight = sum_b z^T gzw``, ``gadj = sum_b gpre zw^T``,
``gbias = sum_{b,k} gpre``. ``ACTIVATION``: 0 none, 1 relu, 2 leaky_relu (slope 0.2).

No [K, K] block is ever held whole (K pads to 128, and a 128 x 128 fp32 block alone would fill a program's
registers): the node axis is walked in chunks of ``BLOCK_J`` rows.

Forward: a program per (block of D, batch): for each chunk of BLOCK_J nodes ``zw`` of the chunk (over F chunks),
then ``pre += adj[:, chunk] zw[chunk]``; bias and activation in registers. Backward: four kernels,
(1) per (block of D, batch): ``gzw += adj[chunk]^T gpre[chunk]`` over the node chunks into an fp32 scratch
``[B, K, D]``, and the bias partial ``[B, D]``; (2) per (block of D, batch): ``gpre`` of all nodes and, recomputing
``zw`` chunk by chunk, the adjacency partial ``gadj[:, chunk] = gpre zw[chunk]^T`` into slot ``db`` of
``[B, NUM_DB, K, K]`` (every slot written: NUM_DB = cdiv(D, BLOCK_D));
(3) ``gz`` per (block of F, batch); (4) ``gweight`` per (block of F, block of D), summing over the batch and
the node chunks in order. Partials are summed by the adapter in a fixed order. (1) and (2) are separate so
that neither holds more than three ``[BLOCK_K, BLOCK_*]`` blocks: fused, fp32 at 128 nodes did not fit the
registers.

Dot operands are in the input dtype (``operand``; fp32 inputs use ``PRECISION``), accumulation in fp32.
"""

from __future__ import annotations

import triton
import triton.language as tl

from grmseg.triton.common import grid_2d, operand


@triton.jit
def _zw_rows(z_base, w_ptr, offs_j, j_mask, offs_d, d_mask, F, szk, szf, swf, swd,
             BLOCK_J: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
             UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """``(z weight)[rows j, d block]`` of one batch: fp32 ``[BLOCK_J, BLOCK_D]``."""
    acc = tl.zeros((BLOCK_J, BLOCK_D), dtype=tl.float32)
    for f0 in range(0, F, BLOCK_F):
        offs_f = f0 + tl.arange(0, BLOCK_F)
        f_mask = offs_f < F
        zt = tl.load(z_base + offs_j[:, None] * szk + offs_f[None, :] * szf,
                     mask=j_mask[:, None] & f_mask[None, :], other=0.0)
        wt = tl.load(w_ptr + offs_f[:, None] * swf + offs_d[None, :] * swd,
                     mask=f_mask[:, None] & d_mask[None, :], other=0.0)
        acc = tl.dot(operand(zt, w_ptr, UPCAST), operand(wt, w_ptr, UPCAST), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _grad_pre(gout_base, out_base, offs_j, j_mask, offs_d, d_mask, sgk, sgd, sok, sod, ACTIVATION: tl.constexpr):
    """``gpre = gout act'(out)`` of rows j: fp32 ``[len(offs_j), BLOCK_D]``, 0 outside the masks."""
    m = j_mask[:, None] & d_mask[None, :]
    g = tl.load(gout_base + offs_j[:, None] * sgk + offs_d[None, :] * sgd, mask=m, other=0.0).to(tl.float32)
    if ACTIVATION != 0:
        o = tl.load(out_base + offs_j[:, None] * sok + offs_d[None, :] * sod, mask=m, other=0.0).to(tl.float32)
        if ACTIVATION == 1:
            g = tl.where(o > 0, g, 0.0)
        else:
            g = tl.where(o > 0, g, g * 0.2)
    return g


@triton.jit
def graph_conv_fwd_kernel(
    z_ptr, adj_ptr, w_ptr, bias_ptr, out_ptr,
    K, F, D,
    szb, szk, szf, sai, saj, swf, swd, sbd,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """``out [B, K, D]`` (contiguous, dtype of z) from ``z [B, K, F]``, ``adj [K, K]``, ``w [F, D]``, ``bias [D]``."""
    db, bi = grid_2d(tl.cdiv(D, BLOCK_D))
    offs_k = tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    z_base = z_ptr + bi * szb

    pre = tl.zeros((BLOCK_K, BLOCK_D), dtype=tl.float32)
    for j0 in range(0, K, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        j_mask = offs_j < K
        zw = _zw_rows(z_base, w_ptr, offs_j, j_mask, offs_d, d_mask, F, szk, szf, swf, swd,
                      BLOCK_J, BLOCK_F, BLOCK_D, UPCAST, PRECISION)
        adj = tl.load(adj_ptr + offs_k[:, None] * sai + offs_j[None, :] * saj,
                      mask=k_mask[:, None] & j_mask[None, :], other=0.0)
        pre = tl.dot(operand(adj, w_ptr, UPCAST), operand(zw, w_ptr, UPCAST), pre, input_precision=PRECISION)
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
    gout_ptr, out_ptr, adj_ptr, w_ptr, gzw_ptr, gbias_ptr,
    K, D,
    sgb, sgk, sgd, sob, sok, sod, sai, saj,
    ACTIVATION: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """Per (D block, batch): ``gzw = adj^T gpre`` into ``[B, K, D]`` (fp32) and the bias partial ``[B, D]``."""
    db, bi = grid_2d(tl.cdiv(D, BLOCK_D))
    offs_k = tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    gout_base = gout_ptr + bi * sgb
    out_base = out_ptr + bi * sob

    gzw = tl.zeros((BLOCK_K, BLOCK_D), dtype=tl.float32)
    gbias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for j0 in range(0, K, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        j_mask = offs_j < K
        gpre_j = _grad_pre(gout_base, out_base, offs_j, j_mask, offs_d, d_mask, sgk, sgd, sok, sod, ACTIVATION)
        gbias += tl.sum(gpre_j, axis=0)
        # the chunk's rows of adj, transposed to [BLOCK_K, BLOCK_J]
        adj_t = tl.load(adj_ptr + offs_j[None, :] * sai + offs_k[:, None] * saj,
                        mask=k_mask[:, None] & j_mask[None, :], other=0.0)
        gzw = tl.dot(operand(adj_t, w_ptr, UPCAST), operand(gpre_j, w_ptr, UPCAST), gzw, input_precision=PRECISION)
    tl.store(gbias_ptr + bi * D + offs_d, gbias, mask=d_mask)
    tl.store(gzw_ptr + bi * K * D + offs_k[:, None] * D + offs_d[None, :], gzw,
             mask=k_mask[:, None] & d_mask[None, :])


@triton.jit
def graph_conv_bwd_adj_kernel(
    gout_ptr, out_ptr, z_ptr, w_ptr, gadj_ptr,
    K, F, D, NUM_DB,
    sgb, sgk, sgd, sob, sok, sod, szb, szk, szf, swf, swd,
    ACTIVATION: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """Per (D block, batch): the adjacency partial ``gadj[:, j] = gpre zw[j]^T`` into slot ``db`` of
    ``[B, NUM_DB, K, K]`` (fp32), ``zw`` of each node chunk recomputed from ``z`` and ``w``."""
    db, bi = grid_2d(tl.cdiv(D, BLOCK_D))
    offs_k = tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    z_base = z_ptr + bi * szb
    gpre = _grad_pre(gout_ptr + bi * sgb, out_ptr + bi * sob, offs_k, k_mask, offs_d, d_mask, sgk, sgd, sok, sod,
                     ACTIVATION)
    gpre_op = operand(gpre, w_ptr, UPCAST)
    gadj_base = gadj_ptr + (bi * NUM_DB + db) * K * K
    for j0 in range(0, K, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        j_mask = offs_j < K
        zw = _zw_rows(z_base, w_ptr, offs_j, j_mask, offs_d, d_mask, F, szk, szf, swf, swd,
                      BLOCK_J, BLOCK_F, BLOCK_D, UPCAST, PRECISION)
        gadj = tl.dot(gpre_op, tl.trans(operand(zw, w_ptr, UPCAST)), input_precision=PRECISION)
        tl.store(gadj_base + offs_k[:, None] * K + offs_j[None, :], gadj, mask=k_mask[:, None] & j_mask[None, :])


@triton.jit
def graph_conv_bwd_z_kernel(
    gzw_ptr, w_ptr, gz_ptr,
    K, F, D, swf, swd,
    BLOCK_K: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """``gz [B, K, F] = gzw weight^T`` (contiguous, dtype of weight) from ``gzw [B, K, D]`` (fp32), ``w [F, D]``."""
    fb, bi = grid_2d(tl.cdiv(F, BLOCK_F))
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
    BLOCK_J: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """``gweight [F, D] = sum_b z^T gzw`` (contiguous, dtype of gw_ptr), summed over the batch and the node
    chunks in order."""
    pid = tl.program_id(0)
    num_db = tl.cdiv(D, BLOCK_D)
    db = pid % num_db
    fb = pid // num_db
    offs_f = fb * BLOCK_F + tl.arange(0, BLOCK_F)
    f_mask = offs_f < F
    offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    acc = tl.zeros((BLOCK_F, BLOCK_D), dtype=tl.float32)
    z_b = z_ptr
    g_b = gzw_ptr
    for _ in range(B):  # the batch in order: deterministic; the pointers advance one batch per step
        for j0 in range(0, K, BLOCK_J):
            offs_j = j0 + tl.arange(0, BLOCK_J)
            j_mask = offs_j < K
            z_t = tl.load(z_b + offs_f[:, None] * szf + offs_j[None, :] * szk,
                          mask=f_mask[:, None] & j_mask[None, :], other=0.0)
            g = tl.load(g_b + offs_j[:, None] * D + offs_d[None, :], mask=j_mask[:, None] & d_mask[None, :],
                        other=0.0)
            acc = tl.dot(operand(z_t, gw_ptr, UPCAST), operand(g, gw_ptr, UPCAST), acc, input_precision=PRECISION)
        z_b += szb
        g_b += K * D
    out = gw_ptr + offs_f[:, None] * D + offs_d[None, :]
    tl.store(out, acc.to(gw_ptr.dtype.element_ty), mask=f_mask[:, None] & d_mask[None, :])
