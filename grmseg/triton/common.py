"""Small ``@triton.jit`` helpers shared by the grmseg kernels (no launch policy here).

Conventions every kernel follows:

* ``UPCAST`` (constexpr): cast both ``tl.dot`` operands to float32. The adapter sets it for bfloat16 under the
  Triton interpreter, whose bfloat16 ``tl.dot`` is wrong; on a GPU half operands go to the tensor cores as is.
* ``PRECISION`` (constexpr str): ``tl.dot``'s ``input_precision`` for float32 operands.
* ``INT64`` (constexpr): compute in-batch element offsets in int64 (the batch offset always is); the adapter
  sets it when an offset can pass 2**31 - 1.
* NaN propagates as in the reference: a max (or ReLU) over values holding a NaN is NaN (``nan_max``), as
  ``torch.amax`` and ``torch.relu`` give; ``tl.maximum`` and ``tl.max`` would drop it.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def operand(t, ptr, UPCAST: tl.constexpr):
    """``t`` as a ``tl.dot`` operand: in the element type of ``ptr`` (the input dtype), or float32 if UPCAST."""
    if UPCAST:
        r = t.to(tl.float32)
    else:
        r = t.to(ptr.dtype.element_ty)
    return r


@triton.jit
def softmax_k(s, k_mask):
    """Softmax over axis 0 (the K nodes) of fp32 logits ``s [BLOCK_K, BLOCK_P]``; rows where ``~k_mask`` get 0."""
    s = tl.where(k_mask[:, None], s, float("-inf"))
    mx = tl.max(s, axis=0)
    e = tl.exp2((s - mx[None, :]) * 1.4426950408889634)
    return e / tl.sum(e, axis=0)[None, :]


@triton.jit
def nan_max(a, b):
    """``max(a, b)``, NaN when either is NaN (``torch.maximum``); a ``tl.reduce`` combine function too."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def offsets(offs, INT64: tl.constexpr):
    """``offs`` widened to int64 when INT64, for element offsets that can pass 2**31 - 1."""
    if INT64:
        r = offs.to(tl.int64)
    else:
        r = offs
    return r


@triton.jit
def grid_2d(n_inner):
    """This program's ``(block, image)`` in a launch grid laid out image-major (``n_inner`` blocks per image);
    the image index as int64 (every kernel's batch offset is)."""
    pid = tl.program_id(0)
    return pid % n_inner, (pid // n_inner).to(tl.int64)


@triton.jit
def grid_3d(n_inner, n_mid):
    """This program's ``(inner, mid, image)`` in a launch grid laid out image x mid x inner (inner fastest); the
    image index as int64."""
    pid = tl.program_id(0)
    return pid % n_inner, (pid // n_inner) % n_mid, (pid // n_inner // n_mid).to(tl.int64)


@triton.jit
def shifted_pixels(off_ptr, offs_n, n_mask, py, px, p_mask, H, W):
    """The pixels ``p + o_n`` for the offsets ``o_n = off_ptr[n]`` (``[N, 2]`` int32 ``(dy, dx)`` pairs) of rows
    ``offs_n`` and the pixels ``(py, px)`` of a tile: ``dy, dx [BLOCK_N]``, ``qy, qx [BLOCK_N, BLOCK_P]`` and the
    mask of the pairs with both ends in the ``H x W`` map (rows off ``n_mask`` and pixels off ``p_mask`` are out)."""
    dy = tl.load(off_ptr + 2 * offs_n, mask=n_mask, other=0)
    dx = tl.load(off_ptr + 2 * offs_n + 1, mask=n_mask, other=0)
    qy = py[None, :] + dy[:, None]
    qx = px[None, :] + dx[:, None]
    inside = n_mask[:, None] & p_mask[None, :] & (qy >= 0) & (qy < H) & (qx >= 0) & (qx < W)
    return dy, dx, qy, qx, inside
