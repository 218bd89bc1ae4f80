"""Triton launch policy for the WSSS kernels: cam, local_affinity, boundary_affinity, random_walk.

The kernels live in ``grmseg.triton.cam``, ``grmseg.triton.affinity`` and ``grmseg.triton.random_walk``; this
module picks grids and block sizes and is meant to be imported by the Triton backend ``grmseg.ops.impl.triton``
(``WSSS_KERNELS`` names the functions it adds to that backend). The functions follow the backend contract of
``grmseg.ops._backends``: validated inputs (any strides), contiguous outputs in the input dtype.

Availability is the Triton backend's: CUDA tensors, and CPU tensors under the interpreter (``TRITON_INTERPRET=1``),
where every program instance is expensive, so the blocks are large and the programs few.

Numerics: fp32 accumulation and fp32 random-walk state for every dtype. Fallbacks (same math): float64 inputs and
empty tensors go to ``grmseg.reference``, except ``random_walk``, whose float64 path is the local PyTorch walk
``grmseg.ops.impl.local_walk`` (the reference builds a dense ``N x N`` matrix).
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from grmseg import reference as _ref
from grmseg.ops.impl.local_walk import random_walk_local

__all__ = [
    "WSSS_KERNELS",
    "boundary_affinity_forward",
    "cam_forward",
    "local_affinity_forward",
    "random_walk_forward",
]

#: The kernel names (``grmseg.ops._backends`` contract) this module implements.
WSSS_KERNELS = frozenset(
    {"cam_forward", "local_affinity_forward", "boundary_affinity_forward", "random_walk_forward"}
)
#: ``tl.dot`` input precision for fp32 cam operands on a GPU ("tf32x3": ~fp32 accuracy on the tensor cores).
FP32_PRECISION = "tf32x3"
#: On a GPU, maps with at most this many pixels run every random-walk step in one launch (one program per
#: (image, class block) walks the whole map); larger maps get one launch per step, so every SM has work.
FUSED_WALK_MAX_PIXELS = 1024
_INT32_MAX = 2**31 - 1
#: Interpreter: the largest [BLOCK_N, BLOCK_K, BLOCK_P] gather of the hoisted fused walk, and of other tiles.
_INTERP_HOIST_ELEMS = 2**22
_INTERP_TILE_ELEMS = 2**18


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def _kernels():
    from grmseg.triton import affinity, cam, random_walk

    return cam, affinity, random_walk


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _needs_int64(*sizes: int) -> bool:
    return any(s > _INT32_MAX for s in sizes)


def _extent(t: Tensor) -> int:
    """The largest element offset inside ``t`` (one past it)."""
    return 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride(), strict=True))


@functools.cache
def _offsets_tensor(radius: int, device: torch.device) -> Tensor:
    """``affinity_offsets(radius)`` as int32 ``[D * 2]`` on ``device`` (``(dy, dx)`` pairs, in order)."""
    flat = [v for pair in _ref.affinity_offsets(radius) for v in pair]
    return torch.tensor(flat, dtype=torch.int32, device=device)


@functools.cache
def _neighbours_tensor(radius: int, device: torch.device) -> Tensor:
    """The ``2D`` random-walk neighbour shifts as int32 ``[2D * 2]``: every ``+o_d``, then every ``-o_d`` (the
    order of the weight planes of ``rw_weights_kernel``); ``[0, 0]`` (unused) when there are none."""
    offs = _ref.affinity_offsets(radius)
    shifts = offs + [(-dy, -dx) for dy, dx in offs]
    return torch.tensor([v for pair in shifts for v in pair] or [0, 0], dtype=torch.int32, device=device)


@functools.cache
def _paths_tensor(radius: int, device: torch.device) -> tuple[Tensor, int]:
    """The path points (``reference.path_offsets``) of every offset as int32 ``[D, L, 2]`` and ``L``, the longest
    path; shorter paths are padded by repeating their last point (harmless for a max)."""
    paths = [_ref.path_offsets(dy, dx) for dy, dx in _ref.affinity_offsets(radius)]
    length = max((len(pts) for pts in paths), default=1)
    rows = [pts + [pts[-1]] * (length - len(pts)) for pts in paths]
    return torch.tensor(rows, dtype=torch.int32, device=device).reshape(-1), length


# ------------------------------------------------------------------------------------------------------ cam
def cam_forward(feat: Tensor, weight: Tensor, labels: Tensor | None) -> Tensor:
    """Fused CAM: ``relu(weight feat) / (spatial max + 1e-5)``, absent classes zero.

    Args:
        feat: ``[B, C, h, w]``.  weight: ``[K, C]``.  labels: ``[B, K]`` (non-zero = present) or None.

    Returns:
        ``[B, K, h, w]`` in the dtype of ``feat``, contiguous.
    """
    bsz, c, h, w = feat.shape
    k = weight.shape[0]
    p = h * w
    if feat.dtype == torch.float64 or feat.numel() == 0 or weight.numel() == 0:
        return _ref.cam(feat, weight, labels).contiguous()
    ck, _, _ = _kernels()
    interp = feat.device.type != "cuda"
    if interp:
        block_p = max(16, min(_next_pow2(p), 1024))
        block_c = max(16, min(_next_pow2(c), 128))
        block_k = max(16, min(_next_pow2(k), 128))
        num_warps = 4
    else:
        block_p, block_c, block_k, num_warps = 128, 32, max(16, min(_next_pow2(k), 64)), 4
    npb, nkb = _cdiv(p, block_p), _cdiv(k, block_k)
    raw = torch.empty(bsz, k, h, w, dtype=torch.float32, device=feat.device)
    pmax = torch.empty(bsz, npb, k, dtype=torch.float32, device=feat.device)
    out = raw if feat.dtype == torch.float32 else torch.empty(bsz, k, h, w, dtype=feat.dtype, device=feat.device)
    int64 = _needs_int64(_extent(feat), raw.numel())
    grid = (bsz * npb * nkb,)
    ck.cam_project_kernel[grid](
        feat, weight, raw, pmax,
        c, w, p, k, npb, nkb,
        *feat.stride(), *weight.stride(),
        BLOCK_K=block_k, BLOCK_C=block_c, BLOCK_P=block_p,
        UPCAST=interp and feat.dtype == torch.bfloat16, PRECISION="ieee" if interp else FP32_PRECISION,
        INT64=int64, num_warps=num_warps,
    )
    if labels is not None:
        keep = (labels != 0).to(torch.float32).contiguous()
    else:
        keep = pmax  # unused (HAS_LABELS=False)
    block_n = max(16, min(_next_pow2(npb), 64))
    ck.cam_normalise_kernel[grid](
        raw, pmax, keep, out,
        p, k, npb, nkb, _ref.CAM_EPS,
        HAS_LABELS=labels is not None, BLOCK_K=block_k, BLOCK_P=block_p, BLOCK_N=block_n, INT64=int64,
        num_warps=num_warps,
    )
    return out


# ----------------------------------------------------------------------------------------------- affinities
def _affinity_blocks(num_offsets: int, pixels: int, interp: bool) -> tuple[int, int, int]:
    """``(BLOCK_D, BLOCK_P, num_warps)``."""
    if interp:
        return max(2, min(_next_pow2(num_offsets), 64)), max(16, min(_next_pow2(pixels), 1024)), 4
    return max(2, min(_next_pow2(num_offsets), 16)), 128, 4


def local_affinity_forward(feat: Tensor, radius: int) -> Tensor:
    """PSA affinity ``exp(-mean_c |f(p) - f(p + o_d)|)``, 0 outside the map.

    Args:
        feat: ``[B, C, h, w]``.  radius: >= 1.

    Returns:
        ``[B, D, h, w]`` in the dtype of ``feat``, contiguous; D = ``len(affinity_offsets(radius))``.
    """
    bsz, c, h, w = feat.shape
    offs = _ref.affinity_offsets(radius)
    d = len(offs)
    if feat.dtype == torch.float64 or feat.numel() == 0 or d == 0:
        return _ref.local_affinity(feat, radius).contiguous()
    _, ak, _ = _kernels()
    p = h * w
    block_d, block_p, num_warps = _affinity_blocks(d, p, feat.device.type != "cuda")
    npb, ndb = _cdiv(p, block_p), _cdiv(d, block_d)
    out = torch.empty(bsz, d, h, w, dtype=feat.dtype, device=feat.device)
    ak.local_affinity_kernel[(bsz * npb * ndb,)](
        feat, _offsets_tensor(radius, feat.device), out,
        c, h, w, d, npb, ndb,
        *feat.stride(),
        BLOCK_D=block_d, BLOCK_P=block_p, INT64=_needs_int64(_extent(feat), out.numel()), num_warps=num_warps,
    )
    return out


def boundary_affinity_forward(boundary: Tensor, radius: int) -> Tensor:
    """IRN affinity ``1 - max`` of the boundary map over the path pixels of ``o_d`` from ``p``, 0 outside the map.

    Args:
        boundary: ``[B, 1, h, w]``.  radius: >= 1.

    Returns:
        ``[B, D, h, w]`` in the dtype of ``boundary``, contiguous.
    """
    bsz, _, h, w = boundary.shape
    d = len(_ref.affinity_offsets(radius))
    if boundary.dtype == torch.float64 or boundary.numel() == 0 or d == 0:
        return _ref.boundary_affinity(boundary, radius).contiguous()
    _, ak, _ = _kernels()
    p = h * w
    block_d, block_p, num_warps = _affinity_blocks(d, p, boundary.device.type != "cuda")
    npb, ndb = _cdiv(p, block_p), _cdiv(d, block_d)
    paths, length = _paths_tensor(radius, boundary.device)
    out = torch.empty(bsz, d, h, w, dtype=boundary.dtype, device=boundary.device)
    sb, _, sh, sw = boundary.stride()
    ak.boundary_affinity_kernel[(bsz * npb * ndb,)](
        boundary, _offsets_tensor(radius, boundary.device), paths, out,
        h, w, d, length, npb, ndb,
        sb, sh, sw,
        BLOCK_D=block_d, BLOCK_P=block_p, INT64=_needs_int64(_extent(boundary), out.numel()),
        num_warps=num_warps,
    )
    return out


# ---------------------------------------------------------------------------------------------- random walk
def _walk_blocks(k: int, p: int, nn: int, interp: bool, fused: bool) -> tuple[int, int, int, bool]:
    """``(BLOCK_K, BLOCK_P, BLOCK_N, HOIST)`` of the pass kernels for K classes, P pixels, NN neighbours."""
    if interp:  # few, large programs: the whole neighbourhood in one gather, the whole map in one tile if it fits
        block_k, block_n = _next_pow2(k), _next_pow2(nn)
        block_p = max(16, _next_pow2(p))
        hoist = fused and block_p * block_k * block_n <= _INTERP_HOIST_ELEMS
        if not hoist:
            block_p = max(16, min(block_p, _INTERP_TILE_ELEMS // (block_k * block_n)))
        return block_k, block_p, block_n, hoist
    if fused:
        return min(_next_pow2(k), 4), max(16, min(_next_pow2(p), 256)), 4, False
    return min(_next_pow2(k), 8), 128, 4, False


def random_walk_forward(cam: Tensor, aff: Tensor, beta: float, steps: int, fused: bool | None = None) -> Tensor:
    """``cam_vec @ T^steps`` by ``steps`` local passes (fp32 state), never a dense ``N x N`` matrix.

    Args:
        cam: ``[B, K, h, w]``.  aff: ``[B, D, h, w]`` (offsets of ``affinity_offsets(r)``, r inferred from D).
        beta: power applied to the affinities (> 0).  steps: number of passes (>= 0).
        fused: every pass in one launch (True) or one launch per pass (False); None picks by map size.

    Returns:
        ``[B, K, h, w]`` in the dtype of ``cam``, contiguous.
    """
    if cam.dtype == torch.float64:
        return random_walk_local(cam, aff, beta, steps)
    bsz, k, h, w = cam.shape
    p = h * w
    if steps == 0 or cam.numel() == 0:
        return cam.clone(memory_format=torch.contiguous_format)
    d = aff.shape[1]
    radius = _ref.radius_from_offsets(d)
    _, _, rk = _kernels()
    interp = cam.device.type != "cuda"
    dev = cam.device
    offs = _offsets_tensor(radius, dev)
    int64 = _needs_int64(2 * bsz * k * p, bsz * 2 * d * p * 2, _extent(aff))

    wts = torch.empty(bsz, 2 * d, p, dtype=torch.float32, device=dev)
    beta = float(beta)
    beta_int = beta.is_integer()
    if interp:
        wd, wp = max(2, min(_next_pow2(d), 64)), max(16, min(_next_pow2(p), 1024))
    else:
        wd, wp = max(2, min(_next_pow2(d), 16)), 128
    npb_w = _cdiv(p, wp)
    rk.rw_weights_kernel[(bsz * npb_w,)](
        aff, offs, wts, beta,
        h, w, d, npb_w,
        *aff.stride(),
        BETA_INT=beta_int, BETA_ODD=beta_int and int(beta) % 2 == 1, BLOCK_D=wd, BLOCK_P=wp, INT64=int64,
        num_warps=4,
    )

    state = torch.empty(2, bsz, k, p, dtype=torch.float32, device=dev)
    state[0].copy_(cam.reshape(bsz, k, p))
    nb = _neighbours_tensor(radius, dev)
    nn = 2 * d
    if fused is None:
        fused = interp or p <= FUSED_WALK_MAX_PIXELS
    block_k, block_p, block_n, hoist = _walk_blocks(k, p, nn, interp, fused)
    nkb = _cdiv(k, block_k)
    if fused:
        rk.rw_fused_kernel[(bsz * nkb,)](
            state, wts, nb, steps,
            bsz * k * p, k, h, w, nn, nkb,
            BLOCK_K=block_k, BLOCK_P=block_p, BLOCK_N=block_n, HOIST=hoist, INT64=int64, num_warps=4,
        )
    else:
        npb = _cdiv(p, block_p)
        grid = (bsz * nkb * npb,)
        for s in range(steps):
            rk.rw_step_kernel[grid](
                state[s % 2], state[(s + 1) % 2], wts, nb,
                k, h, w, nn, npb, nkb,
                BLOCK_K=block_k, BLOCK_P=block_p, BLOCK_N=block_n, INT64=int64, num_warps=4,
            )
    out = state[steps % 2].reshape(bsz, k, h, w)
    return out.clone() if cam.dtype == torch.float32 else out.to(cam.dtype)
