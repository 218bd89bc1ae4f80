"""The random walk as local passes in plain PyTorch: no dense ``N x N`` matrix, O(N * D) memory.

``grmseg.reference.random_walk`` builds the dense transition matrix ``T`` (column-normalised ``A^beta``, ``A``
symmetric with unit diagonal and ``A[p, p + o_d] = A[p + o_d, p] = aff[d, p]``) and returns ``cam_vec @ T^steps``.
The same result comes from ``steps`` local passes over each pixel's neighbourhood ``N(j)``:

    y_j <- (y_j + sum_d w+_d(j) y_{j + o_d} + w-_d(j) y_{j - o_d}) / d_j

with ``w+_d(j) = aff[d, j]^beta`` (the pair ``(j, j + o_d)``), ``w-_d(j) = aff[d, j - o_d]^beta`` (the pair
``(j - o_d, j)``), both 0 where the neighbour falls outside the map, and ``d_j = 1 + sum_d (w+_d(j) + w-_d(j))``
the column sum of ``A^beta`` (>= 1, so no division by zero even where every affinity is 0). Every backend
evaluates it in the equal form

    y_j <- y_j + (sum_d w+_d(j) (y_{j + o_d} - y_j) + w-_d(j) (y_{j - o_d} - y_j)) / d_j

whose weights sum to exactly 1 whatever their rounding and whose rounding error scales with the differences
``y_i - y_j`` rather than with ``y``: in fp32, after 256 steps, it stays far closer to the float64 answer than
the direct sum (whose rounded column sums compound step after step) and than IRN's fp32 dense walk.

This module is the readable second implementation of that scheme (the kernels in ``grmseg.triton`` and ``csrc``
do the same) and the float64 path of the Triton backend. Shifts are slices of a zero-padded state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grmseg.reference import affinity_offsets, radius_from_offsets

__all__ = ["random_walk_local", "walk_weights"]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _shift(t: Tensor, dy: int, dx: int) -> Tensor:
    """``t[..., i + dy, j + dx]`` at every ``(i, j)``, zero where that falls outside the map."""
    h, w = t.shape[-2:]
    out = torch.zeros_like(t)
    i0, i1 = max(0, -dy), min(h, h - dy)
    j0, j1 = max(0, -dx), min(w, w - dx)
    if i0 < i1 and j0 < j1:
        out[..., i0:i1, j0:j1] = t[..., i0 + dy : i1 + dy, j0 + dx : j1 + dx]
    return out


def walk_weights(aff: Tensor, beta: float) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
    """The powered neighbour weights of every pixel and the reciprocal column sums.

    Args:
        aff: ``[B, D, h, w]`` affinities for the offsets of ``affinity_offsets(r)`` (r inferred from D).
        beta: the power applied to the affinities.

    Returns:
        ``(w [B, 2D, h, w], inv_d [B, 1, h, w], offsets)`` in the accumulation dtype (fp32 for half inputs):
        ``w[:, d]`` weighs the neighbour ``j + o_d`` and ``w[:, D + d]`` the neighbour ``j - o_d`` of pixel
        ``j`` (0 outside the map); ``inv_d = 1 / (1 + sum of the weights)``; ``offsets`` the ``D`` ``(dy, dx)``.
    """
    offsets = affinity_offsets(radius_from_offsets(aff.shape[1]))
    a = aff.to(_acc_dtype(aff.dtype))
    bsz, _, h, w = a.shape
    fwd, bwd = [], []
    for d, (dy, dx) in enumerate(offsets):
        # aff[d, p] is the pair (p, p + o_d): only pairs inside the map exist (whatever aff holds elsewhere).
        valid = _shift(torch.ones(h, w, dtype=a.dtype, device=a.device), dy, dx)
        wf = a[:, d].pow(beta) * valid
        fwd.append(wf)
        bwd.append(_shift(wf, -dy, -dx))  # w-_d(j) = w+_d(j - o_d)
    if offsets:
        weights = torch.stack(fwd + bwd, dim=1)
        inv_d = 1.0 / (1.0 + weights.sum(dim=1, keepdim=True))
    else:
        weights = a.new_zeros(bsz, 0, h, w)
        inv_d = a.new_ones(bsz, 1, h, w)
    return weights, inv_d, offsets


def random_walk_local(cam: Tensor, aff: Tensor, beta: float, steps: int) -> Tensor:
    """``cam_vec @ T^steps`` by ``steps`` local passes (the math of ``grmseg.reference.random_walk``).

    Args:
        cam: ``[B, K, h, w]`` scores.
        aff: ``[B, D, h, w]`` affinities (same dtype and device as ``cam``).
        beta: power applied to the affinities (> 0).  steps: number of passes (>= 0).

    Returns:
        ``[B, K, h, w]`` in the dtype of ``cam``; the state is kept in fp32 (fp64 for fp64 input).
        Memory: the state twice plus ``2D + 1`` weight planes, never ``N x N``.
    """
    bsz, k, h, w = cam.shape
    acc = _acc_dtype(cam.dtype)
    y = cam.to(acc).contiguous()
    if steps == 0:
        return y.to(cam.dtype) if cam.dtype != acc else y.clone()
    weights, inv_d, offsets = walk_weights(aff, beta)
    num = len(offsets)
    pad = max((max(abs(dy), abs(dx)) for dy, dx in offsets), default=0)
    padded = y.new_zeros(bsz, k, h + 2 * pad, w + 2 * pad)
    center = padded[..., pad : pad + h, pad : pad + w]
    shifted = [
        (weights[:, i : i + 1], padded[..., pad + sy : pad + sy + h, pad + sx : pad + sx + w])
        for i, (sy, sx) in enumerate([(dy, dx) for dy, dx in offsets] + [(-dy, -dx) for dy, dx in offsets])
    ]
    assert len(shifted) == 2 * num
    center.copy_(y)
    for _ in range(steps):
        delta = torch.zeros_like(y)
        for wt, view in shifted:
            delta.addcmul_(wt, view - center)
        center.addcmul_(delta, inv_d)
    return center.to(cam.dtype).contiguous()
