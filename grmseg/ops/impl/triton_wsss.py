"""Triton launch policy for the WSSS kernels: cam, local_affinity, boundary_affinity, random_walk.

The kernels live in ``grmseg.triton.cam``, ``grmseg.triton.affinity`` and ``grmseg.triton.random_walk``; this
module picks grids and block sizes and is meant to be imported by the Triton backend ``grmseg.ops.impl.triton``
(``WSSS_KERNELS`` names the functions it adds to that backend). The functions follow the backend contract of
``grmseg.ops._backends``: validated inputs (any strides), contiguous outputs in the input dtype.

Availability is the Triton backend's: CUDA tensors, and CPU tensors under the interpreter (``TRITON_INTERPRET=1``),
where every program instance is expensive, so the blocks are large and the programs few. Launches go through
``grmseg.ops.impl.triton_launch`` (one fixed config each: the cam and walk buffers depend on the block sizes),
so ``tests/test_gpu_compile.py`` compiles exactly the configs used here for sm_80 and sm_90 and checks that they
fit (no spill, shared memory within the limit).

Numerics: fp32 accumulation and fp32 random-walk state for every dtype. Fallbacks (same math): float64 inputs and
empty tensors go to ``grmseg.reference``, except ``random_walk``, whose float64 path is the local PyTorch walk
``grmseg.ops.impl.local_walk`` (the reference builds a dense ``N x N`` matrix).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from grmseg import reference as _ref
from grmseg.ops.impl import triton_launch as _tl
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
#: ``tl.dot`` input precision for fp32 cam operands on a GPU: exact fp32 FMA ("ieee"), as the GRM kernels (the
#: 3xTF32 split triples the operand registers).
FP32_PRECISION = "ieee"
#: On a GPU, maps with at most this many pixels run every random-walk step in one launch (one program per
#: (image, class) walks the whole map); larger maps get one launch per step, with enough pixel blocks that every
#: SM has work (at least ``_WALK_PROGRAMS_PER_SM`` programs per SM).
FUSED_WALK_MAX_PIXELS = 1024
_WALK_PROGRAMS_PER_SM = 4
_INT32_MAX = 2**31 - 1
#: Interpreter: the largest [BLOCK_N, BLOCK_K, BLOCK_P] gather of the hoisted fused walk, and of other tiles.
_INTERP_HOIST_ELEMS = 2**22
_INTERP_TILE_ELEMS = 2**18


_CAM = "grmseg.triton.cam"
_AFFINITY = "grmseg.triton.affinity"
_WALK = "grmseg.triton.random_walk"


def _launch(module: str, kernel: str, grid: tuple[int, ...], args: tuple, config: dict, device: torch.device) -> None:
    """One launch of ``module.kernel`` with one fixed ``config`` (constexprs, num_warps, num_stages)."""
    _tl.launch(module, kernel, lambda _: grid, args, {}, [config], _tl.target_of(device), key=())


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
    target = _tl.target_of(feat.device)
    interp = target.interpreter
    if interp:
        block_p = max(16, min(_next_pow2(p), 1024))
        block_c = max(16, min(_next_pow2(c), 128))
        block_k = max(16, min(_next_pow2(k), 128))
        num_warps = 4
    else:
        block_p, block_c, block_k, num_warps = _cam_tile(k, feat.dtype)
    npb, nkb = _cdiv(p, block_p), _cdiv(k, block_k)
    raw = torch.empty(bsz, k, h, w, dtype=torch.float32, device=feat.device)
    pmax = torch.empty(bsz, npb, k, dtype=torch.float32, device=feat.device)
    out = raw if feat.dtype == torch.float32 else torch.empty(bsz, k, h, w, dtype=feat.dtype, device=feat.device)
    int64 = _needs_int64(_extent(feat), raw.numel())
    grid = (bsz * npb * nkb,)
    stages = 2 if feat.dtype != torch.float32 else 1
    _launch(_CAM, "cam_project_kernel", grid,
            (feat, weight, raw, pmax, c, w, p, k, npb, nkb, *feat.stride(), *weight.stride()),
            {"BLOCK_K": block_k, "BLOCK_C": block_c, "BLOCK_P": block_p,
             "UPCAST": interp and feat.dtype == torch.bfloat16, "PRECISION": "ieee" if interp else FP32_PRECISION,
             "INT64": int64, "num_warps": num_warps, "num_stages": 1 if interp else stages}, feat.device)
    if labels is not None:
        keep = (labels != 0).to(torch.float32).contiguous()
    else:
        keep = pmax  # unused (HAS_LABELS=False)
    block_n = max(16, min(_next_pow2(npb), 64))
    _launch(_CAM, "cam_normalise_kernel", grid, (raw, pmax, keep, out, p, k, npb, nkb, _ref.CAM_EPS),
            {"HAS_LABELS": labels is not None, "BLOCK_K": block_k, "BLOCK_P": block_p, "BLOCK_N": block_n,
             "INT64": int64, "num_warps": num_warps, "num_stages": 1}, feat.device)
    return out


def _cam_tile(k: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """``(BLOCK_P, BLOCK_C, BLOCK_K, num_warps)`` of the cam projection on a GPU: 128 pixels x up to 64 classes
    per program, 32-channel chunks (fp32: exact FMA dots, 64 pixels so the fp32 tiles fit the registers)."""
    block_k = max(16, min(_next_pow2(k), 64))
    if dtype == torch.float32:
        return 64, 32, block_k, 4
    return 128, 32, block_k, 4


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
    p = h * w
    block_d, block_p, num_warps = _affinity_blocks(d, p, _tl.target_of(feat.device).interpreter)
    npb, ndb = _cdiv(p, block_p), _cdiv(d, block_d)
    out = torch.empty(bsz, d, h, w, dtype=feat.dtype, device=feat.device)
    _launch(_AFFINITY, "local_affinity_kernel", (bsz * npb * ndb,),
            (feat, _offsets_tensor(radius, feat.device), out, c, h, w, d, npb, ndb, *feat.stride()),
            {"BLOCK_D": block_d, "BLOCK_P": block_p, "INT64": _needs_int64(_extent(feat), out.numel()),
             "num_warps": num_warps, "num_stages": 1}, feat.device)
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
    p = h * w
    block_d, block_p, num_warps = _affinity_blocks(d, p, _tl.target_of(boundary.device).interpreter)
    npb, ndb = _cdiv(p, block_p), _cdiv(d, block_d)
    paths, length = _paths_tensor(radius, boundary.device)
    out = torch.empty(bsz, d, h, w, dtype=boundary.dtype, device=boundary.device)
    sb, _, sh, sw = boundary.stride()
    _launch(_AFFINITY, "boundary_affinity_kernel", (bsz * npb * ndb,),
            (boundary, _offsets_tensor(radius, boundary.device), paths, out, h, w, d, length, npb, ndb, sb, sh, sw),
            {"BLOCK_D": block_d, "BLOCK_P": block_p, "INT64": _needs_int64(_extent(boundary), out.numel()),
             "num_warps": num_warps, "num_stages": 1}, boundary.device)
    return out


# ---------------------------------------------------------------------------------------------- random walk
def _walk_blocks(bsz: int, k: int, p: int, nn: int, target: _tl.Target, fused: bool) -> tuple[int, int, int, bool]:
    """``(BLOCK_K, BLOCK_P, BLOCK_N, HOIST)`` of the pass kernels for B images, K classes, P pixels, NN neighbours.

    Interpreter: few, large programs (the whole neighbourhood in one gather, the whole map in one tile if it fits).
    GPU, fused (small maps): a program per (image, class) walks the map in 256-pixel tiles, so B K programs run.
    GPU, one launch per pass: 4 classes x BLOCK_P pixels per program, BLOCK_P the largest of 128, 64, 32 that
    still gives ``_WALK_PROGRAMS_PER_SM`` programs per SM (a 64 x 64 map of 21 classes: 32 pixels, 768 programs).
    """
    if target.interpreter:
        block_k, block_n = _next_pow2(k), _next_pow2(nn)
        block_p = max(16, _next_pow2(p))
        hoist = fused and block_p * block_k * block_n <= _INTERP_HOIST_ELEMS
        if not hoist:
            block_p = max(16, min(block_p, _INTERP_TILE_ELEMS // (block_k * block_n)))
        return block_k, block_p, block_n, hoist
    if fused:
        return 1, max(16, min(_next_pow2(p), 256)), 4, False
    block_k = min(_next_pow2(k), 4)
    programs = bsz * _cdiv(k, block_k)
    block_p = 128
    while block_p > 32 and programs * _cdiv(p, block_p) < _WALK_PROGRAMS_PER_SM * target.sms:
        block_p //= 2
    return block_k, block_p, 4, False


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
    dev = cam.device
    target = _tl.target_of(dev)
    interp = target.interpreter
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
    _launch(_WALK, "rw_weights_kernel", (bsz * npb_w,), (aff, offs, wts, beta, h, w, d, npb_w, *aff.stride()),
            {"BETA_INT": beta_int, "BETA_ODD": beta_int and int(beta) % 2 == 1, "BLOCK_D": wd, "BLOCK_P": wp,
             "INT64": int64, "num_warps": 4, "num_stages": 1}, dev)

    state = torch.empty(2, bsz, k, p, dtype=torch.float32, device=dev)
    state[0].copy_(cam.reshape(bsz, k, p))
    nb = _neighbours_tensor(radius, dev)
    nn = 2 * d
    if fused is None:
        fused = interp or p <= FUSED_WALK_MAX_PIXELS
    block_k, block_p, block_n, hoist = _walk_blocks(bsz, k, p, nn, target, fused)
    nkb = _cdiv(k, block_k)
    if fused:
        _launch(_WALK, "rw_fused_kernel", (bsz * nkb,), (state, wts, nb, steps, bsz * k * p, k, h, w, nn, nkb),
                {"BLOCK_K": block_k, "BLOCK_P": block_p, "BLOCK_N": block_n, "HOIST": hoist, "INT64": int64,
                 "num_warps": 4, "num_stages": 1}, dev)
    else:
        npb = _cdiv(p, block_p)
        grid = (bsz * nkb * npb,)
        config = {"BLOCK_K": block_k, "BLOCK_P": block_p, "BLOCK_N": block_n, "INT64": int64, "num_warps": 4,
                  "num_stages": 1}
        run = _tl.launcher(_WALK, "rw_step_kernel", config, target)
        bufs = (state[0], state[1])
        for s in range(steps):
            run(grid, bufs[s % 2], bufs[(s + 1) % 2], wts, nb, k, h, w, nn, npb, nkb)
            if _tl.is_recording():
                break  # every pass is the same launch
    out = state[steps % 2].reshape(bsz, k, h, w)
    return out.clone() if cam.dtype == torch.float32 else out.to(cam.dtype)
