"""The Triton backend: launch policy for the kernels in ``grmseg.triton`` (see ``grmseg.ops._backends``).

Everything that is policy lives here, not in the kernel files: grids, block sizes, the configs a launch may
pick (``*_configs``: the autotune list on CUDA, whose first entry is the fixed choice without autotuning; the
interpreter's own large blocks on CPU), how the pixel axis is split across programs, and the final
deterministic reductions of the per-program fp32 partial sums (``torch.sum`` over the split axis: a fixed
order, no atomics). How a launch happens (autotune, fixed choice with fallback, recording for the compile
checks) is ``grmseg.ops.impl.triton_launch``.

Fitting the hardware: a program's tiles live in registers (255 per thread at most) and its pipelined loads and
layout conversions in shared memory (232448 B per block on sm_90, 166912 B on sm_80). The tile shapes of the
``_*_TILES`` tables are the ones that compile without a spill for sm_80 and sm_90 (``tests/test_gpu_compile.py``
compiles every config these functions return, with Triton's real compiler, and fails on a spill or on shared
memory over the limit); ``_*_smem`` estimates a config's shared memory (an upper bound, which the compile test
also checks) and prunes the configs that do not fit the target GPU.

Availability: CUDA tensors whenever triton imports; CPU tensors only under Triton's interpreter
(``TRITON_INTERPRET=1``, set before the first kernel runs; the tests set it when no GPU is visible).

Numerics: fp32 accumulation for every dtype; fp16/bf16 ``tl.dot`` operands stay half on a GPU (the softmax
weights are rounded to the input dtype before the second product, as a same-dtype PyTorch computation does);
fp32 products are exact fp32 FMAs (``FP32_PRECISION = "ieee"``): the 3xTF32 split ("tf32x3") triples the
operand registers, and every fp32 backward tile spilled with it. Outputs come back in the dtype of the matching input.
Fallbacks to ``grmseg.reference`` (same math, so results stay correct): float64 inputs (the kernels have no
fp64 path; ``gradcheck`` then checks the reference formulas), more than ``MAX_K`` nodes, and empty tensors.
Under the interpreter bf16 ``tl.dot`` is wrong, so bf16 operands are cast to fp32 first (``UPCAST``).

Environment: ``GRMSEG_TRITON_AUTOTUNE=0`` turns autotuning off on CUDA (fixed default config).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor

from grmseg import reference as _ref
from grmseg.ops.impl import triton_launch as _tl
from grmseg.ops.impl.triton_launch import Target

NAME = "triton"

#: The largest number of nodes the kernels take (the node axis lives in one block of registers).
MAX_K = 128
#: ``tl.dot`` input precision for fp32 operands on a GPU: "ieee" (exact fp32 FMA) fits the registers; "tf32x3"
#: (~fp32 on the tensor cores) needs three operand copies and spilled at every backward tile; plain "tf32" is not
#: accurate enough for the fp32 tolerance (1e-4).
FP32_PRECISION = "ieee"
#: Pixels per split are a multiple of this (the largest BLOCK_P), so only the last tile of a split is partial.
_SPLIT_ALIGN = 128
#: A split covers at least this many pixels: fewer splits mean fewer fp32 partials to write and sum.
_MIN_PIXELS_PER_SPLIT = 256
_INT32_MAX = 2**31 - 1
_ACTIVATION_CODE = {"none": 0, "relu": 1, "leaky_relu": 2}
_KERNELS = frozenset(
    {
        "grm_project_forward",
        "grm_project_backward",
        "grm_reproject_forward",
        "grm_reproject_backward",
        "graph_conv_forward",
        "graph_conv_backward",
    }
)


# ------------------------------------------------------------------------------------------- availability
@functools.cache
def _load() -> tuple[ModuleType | None, ModuleType | None, str]:
    """``(triton, grmseg.triton, "")`` or ``(None, None, why)``; imported on first use, not at module import."""
    try:
        import triton

        import grmseg.triton as kernels_module
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken triton install raising at import
        return None, None, f"triton does not import: {exc}"
    return triton, kernels_module, ""


def _interpreting() -> bool:
    return _tl.interpreting()


def status(device_type: str) -> tuple[bool, str]:
    """CUDA: available when triton imports. CPU: only under Triton's interpreter (``TRITON_INTERPRET=1``)."""
    _, _, why = _load()
    if why:
        return False, why
    if device_type == "cuda":
        return True, ""
    if device_type == "cpu":
        if _interpreting():
            return True, ""
        return False, "Triton runs on CUDA tensors; set TRITON_INTERPRET=1 to run its interpreter on CPU tensors"
    return False, f"Triton does not run on {device_type} tensors"


def kernels(device_type: str) -> frozenset[str]:
    """The six GRM kernels (projection, reprojection, graph convolution; forward and backward), plus the WSSS
    kernels of ``grmseg.ops.impl.triton_wsss`` and the dense CRF of ``grmseg.ops.impl.triton_crf`` when those
    modules import."""
    return _KERNELS | _WSSS_KERNELS | _CRF_KERNELS if device_type in ("cpu", "cuda") else frozenset()


def _adopt(module: str, names: str) -> frozenset[str]:
    """Expose the kernels that the launch policy module ``grmseg.ops.impl.<module>`` lists in ``<names>`` (none when
    the module does not import)."""
    try:
        mod = importlib.import_module(f"grmseg.ops.impl.{module}")
    except ImportError:  # not part of this build
        return frozenset()
    adopted = frozenset(getattr(mod, names))
    for name in adopted:
        globals()[name] = getattr(mod, name)
    return adopted


# The WSSS kernels (cam, affinities, random walk) and the dense CRF have their own launch policy modules.
_WSSS_KERNELS = _adopt("triton_wsss", "WSSS_KERNELS")
_CRF_KERNELS = _adopt("triton_crf", "CRF_KERNELS")


# ------------------------------------------------------------------------------------------------ policy
def _next_pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def _block_k(k: int) -> int:
    """The node axis padded to a power of two >= 16 (the smallest ``tl.dot`` dimension)."""
    return max(16, _next_pow2(k))


def _needs_int64(*tensors: Tensor) -> bool:
    """Whether an element offset inside one of ``tensors`` (or a contiguous output like it) can pass 2**31 - 1."""
    for t in tensors:
        if t.numel() > _INT32_MAX:
            return True
        if sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride(), strict=True)) > _INT32_MAX:
            return True
    return False


def _fallback(*tensors: Tensor | None, k: int) -> bool:
    """Cases the kernels leave to the reference: float64, K > MAX_K, empty tensors."""
    present = [t for t in tensors if t is not None]
    return k > MAX_K or any(t.dtype == torch.float64 or t.numel() == 0 for t in present)


def _common(t: Tensor, target: Target) -> dict:
    """Constexprs every launch takes: UPCAST (bf16 dots under the interpreter) and the fp32 dot precision."""
    return {
        "UPCAST": target.interpreter and t.dtype == torch.bfloat16,
        "PRECISION": "ieee" if target.interpreter else FP32_PRECISION,
    }


def _splits(batch: int, pixels: int, device: torch.device) -> tuple[int, int]:
    """``(num_splits, pixels_per_split)``: enough programs to fill the GPU, few enough partial sums."""
    target = _tl.target_of(device)
    if target.interpreter:
        return 1, pixels  # the interpreter: one program per batch (and channel block) walks every tile
    want = -(-2 * target.sms // batch)
    most = max(1, pixels // _MIN_PIXELS_PER_SPLIT)
    per = -(-pixels // max(1, min(want, most)))
    per = -(-per // _SPLIT_ALIGN) * _SPLIT_ALIGN
    return -(-pixels // per), per


def _half(dtype: torch.dtype) -> bool:
    return dtype in (torch.float16, torch.bfloat16)


def _size_class(block_k: int) -> int:
    """The tile table a node block uses: 32 (up to 32 nodes) or 128 (33 to 128 nodes)."""
    return 32 if block_k <= 32 else 128


def _arch_class(target: Target) -> int:
    """The tile table of a GPU: 90 (Hopper and newer: its dots keep fewer registers live) or 80."""
    return 90 if target.arch >= 90 else 80


# Pixel kernels (grm_project forward/backward, grm_reproject backward): (BLOCK_CO, BLOCK_P, num_warps), best
# first; BLOCK_CO = 0 is FUSED (the block covers every channel, x loaded once per tile), allowed up to the
# channel count given as the fourth entry. Keys: (kernel, "half" | "fp32", node table, arch table). fp16/bf16
# tiles run with 2 pipeline stages and 64-channel logit chunks (32 for more than 32 nodes); fp32 tiles (exact
# FMA dots) with 1 stage and 32-channel chunks. Every entry was measured (Triton 3.6 and 3.8, maxnreg 255) at
# no more than ~230 of the 255 registers a thread has, so none spills; tests/test_gpu_compile.py keeps it so.
_PIXEL_TILES: dict[tuple[str, str, int, int], tuple[tuple[int, ...], ...]] = {
    ("project_fwd", "half", 32, 90): ((0, 32, 8, 512), (256, 64, 8), (128, 128, 8), (256, 32, 8)),
    ("project_fwd", "half", 128, 90): ((128, 64, 8), (128, 32, 8), (64, 64, 8), (64, 128, 8)),
    ("project_fwd", "half", 32, 80): ((0, 32, 8, 512), (256, 32, 8), (128, 64, 8), (64, 128, 8)),
    ("project_fwd", "half", 128, 80): ((128, 32, 8), (64, 64, 8), (64, 32, 8), (32, 64, 8)),
    ("project_bwd", "half", 32, 90): ((128, 64, 8), (64, 64, 8), (64, 32, 8)),
    ("project_bwd", "half", 128, 90): ((128, 32, 8), (64, 32, 8), (32, 64, 8), (32, 32, 8)),
    ("project_bwd", "half", 32, 80): ((64, 32, 8), (32, 64, 8), (32, 32, 8)),
    ("project_bwd", "half", 128, 80): ((32, 32, 8), (32, 64, 8)),
    ("reproject_bwd", "half", 32, 90): ((64, 64, 8), (64, 32, 8), (128, 32, 8), (32, 32, 8)),
    ("reproject_bwd", "half", 128, 90): ((64, 32, 8), (32, 32, 8), (32, 64, 8)),
    ("reproject_bwd", "half", 32, 80): ((64, 32, 8), (32, 32, 8), (32, 64, 8)),
    ("reproject_bwd", "half", 128, 80): ((32, 32, 8), (32, 16, 8)),
    ("project_fwd", "fp32", 32, 90): ((64, 32, 8), (64, 32, 4), (32, 32, 4)),
    ("project_fwd", "fp32", 128, 90): ((32, 32, 8), (64, 16, 8), (32, 32, 4)),
    ("project_bwd", "fp32", 32, 90): ((32, 32, 8), (64, 16, 8), (32, 16, 8)),
    ("project_bwd", "fp32", 128, 90): ((32, 16, 8), (16, 32, 8), (16, 16, 8)),
    ("reproject_bwd", "fp32", 32, 90): ((64, 32, 8), (32, 32, 8), (64, 16, 8)),
    ("reproject_bwd", "fp32", 128, 90): ((16, 16, 8),),
    ("reproject_bwd", "fp32", 128, 80): ((32, 32, 8), (16, 16, 8)),
}
for _key in [k for k in _PIXEL_TILES if k[1] == "fp32" and k[3] == 90]:  # the fp32 FMA tiles: sm_80 as sm_90
    _PIXEL_TILES.setdefault((*_key[:3], 80), _PIXEL_TILES[_key])
# grm_reproject forward: (BLOCK_P, BLOCK_C, num_warps), BLOCK_C = 0 is FUSED up to the fourth entry's channels.
_REPROJECT_FWD_TILES: dict[tuple[str, int], tuple[tuple[int, ...], ...]] = {
    ("half", 32): ((32, 0, 8, 512), (128, 64, 8), (64, 64, 8), (64, 0, 8, 256)),
    ("half", 128): ((128, 32, 8), (64, 64, 8), (64, 32, 8)),
    ("fp32", 32): ((64, 32, 8), (32, 32, 8), (32, 32, 4)),
    ("fp32", 128): ((64, 32, 8), (32, 32, 8), (16, 32, 4)),
}
#: Accumulator blocks ``[BLOCK_K, BLOCK_CO]`` per pixel kernel (stored through shared memory at the end).
_PIXEL_ACCUMULATORS = {"project_fwd": 1, "project_bwd": 1, "reproject_bwd": 2}
#: Operand chunks the logit loop loads per channel chunk: (node-side [BLOCK_K, BLOCK_C], pixel-side
#: [BLOCK_C, BLOCK_P]) tiles.
_PIXEL_CHUNKS = {"project_fwd": (1, 1), "project_bwd": (2, 1), "reproject_bwd": (2, 2)}
#: The epilogue's dot operands per tile, in elements: ([BLOCK_K, BLOCK_P] tiles, [BLOCK_CO, BLOCK_P] tiles,
#: [BLOCK_CO, BLOCK_K] tiles).
_PIXEL_EPILOGUE = {"project_fwd": (1, 1, 0), "project_bwd": (2, 1, 2), "reproject_bwd": (2, 2, 1)}


def _fitting(configs: list[dict], smem: Callable[[dict], int], target: Target) -> list[dict]:
    """The configs whose shared-memory estimate fits the target, in order; when none does (a GPU with less shared
    memory than the tables were made for, such as sm_86's 101376 B), the one of the smallest estimate: the
    estimates are upper bounds, and the fixed choice falls back further if the GPU refuses it."""
    fit = [cfg for cfg in configs if smem(cfg) <= target.smem]
    return fit or [min(configs, key=smem)]


def _stages(dtype: torch.dtype) -> int:
    return 2 if _half(dtype) else 1


def _chunk(block_k: int, dtype: torch.dtype) -> int:
    return 64 if _half(dtype) and block_k <= 32 else 32


def _pixel_smem(kind: str, cfg: dict, block_k: int, esize: int) -> int:
    """Upper bound of a split-kernel config's shared memory (bytes), as if nothing were reused: the pipelined
    operand chunks of the logit loop (FUSED: the whole-channel tiles, loaded once), the epilogue's dot operands,
    the softmax reductions over K and the final stores of the fp32 accumulators (their layout conversion)."""
    co, bp, bc, stages = cfg["BLOCK_CO"], cfg["BLOCK_P"], cfg["BLOCK_C"], cfg["num_stages"]
    node, pix = _PIXEL_CHUNKS[kind]
    if cfg["FUSED"]:
        chunks = (pix * co * bp + node * block_k * co) * esize
    else:
        chunks = stages * (node * block_k * bc + pix * bc * bp) * esize
    kp, cp, ck = _PIXEL_EPILOGUE[kind]
    epilogue = (kp * block_k * bp + cp * co * bp + ck * co * block_k) * esize
    return chunks + epilogue + block_k * bp * 4 + _PIXEL_ACCUMULATORS[kind] * block_k * co * 4


def _dtype_class(dtype: torch.dtype) -> str:
    return "half" if _half(dtype) else "fp32"


def _pixel_configs(kind: str, block_k: int, channels: int, dtype: torch.dtype, target: Target) -> list[dict]:
    """Configs of a split kernel (``kind``: "project_fwd", "project_bwd", "reproject_bwd"), best first: the
    table's tiles for this dtype, node count and GPU that cover the channels (FUSED) and fit the target's shared
    memory. Under the interpreter: one config, large blocks (each program instance costs ~1 ms there)."""
    c_pow2 = max(16, _next_pow2(channels))
    if target.interpreter:
        fused = c_pow2 <= 256
        return [{"BLOCK_P": 128, "BLOCK_C": 64, "BLOCK_CO": c_pow2 if fused else 256, "FUSED": fused,
                 "num_warps": 4, "num_stages": 1}]
    esize = torch.empty((), dtype=dtype).element_size()
    out = []
    table = _PIXEL_TILES[(kind, _dtype_class(dtype), _size_class(block_k), _arch_class(target))]
    for tile in table:
        co, bp, warps = tile[:3]
        fused = co == 0
        if fused and c_pow2 > tile[3]:
            continue
        cfg = {"BLOCK_CO": c_pow2 if fused else min(co, c_pow2), "BLOCK_P": bp,
               "BLOCK_C": _chunk(block_k, dtype), "FUSED": fused, "num_warps": warps,
               "num_stages": _stages(dtype)}
        if cfg not in out:
            out.append(cfg)
    return _fitting(out, lambda cfg: _pixel_smem(kind, cfg, block_k, esize), target)


def _reproject_fwd_smem(cfg: dict, block_k: int, esize: int) -> int:
    """Upper bound of a reprojection-forward config's shared memory (bytes), as :func:`_pixel_smem`: the two
    channel loops' operand chunks (x and q, then x and v; FUSED: loaded once), the softmax weights as a dot
    operand and the reductions over K."""
    bp, bc, stages = cfg["BLOCK_P"], cfg["BLOCK_C"], cfg["num_stages"]
    per_chunk = (block_k * bc + bc * bp) * esize
    chunks = (2 * per_chunk) if cfg["FUSED"] else 2 * stages * per_chunk
    return chunks + block_k * bp * (esize + 4) + bc * bp * 4


def _reproject_fwd_configs(block_k: int, channels: int, dtype: torch.dtype, target: Target) -> list[dict]:
    """Configs of the reprojection forward, best first: BLOCK_P pixels per program, BLOCK_C channels per chunk;
    ``FUSED`` ones take every channel in one chunk and load ``x`` once."""
    c_pow2 = max(16, _next_pow2(channels))
    if target.interpreter:
        fused = c_pow2 <= 256
        return [{"BLOCK_P": 128, "BLOCK_C": c_pow2 if fused else 64, "FUSED": fused, "num_warps": 4,
                 "num_stages": 1}]
    esize = torch.empty((), dtype=dtype).element_size()
    out = []
    for tile in _REPROJECT_FWD_TILES[(_dtype_class(dtype), _size_class(block_k))]:
        bp, bc, warps = tile[:3]
        fused = bc == 0
        if fused and c_pow2 > tile[3]:
            continue
        cfg = {"BLOCK_P": bp, "BLOCK_C": c_pow2 if fused else min(bc, c_pow2), "FUSED": fused,
               "num_warps": warps, "num_stages": _stages(dtype)}
        if cfg not in out:
            out.append(cfg)
    return _fitting(out, lambda cfg: _reproject_fwd_smem(cfg, block_k, esize), target)


# graph_conv: (output block, loop chunk, num_warps[, BLOCK_J]) per kernel and dtype class; the output block and
# loop chunk are the constexprs _GRAPH_NAMES gives. The node chunk BLOCK_J is 32 unless the entry says (16 for
# at most 16 nodes).
_GRAPH_TILES: dict[tuple[str, str], tuple[tuple[int, ...], ...]] = {
    ("fwd", "half"): ((64, 64, 8), (64, 32, 8), (128, 32, 8)),
    ("fwd", "fp32"): ((64, 32, 8), (32, 32, 8), (128, 32, 8)),
    ("bwd_pre", "half"): ((64, 0, 8), (32, 0, 8), (128, 0, 8)),
    ("bwd_pre", "fp32"): ((64, 0, 8), (32, 0, 8), (32, 0, 4)),
    ("bwd_adj", "half"): ((64, 64, 8), (64, 32, 8), (64, 32, 4)),  # one BLOCK_D: it sets the partials' shape
    ("bwd_adj", "fp32"): ((32, 32, 8), (32, 64, 8, 16), (32, 16, 8)),
    ("bwd_z", "half"): ((64, 32, 8), (128, 32, 8), (64, 64, 8)),
    ("bwd_z", "fp32"): ((64, 32, 8), (32, 32, 8)),
    ("bwd_w", "half"): ((64, 64, 8), (128, 32, 8), (64, 64, 4)),
    ("bwd_w", "fp32"): ((64, 64, 8), (64, 32, 8), (32, 64, 4)),
}
#: The constexprs each graph_conv kernel's table entries name: (output block, loop chunk or None).
_GRAPH_NAMES = {"fwd": ("BLOCK_D", "BLOCK_F"), "bwd_pre": ("BLOCK_D", None), "bwd_adj": ("BLOCK_D", "BLOCK_F"),
                "bwd_z": ("BLOCK_F", "BLOCK_D"), "bwd_w": ("BLOCK_F", "BLOCK_D")}


def _graph_smem(kind: str, cfg: dict, block_k: int, esize: int) -> int:
    """Upper bound of a graph_conv config's shared memory (bytes), as if nothing were reused: the pipelined
    operand chunks, the dot operands computed in registers and the fp32 output block's conversion."""
    bj, st = cfg.get("BLOCK_J", 32), cfg["num_stages"]
    bf, bd = cfg.get("BLOCK_F", 0), cfg.get("BLOCK_D", 0)
    if kind == "fwd":
        return st * (bj * bf + bf * bd) * esize + (block_k * bj + bj * bd) * esize + (block_k + bj) * bd * 4
    if kind == "bwd_pre":
        return st * (block_k * bj + 2 * bj * bd) * esize + (block_k * bj + bj * bd) * esize + block_k * bd * 4
    if kind == "bwd_adj":
        return (st * (bj * bf + bf * bd) * esize + (block_k * bd + bj * bd) * esize + block_k * bj * 4
                + bj * bd * 4)
    if kind == "bwd_z":
        return st * (block_k * bd * 4 + bd * bf * esize) + (block_k * bd + bd * bf) * esize + block_k * bf * 4
    return st * (bf * bj * esize + bj * bd * 4) + (bf * bj + bj * bd) * esize + bf * bd * 4


def _graph_configs(kind: str, block_k: int, dtype: torch.dtype, target: Target) -> list[dict]:
    """Configs of a graph_conv kernel (``kind``: "fwd", "bwd_pre", "bwd_adj", "bwd_z", "bwd_w"), best first."""
    chunked = kind != "bwd_z"
    if target.interpreter:  # one node chunk: fewer, larger operations
        first, second = _GRAPH_NAMES[kind]
        cfg = {first: 64, **({second: 64} if second else {}), "num_warps": 4, "num_stages": 1}
        return [{**cfg, "BLOCK_J": block_k} if chunked else cfg]
    esize = torch.empty((), dtype=dtype).element_size()
    first, second = _GRAPH_NAMES[kind]
    out = []
    for tile in _GRAPH_TILES[(kind, _dtype_class(dtype))]:
        blk, chunk, warps = tile[:3]
        cfg = {first: blk, **({second: chunk} if second else {}), "num_warps": warps, "num_stages": _stages(dtype)}
        if chunked:
            cfg["BLOCK_J"] = 16 if block_k <= 16 else (tile[3] if len(tile) > 3 else 32)
        if cfg not in out:
            out.append(cfg)
    return _fitting(out, lambda cfg: _graph_smem(kind, cfg, block_k, esize), target)


def _reduce(part: Tensor, dims: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Sum fp32 partials over ``dims`` in a fixed order (deterministic) and cast to ``dtype``."""
    if all(part.shape[d] == 1 for d in dims):
        return part.reshape([n for d, n in enumerate(part.shape) if d not in dims]).to(dtype)
    return part.sum(dims).to(dtype)


def _device_guard(t: Tensor) -> contextlib.AbstractContextManager:
    """Make ``t``'s GPU current while launching (Triton launches on the current device's current stream)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


_PROJECT = "grmseg.triton.grm_project"
_REPROJECT = "grmseg.triton.grm_reproject"
_GRAPH = "grmseg.triton.graph_conv"


def _launch_pixel(module: str, kernel: str, kind: str, x: Tensor, block_k: int, programs_per_cb: int,
                  args: tuple, consts: dict) -> None:
    """Launch a split kernel: grid (channel blocks x ``programs_per_cb``), configs of :func:`_pixel_configs`."""
    target = _tl.target_of(x.device)
    c, p = x.shape[1], x.shape[2]
    configs = _pixel_configs(kind, block_k, c, x.dtype, target)
    with _device_guard(x):
        _tl.launch(module, kernel, lambda m: (_cdiv(c, m["BLOCK_CO"]) * programs_per_cb,), args, consts, configs,
                   target, key=("C", "P", "K"), launch_key=(c, p, block_k, str(x.dtype)))


# ------------------------------------------------------------------------------------------- grm_project
def grm_project_forward(x: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel-to-node voting, see :func:`grmseg.reference.grm_project`.

    Args:
        x: ``[B, C, P]`` (any strides).  w: ``[K, C]``.  b: ``[K]``.  Same dtype and device.

    Returns:
        ``h [B, K, C]`` and ``m [B, K]``, contiguous, in the dtype of ``x``.
    """
    bsz, c, p = x.shape
    k = w.shape[0]
    if _fallback(x, w, b, k=k):
        return _ref.grm_project(x, w, b)
    splits, per = _splits(bsz, p, x.device)
    h_part = torch.empty(splits, bsz, k, c, device=x.device, dtype=torch.float32)
    m_part = torch.empty(splits, bsz, k, device=x.device, dtype=torch.float32)
    block_k = _block_k(k)
    args = (x, w, b, h_part, m_part, bsz, c, p, k, per, splits,
            x.stride(0), x.stride(1), x.stride(2), w.stride(0), w.stride(1), b.stride(0))
    consts = {"BLOCK_K": block_k, "INT64": _needs_int64(x), **_common(x, _tl.target_of(x.device))}
    _launch_pixel(_PROJECT, "grm_project_fwd_kernel", "project_fwd", x, block_k, splits * bsz, args, consts)
    return _reduce(h_part, (0,), x.dtype), _reduce(m_part, (0,), x.dtype)


def grm_project_backward(
    gh: Tensor, gm: Tensor, x: Tensor, w: Tensor, b: Tensor, gx_base: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`grm_project_forward`; the assignment is recomputed from ``x``, never stored.

    Args:
        gh: ``[B, K, C]``.  gm: ``[B, K]``.  x, w, b: the forward inputs.
        gx_base: ``[B, C, P]`` or None: added to ``gx`` (after the kernel).

    Returns:
        ``(gx [B, C, P], gw [K, C], gb [K])``, contiguous, in the dtypes of ``x``, ``w``, ``b``.
    """
    bsz, c, p = x.shape
    k = w.shape[0]
    if _fallback(gh, gm, x, w, b, k=k):
        return _ref.grm_project_backward(gh, gm, x, w, b, gx_base)
    splits, per = _splits(bsz, p, x.device)
    gx = torch.empty(bsz, c, p, device=x.device, dtype=x.dtype)
    gw_part = torch.empty(splits, bsz, k, c, device=x.device, dtype=torch.float32)
    gb_part = torch.empty(splits, bsz, k, device=x.device, dtype=torch.float32)
    block_k = _block_k(k)
    args = (gh, gm, x, w, b, gx, gw_part, gb_part, bsz, c, p, k, per, splits,
            gh.stride(0), gh.stride(1), gh.stride(2), gm.stride(0), gm.stride(1),
            x.stride(0), x.stride(1), x.stride(2), w.stride(0), w.stride(1), b.stride(0))
    consts = {"BLOCK_K": block_k, "INT64": _needs_int64(x, gx), **_common(x, _tl.target_of(x.device))}
    _launch_pixel(_PROJECT, "grm_project_bwd_kernel", "project_bwd", x, block_k, splits * bsz, args, consts)
    if gx_base is not None:
        gx = gx.add_(gx_base)
    return gx, _reduce(gw_part, (0, 1), w.dtype), _reduce(gb_part, (0, 1), b.dtype)


# ----------------------------------------------------------------------------------------- grm_reproject
def grm_reproject_forward(x: Tensor, q: Tensor, v: Tensor) -> Tensor:
    """Node-to-pixel mapping with the residual, see :func:`grmseg.reference.grm_reproject`.

    Args:
        x: ``[B, C, P]``.  q, v: ``[B, K, C]``.  Same dtype and device.

    Returns:
        ``y [B, C, P]``, contiguous, in the dtype of ``x``.
    """
    bsz, c, p = x.shape
    k = q.shape[1]
    if _fallback(x, q, v, k=k):
        return _ref.grm_reproject(x, q, v)
    target = _tl.target_of(x.device)
    y = torch.empty(bsz, c, p, device=x.device, dtype=x.dtype)
    block_k = _block_k(k)
    consts = {"BLOCK_K": block_k, "INT64": _needs_int64(x, y), **_common(x, target)}
    args = (x, q, v, y, c, p, k, x.stride(0), x.stride(1), x.stride(2), q.stride(0), q.stride(1), q.stride(2),
            v.stride(0), v.stride(1), v.stride(2))
    configs = _reproject_fwd_configs(block_k, c, x.dtype, target)
    with _device_guard(x):
        _tl.launch(_REPROJECT, "grm_reproject_fwd_kernel", lambda m: (_cdiv(p, m["BLOCK_P"]) * bsz,), args, consts,
                   configs, target, key=("C", "P", "K"), launch_key=(c, p, block_k, str(x.dtype)))
    return y


def grm_reproject_backward(gy: Tensor, x: Tensor, q: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`grm_reproject_forward`; the assignment is recomputed from ``x``, never stored.

    Args:
        gy: ``[B, C, P]``.  x, q, v: the forward inputs.

    Returns:
        ``(gx [B, C, P], gq [B, K, C], gv [B, K, C])``, contiguous, in the dtypes of ``x``, ``q``, ``v``.
    """
    bsz, c, p = x.shape
    k = q.shape[1]
    if _fallback(gy, x, q, v, k=k):
        return _ref.grm_reproject_backward(gy, x, q, v)
    splits, per = _splits(bsz, p, x.device)
    gx = torch.empty(bsz, c, p, device=x.device, dtype=x.dtype)
    gq_part = torch.empty(splits, bsz, k, c, device=x.device, dtype=torch.float32)
    gv_part = torch.empty(splits, bsz, k, c, device=x.device, dtype=torch.float32)
    block_k = _block_k(k)
    args = (gy, x, q, v, gx, gq_part, gv_part, bsz, c, p, k, per, splits,
            gy.stride(0), gy.stride(1), gy.stride(2), x.stride(0), x.stride(1), x.stride(2),
            q.stride(0), q.stride(1), q.stride(2), v.stride(0), v.stride(1), v.stride(2))
    consts = {"BLOCK_K": block_k, "INT64": _needs_int64(x, gy, gx), **_common(x, _tl.target_of(x.device))}
    _launch_pixel(_REPROJECT, "grm_reproject_bwd_kernel", "reproject_bwd", x, block_k, splits * bsz, args, consts)
    return gx, _reduce(gq_part, (0,), q.dtype), _reduce(gv_part, (0,), v.dtype)


# -------------------------------------------------------------------------------------------- graph_conv
def graph_conv_forward(z: Tensor, adj: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> Tensor:
    """One GCN layer ``act(adj (z weight) + bias)``, see :func:`grmseg.reference.graph_conv`.

    Args:
        z: ``[B, K, F]``.  adj: ``[K, K]``.  weight: ``[F, D]``.  bias: ``[D]`` or None.
        activation: ``"relu"``, ``"leaky_relu"`` (slope 0.2) or ``"none"``.

    Returns:
        ``[B, K, D]``, contiguous, in the dtype of ``z``.
    """
    bsz, k, f = z.shape
    d = weight.shape[1]
    if _fallback(z, adj, weight, bias, k=k) or activation not in _ACTIVATION_CODE:
        return _ref.graph_conv(z, adj, weight, bias, activation)
    target = _tl.target_of(z.device)
    out = torch.empty(bsz, k, d, device=z.device, dtype=z.dtype)
    block_k = _block_k(k)
    has_bias = bias is not None
    bias_arg = bias if has_bias else weight
    args = (z, adj, weight, bias_arg, out, k, f, d,
            z.stride(0), z.stride(1), z.stride(2), adj.stride(0), adj.stride(1),
            weight.stride(0), weight.stride(1), bias.stride(0) if has_bias else 0)
    consts = {"HAS_BIAS": has_bias, "ACTIVATION": _ACTIVATION_CODE[activation], "BLOCK_K": block_k,
              **_common(z, target)}
    configs = _graph_configs("fwd", block_k, z.dtype, target)
    with _device_guard(z):
        _tl.launch(_GRAPH, "graph_conv_fwd_kernel", lambda m: (_cdiv(d, m["BLOCK_D"]) * bsz,), args, consts,
                   configs, target, key=("K", "F", "D"), launch_key=(k, f, d, str(z.dtype)))
    return out


def graph_conv_backward(
    gout: Tensor,
    out: Tensor,
    z: Tensor,
    adj: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    activation: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Gradients of :func:`graph_conv_forward`; ``out`` (the forward output) gives the activation mask.

    Args:
        gout, out: ``[B, K, D]``.  z: ``[B, K, F]``.  adj: ``[K, K]``.  weight: ``[F, D]``.  bias: ``[D]`` or None.

    Returns:
        ``(gz [B, K, F], gadj [K, K], gweight [F, D], gbias [D] or None)``, contiguous, in the input dtypes.
    """
    bsz, k, f = z.shape
    d = weight.shape[1]
    if _fallback(gout, out, z, adj, weight, bias, k=k) or activation not in _ACTIVATION_CODE:
        return _ref.graph_conv_backward(gout, out, z, adj, weight, bias, activation)
    target = _tl.target_of(z.device)
    block_k = _block_k(k)
    common = _common(z, target)
    act = _ACTIVATION_CODE[activation]
    adj_configs = _graph_configs("bwd_adj", block_k, z.dtype, target)
    # The adjacency partials have a slot per D block: every candidate has the first one's BLOCK_D, so the slots
    # any config writes are the same (an autotuning run of another width would leave stale slots behind).
    adj_configs = [cfg for cfg in adj_configs if cfg["BLOCK_D"] == adj_configs[0]["BLOCK_D"]]
    num_db = _cdiv(d, adj_configs[0]["BLOCK_D"])
    gzw = torch.empty(bsz, k, d, device=z.device, dtype=torch.float32)
    gadj_part = torch.empty(bsz, num_db, k, k, device=z.device, dtype=torch.float32)
    gbias_part = torch.empty(bsz, d, device=z.device, dtype=torch.float32)
    gz = torch.empty(bsz, k, f, device=z.device, dtype=z.dtype)
    gweight = torch.empty(f, d, device=z.device, dtype=weight.dtype)
    shapes = (k, f, d, str(z.dtype))
    grad_strides = (gout.stride(0), gout.stride(1), gout.stride(2), out.stride(0), out.stride(1), out.stride(2))
    with _device_guard(z):
        _tl.launch(_GRAPH, "graph_conv_bwd_pre_kernel", lambda m: (_cdiv(d, m["BLOCK_D"]) * bsz,),
                   (gout, out, adj, weight, gzw, gbias_part, k, d, *grad_strides, adj.stride(0), adj.stride(1)),
                   {"ACTIVATION": act, "BLOCK_K": block_k, **common},
                   _graph_configs("bwd_pre", block_k, z.dtype, target), target, key=("K", "D"), launch_key=shapes)
        _tl.launch(_GRAPH, "graph_conv_bwd_adj_kernel", lambda m: (_cdiv(d, m["BLOCK_D"]) * bsz,),
                   (gout, out, z, weight, gadj_part, k, f, d, num_db, *grad_strides,
                    z.stride(0), z.stride(1), z.stride(2), weight.stride(0), weight.stride(1)),
                   {"ACTIVATION": act, "BLOCK_K": block_k, **common}, adj_configs, target, key=("K", "F", "D"),
                   launch_key=shapes)
        _tl.launch(_GRAPH, "graph_conv_bwd_z_kernel", lambda m: (_cdiv(f, m["BLOCK_F"]) * bsz,),
                   (gzw, weight, gz, k, f, d, weight.stride(0), weight.stride(1)), {"BLOCK_K": block_k, **common},
                   _graph_configs("bwd_z", block_k, z.dtype, target), target, key=("K", "F", "D"),
                   launch_key=shapes)
        _tl.launch(_GRAPH, "graph_conv_bwd_w_kernel",
                   lambda m: (_cdiv(f, m["BLOCK_F"]) * _cdiv(d, m["BLOCK_D"]),),
                   (z, gzw, gweight, bsz, k, f, d, z.stride(0), z.stride(1), z.stride(2)), common,
                   _graph_configs("bwd_w", block_k, z.dtype, target), target, key=("K", "F", "D"),
                   launch_key=shapes)
    gadj = _reduce(gadj_part, (0, 1), adj.dtype)
    gbias = _reduce(gbias_part, (0,), bias.dtype) if bias is not None else None
    return gz, gadj, gweight, gbias
