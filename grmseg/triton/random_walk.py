"""Triton kernels for ``random_walk``: ``steps`` local passes instead of the dense ``cam_vec @ T^steps``.
Kernels only: the launch policy (which kernel, block sizes) lives in ``grmseg.ops.impl.triton_wsss``.

Per pixel ``j`` (``DESIGN.md``; ``grmseg.ops.impl.local_walk`` is the same scheme in PyTorch):

    y_j <- y_j + inv_d_j * (sum_d w+_d(j) (y_{j + o_d} - y_j) + w-_d(j) (y_{j - o_d} - y_j))

with ``w+_d(j) = aff[d, j]^beta``, ``w-_d(j) = aff[d, j - o_d]^beta`` (0 where the neighbour leaves the map) and
``inv_d_j = 1 / (1 + sum_d w+_d(j) + w-_d(j))``: ``sum_i T_ij y_i`` written as weighted differences, so the
column sums of ``T`` are exactly 1 whatever the rounding of the weights and the fp32 rounding of a pass scales
with ``y_i - y_j``, not with ``y`` (as the csrc kernels). The classes are independent, so a program may own a
block of classes of one image for the whole walk.

* ``rw_weights_kernel`` precomputes, once, the normalised fp32 weights ``wts [B, 2D, P]`` of the ``2D``
  neighbours ``j + s_n`` listed in ``nb [2D, 2]`` (``+o_d``, then ``-o_d``): planes ``0 .. D - 1`` ``w+ inv_d``,
  planes ``D .. 2D - 1`` ``w- inv_d``. A pass is then ``y_j <- y_j + sum_n wts[n, j] (y_{j + s_n} - y_j)``,
  taken ``BLOCK_N`` neighbours at a time (a ``[BLOCK_N, BLOCK_K, BLOCK_P]`` gather: large under the
  interpreter, where each operation costs, small on a GPU).
* ``rw_step_kernel``: one pass, program ``(b, class block, pixel block)``; the adapter launches it once per
  step, ping-ponging two fp32 state buffers (big maps: every SM busy).
* ``rw_fused_kernel``: every pass in one launch; program ``(b, class block)`` walks the whole map for each step,
  ping-ponging the two state buffers with a block barrier between steps (small maps: no launch per step).
"""

from __future__ import annotations

import triton
import triton.language as tl

from grmseg.triton.common import grid_2d, grid_3d, offsets, shifted_pixels


@triton.jit
def _pow(x, beta, BETA_INT: tl.constexpr, BETA_ODD: tl.constexpr):
    """``x ** beta`` as ``torch.pow`` has it (``0 ** beta = 0`` for ``beta > 0``; negative ``x`` only for an
    integer ``beta``, NaN otherwise)."""
    ax = tl.abs(x)
    r = tl.where(ax == 0, 0.0, tl.exp2(beta * tl.log2(tl.where(ax == 0, 1.0, ax))))  # 0 ** beta = 0, no log2(0)
    if BETA_INT:
        if BETA_ODD:
            r = tl.where(x < 0, -r, r)
    else:
        r = tl.where(x < 0, float("nan"), r)
    return r


@triton.jit
def _pair_weights(a_base, dy, dx, d_off, py, px, pmask2, H, W, sah, saw, beta,
                  BETA_INT: tl.constexpr, BETA_ODD: tl.constexpr, INT64: tl.constexpr):
    """``(w+, w-)`` tiles ``[BLOCK_D, BLOCK_P]``: ``aff[d, p]^beta`` where ``p + o_d`` is inside the map and
    ``aff[d, p - o_d]^beta`` where ``p - o_d`` is, 0 elsewhere."""
    qy = py[None, :] + dy[:, None]
    qx = px[None, :] + dx[:, None]
    vf = pmask2 & (qy >= 0) & (qy < H) & (qx >= 0) & (qx < W)
    af = tl.load(a_base + d_off + offsets(py, INT64)[None, :] * sah + offsets(px, INT64)[None, :] * saw,
                 mask=vf, other=0.0).to(tl.float32)
    wf = tl.where(vf, _pow(af, beta, BETA_INT, BETA_ODD), 0.0)
    ry = py[None, :] - dy[:, None]
    rx = px[None, :] - dx[:, None]
    vb = pmask2 & (ry >= 0) & (ry < H) & (rx >= 0) & (rx < W)
    ab = tl.load(a_base + d_off + offsets(ry, INT64) * sah + offsets(rx, INT64) * saw,
                 mask=vb, other=0.0).to(tl.float32)
    wb = tl.where(vb, _pow(ab, beta, BETA_INT, BETA_ODD), 0.0)
    return wf, wb


@triton.jit
def rw_weights_kernel(
    aff_ptr, off_ptr, w_ptr, beta,
    H, W, D, NPB,
    sab, sad, sah, saw,
    BETA_INT: tl.constexpr, BETA_ODD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
    INT64: tl.constexpr,
):
    """``wts [B, 2D, P]`` (fp32, contiguous) of ``aff [B, D, H, W]`` (any strides) and offsets ``[D, 2]``.
    Two sweeps over the offsets: the column sums first, then the normalised weights (recomputed, not re-read)."""
    pb, bi = grid_2d(NPB)
    P = H * W

    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < P
    py = offs_p // W
    px = offs_p % W
    a_base = aff_ptr + bi * sab
    w_base = w_ptr + bi * (2 * D) * P
    dsum = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        dy = tl.load(off_ptr + 2 * offs_d, mask=d_mask, other=0)
        dx = tl.load(off_ptr + 2 * offs_d + 1, mask=d_mask, other=0)
        wf, wb = _pair_weights(a_base, dy, dx, offsets(offs_d, INT64)[:, None] * sad, py, px,
                               d_mask[:, None] & p_mask[None, :], H, W, sah, saw, beta, BETA_INT, BETA_ODD, INT64)
        dsum += tl.sum(wf, axis=0) + tl.sum(wb, axis=0)
    inv = 1.0 / (1.0 + dsum)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        dy = tl.load(off_ptr + 2 * offs_d, mask=d_mask, other=0)
        dx = tl.load(off_ptr + 2 * offs_d + 1, mask=d_mask, other=0)
        smask = d_mask[:, None] & p_mask[None, :]
        wf, wb = _pair_weights(a_base, dy, dx, offsets(offs_d, INT64)[:, None] * sad, py, px,
                               smask, H, W, sah, saw, beta, BETA_INT, BETA_ODD, INT64)
        plane = offsets(offs_d, INT64)[:, None] * P + offs_p[None, :]
        tl.store(w_base + plane, wf * inv[None, :], mask=smask)
        tl.store(w_base + D * P + plane, wb * inv[None, :], mask=smask)


@triton.jit
def _pass_tile(src, wts, nb_ptr, kp, k_mask, offs_p, p_mask, H, W, P, NN,
               BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, INT64: tl.constexpr):
    """One pass over one tile: the new state ``[BLOCK_K, BLOCK_P]`` (fp32) of the classes at row offsets ``kp``
    and the pixels ``offs_p``, from the state ``src [K, P]`` and the weights ``wts [NN, P]`` of one image, the
    neighbours taken ``BLOCK_N`` at a time."""
    py = offs_p // W
    px = offs_p % W
    yc = tl.load(src + kp[:, None] + offs_p[None, :], mask=k_mask[:, None] & p_mask[None, :], other=0.0)
    acc = tl.zeros((BLOCK_K, BLOCK_P), dtype=tl.float32)
    for n0 in range(0, NN, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        sy, sx, _, _, v = shifted_pixels(nb_ptr, offs_n, offs_n < NN, py, px, p_mask, H, W)
        if INT64:
            offs_n = offs_n.to(tl.int64)
        wn = tl.load(wts + offs_n[:, None] * P + offs_p[None, :], mask=v, other=0.0)
        q = offs_p[None, :] + sy[:, None] * W + sx[:, None]
        yq = tl.load(src + kp[None, :, None] + q[:, None, :], mask=v[:, None, :] & k_mask[None, :, None], other=0.0)
        acc += tl.sum(wn[:, None, :] * (yq - yc[None, :, :]), axis=0)
    return yc + acc


@triton.jit
def rw_step_kernel(
    src_ptr, dst_ptr, w_ptr, nb_ptr,
    K, H, W, NN, NPB, NKB,
    BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, INT64: tl.constexpr,
):
    """One pass: ``dst [B, K, P]`` from ``src [B, K, P]`` (fp32, contiguous), ``wts [B, NN, P]``, ``nb [NN, 2]``."""
    pb, kb, bi = grid_3d(NPB, NKB)
    P = H * W
    offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < P
    kp = offsets(offs_k, INT64) * P
    y = _pass_tile(src_ptr + bi * K * P, w_ptr + bi * NN * P, nb_ptr, kp, k_mask, offs_p, p_mask, H, W, P, NN,
                   BLOCK_K, BLOCK_P, BLOCK_N, INT64)
    tl.store(dst_ptr + bi * K * P + kp[:, None] + offs_p[None, :], y, mask=k_mask[:, None] & p_mask[None, :])


@triton.jit
def rw_fused_kernel(
    y_ptr, w_ptr, nb_ptr, steps,
    SLOT, K, H, W, NN, NKB,
    BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, HOIST: tl.constexpr,
    INT64: tl.constexpr,
):
    """Every pass in one launch: ``y [2, B, K, P]`` (fp32, contiguous; ``SLOT = B K P``) holds the state in slot 0
    on entry and in slot ``steps % 2`` on exit; ``wts [B, NN, P]``, ``nb [NN, 2]``. Program ``(b, class block)``
    owns its classes for the whole walk. HOIST: the map fits one tile (``P <= BLOCK_P``) and the neighbourhood
    one chunk (``NN <= BLOCK_N``), so the weights and gather offsets are loaded once, before the passes."""
    kb, bi = grid_2d(NKB)
    P = H * W
    base = bi * K * P
    wts = w_ptr + bi * NN * P
    offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    kp = offsets(offs_k, INT64) * P
    if HOIST:
        offs_p = tl.arange(0, BLOCK_P)
        p_mask = offs_p < P
        py = offs_p // W
        px = offs_p % W
        offs_n = tl.arange(0, BLOCK_N)
        sy, sx, _, _, v = shifted_pixels(nb_ptr, offs_n, offs_n < NN, py, px, p_mask, H, W)
        wn = tl.load(wts + offs_n[:, None] * P + offs_p[None, :], mask=v, other=0.0)[:, None, :]
        # Out-of-map neighbours and padded classes read an in-map element of the state instead (their weight is
        # 0, or their row is never stored), so the gathers need no mask; the pointers of both slots are built once.
        q = tl.where(v, offs_p[None, :] + sy[:, None] * W + sx[:, None], 0)
        kc = offsets(tl.minimum(offs_k, K - 1), INT64) * P
        g0 = y_ptr + base + kc[None, :, None] + q[:, None, :]
        g1 = g0 + SLOT
        o0 = y_ptr + base + kp[:, None] + offs_p[None, :]
        o1 = o0 + SLOT
        omask = k_mask[:, None] & p_mask[None, :]
        # The state of this program's pixels stays in registers: yc, next to the slot it was stored in.
        yc = tl.load(o0, mask=omask, other=0.0)
        for _ in range(steps // 2):  # two passes: slot 0 -> slot 1 -> slot 0
            yc = yc + tl.sum(wn * (tl.load(g0) - yc[None, :, :]), axis=0)
            tl.store(o1, yc, mask=omask)
            tl.debug_barrier()  # the next pass reads what every thread of this program just wrote
            yc = yc + tl.sum(wn * (tl.load(g1) - yc[None, :, :]), axis=0)
            tl.store(o0, yc, mask=omask)
            tl.debug_barrier()
        if steps % 2 == 1:
            yc = yc + tl.sum(wn * (tl.load(g0) - yc[None, :, :]), axis=0)
            tl.store(o1, yc, mask=omask)
    else:
        for s in range(steps):
            src = y_ptr + (s % 2) * SLOT + base
            dst = y_ptr + ((s + 1) % 2) * SLOT + base
            for p0 in range(0, P, BLOCK_P):
                offs_p = p0 + tl.arange(0, BLOCK_P)
                p_mask = offs_p < P
                y = _pass_tile(src, wts, nb_ptr, kp, k_mask, offs_p, p_mask, H, W, P, NN,
                               BLOCK_K, BLOCK_P, BLOCK_N, INT64)
                tl.store(dst + kp[:, None] + offs_p[None, :], y, mask=k_mask[:, None] & p_mask[None, :])
            tl.debug_barrier()  # the next pass reads what every thread of this program just wrote
