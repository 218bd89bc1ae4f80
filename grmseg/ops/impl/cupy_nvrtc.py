"""The CuPy NVRTC path of the csrc backend: the CUDA kernels of ``csrc/cuda`` compiled at run time.

When ``grmseg._C`` was built without its CUDA part (no toolkit at install time) but CuPy is installed and sees a
GPU, the device code of the GRM kernels (``csrc/cuda/grm_fused_kernels.cuh``: kernels only, no ATen, written to
compile under both nvcc and NVRTC) is compiled once per process with ``cupy.RawModule`` (CuPy also caches the
binary on disk) and launched on torch's current stream, the tensors shared through DLPack. The launch
parameters mirror the host code of ``csrc/cuda/grm_fused_cuda.cu``.

``decision()`` says whether this path is active and why (or why not); ``grmseg.ops.backends()`` reports it as
the reason next to the csrc backend's CUDA availability.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from torch import Tensor

from grmseg import _ext

KERNEL_NAMES = ("grm_project_backward", "grm_reproject_forward", "grm_reproject_backward")
SOURCE_FILE = "grm_fused_kernels.cuh"
SOURCE_DIR_ENV = "GRMSEG_CUDA_SOURCE_DIR"
OPTIONS = ("-DGRMSEG_NVRTC", "--std=c++17")
ACTIVE_REASON = "CuPy NVRTC: csrc/cuda compiled at run time (grmseg._C was built without its CUDA part)"

# torch dtype -> (scalar_t, acc_t) of the kernel templates
CUDA_TYPES = {
    torch.float32: ("float", "float"),
    torch.float64: ("double", "double"),
    torch.float16: ("__half", "float"),
    torch.bfloat16: ("__nv_bfloat16", "float"),
}
_KERNELS = ("project_backward_kernel", "reproject_forward_kernel", "reproject_backward_kernel", "reduce_chunks_kernel")

THREADS = 256  # kThreads of the .cuh
CHAN_CHUNK = 32  # kChanChunk of the .cuh
MAX_TILE = 64
SMEM_BUDGET = 48 * 1024
TARGET_BLOCKS = 256
MIN_TILES_PER_CHUNK = 4
MAX_PARTIAL_ELEMS = 1 << 24


PACKAGE_SOURCE_DIR = Path(__file__).resolve().parents[2] / "_cuda"
"""Where an installed grmseg keeps the sources (setup.py copies them there when it builds a wheel)."""
CHECKOUT_SOURCE_DIR = Path(__file__).resolve().parents[3] / "csrc" / "cuda"
"""Where they are in a source checkout (an editable install reads them there)."""


def source_dir() -> Path:
    """Where the CUDA sources are: ``$GRMSEG_CUDA_SOURCE_DIR``, else the installed package's ``grmseg/_cuda``,
    else ``csrc/cuda`` of the source checkout this module lives in."""
    env = os.environ.get(SOURCE_DIR_ENV)
    if env:
        return Path(env)
    if (PACKAGE_SOURCE_DIR / SOURCE_FILE).is_file():
        return PACKAGE_SOURCE_DIR
    return CHECKOUT_SOURCE_DIR


def load_source() -> str:
    """The NVRTC-compilable device code of the GRM kernels."""
    path = source_dir() / SOURCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"grmseg's CUDA kernel source {path} is missing (set ${SOURCE_DIR_ENV})")
    return path.read_text()


def name_expressions() -> list[str]:
    """Every kernel template instantiation the module provides, as NVRTC name expressions."""
    return [f"grmseg_kernels::{k}<{s}, {a}>" for k in _KERNELS for s, a in CUDA_TYPES.values()]


def decision() -> tuple[bool, str]:
    """Whether the NVRTC path serves CUDA tensors here, and why (or why not)."""
    if _ext.cuda_built():
        return False, "not needed: grmseg._C has its compiled CUDA kernels"
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed (pip install cupy-cuda13x for the run-time compiled kernels)"
    except (OSError, RuntimeError) as exc:  # a broken install (missing CUDA libraries, ...)
        return False, f"CuPy does not import: {exc}"
    try:
        available = bool(cupy.cuda.is_available())
    except (OSError, RuntimeError) as exc:  # cupy.cuda.runtime.CUDARuntimeError is a RuntimeError
        return False, f"CuPy cannot use CUDA: {exc}"
    if not available:
        return False, "CuPy is installed but sees no CUDA device"
    if not (source_dir() / SOURCE_FILE).is_file():
        return False, f"the CUDA kernel sources are not found in {source_dir()} (set ${SOURCE_DIR_ENV})"
    return True, ACTIVE_REASON


@functools.cache
def active() -> tuple[bool, str]:
    """``decision()``, made once per process."""
    return decision()


@functools.cache
def module():
    """The compiled ``cupy.RawModule`` (compiled on first use, cached in memory and in CuPy's disk cache)."""
    import cupy

    return cupy.RawModule(code=load_source(), options=OPTIONS, name_expressions=name_expressions())


def _function(kernel: str, dtype: torch.dtype):
    scalar, acc = CUDA_TYPES[dtype]
    return module().get_function(f"grmseg_kernels::{kernel}<{scalar}, {acc}>")


def _plan(B: int, K: int, C: int, P: int, kt: int, stages: int, acc_size: int) -> tuple[int, int, int, int]:
    """(tile, shared bytes, chunks, pixels per chunk): the same function of the shapes as the C++ host code."""

    def smem(tile: int) -> int:
        return (kt * K * (tile + 1) + stages * CHAN_CHUNK * (tile + 1) + K) * acc_size  # rows padded to tile + 1

    tile = MAX_TILE
    while tile > 1 and smem(tile) > SMEM_BUDGET:
        tile //= 2
    if smem(tile) > SMEM_BUDGET:
        raise RuntimeError(f"grmseg (CuPy NVRTC): K = {K} nodes do not fit in shared memory")
    tiles = (P + tile - 1) // tile
    chunks = (TARGET_BLOCKS + B - 1) // B
    chunks = min(chunks, max(1, MAX_PARTIAL_ELEMS // max(1, B * K * C)))
    chunks = max(1, min(chunks, tiles // MIN_TILES_PER_CHUNK))
    per = 1 if tiles == 0 else (tiles + chunks - 1) // chunks
    chunks = 1 if tiles == 0 else (tiles + per - 1) // per
    return tile, smem(tile), chunks, per * tile


def _launch(kernel: str, dtype: torch.dtype, blocks: int, smem: int, args: tuple) -> None:
    import cupy
    import numpy as np

    conv = []
    for a in args:
        if isinstance(a, Tensor):
            conv.append(cupy.from_dlpack(a.detach()) if a.numel() else cupy.zeros(1, dtype=cupy.float32))
        elif isinstance(a, tuple):  # ("i32", value)
            conv.append(np.int32(a[1]))
        else:
            conv.append(np.int64(a))
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)
    with stream:
        _function(kernel, dtype)((blocks,), (THREADS,), tuple(conv), shared_mem=smem)


def _acc(t: Tensor) -> Tensor:
    return t.to(torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype).contiguous()


def _reduce(src: Tensor, dst: Tensor, groups: int, n: int, chunks: int) -> None:
    if groups * n:
        blocks = min((groups * n + THREADS - 1) // THREADS, 65536)
        _launch("reduce_chunks_kernel", dst.dtype, blocks, 0, (src, dst, groups, n, chunks))


def _check(x: Tensor, *others: Tensor) -> None:
    if x.dtype not in CUDA_TYPES or any(o.dtype != x.dtype or o.device != x.device for o in others):
        raise RuntimeError("grmseg (CuPy NVRTC): inputs must share one float dtype and one CUDA device")


def grm_project_backward(gh: Tensor, gm: Tensor, x: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``gx, gw, gb`` of ``grm_project`` (see grmseg_C::grm_project_backward)."""
    _check(x, gh, gm, w, b)
    B, C, P = x.shape
    K = w.shape[0]
    gx = torch.empty((B, C, P), dtype=x.dtype, device=x.device)
    gw = torch.empty((K, C), dtype=w.dtype, device=x.device)
    gb = torch.empty((K,), dtype=b.dtype, device=x.device)
    if B == 0 or K == 0 or P == 0:
        return gx.zero_(), gw.zero_(), gb.zero_()
    acc = _acc(w)
    tile, smem, chunks, chunk_px = _plan(B, K, C, P, 2, 1, acc.element_size())
    blocks = B * chunks
    part_w = torch.zeros((blocks, K, C), dtype=acc.dtype, device=x.device)
    part_b = torch.empty((blocks, K), dtype=acc.dtype, device=x.device)
    with torch.cuda.device(x.device):
        _launch(
            "project_backward_kernel",
            x.dtype,
            blocks,
            smem,
            (x, *x.stride(), acc, _acc(b), _acc(gh), _acc(gm), gx, part_w, part_b, C, P, ("i32", K),
             ("i32", tile), chunk_px, chunks),
        )  # fmt: skip
        _reduce(part_w, gw, 1, K * C, blocks)
        _reduce(part_b, gb, 1, K, blocks)
    return gx, gw, gb


def grm_reproject_forward(x: Tensor, q: Tensor, v: Tensor) -> Tensor:
    """``y = x + v^T softmax_K(q x)`` (see grmseg_C::grm_reproject_forward)."""
    _check(x, q, v)
    B, C, P = x.shape
    K = q.shape[1]
    y = torch.empty((B, C, P), dtype=x.dtype, device=x.device)
    if B == 0 or C == 0 or P == 0:
        return y
    if K == 0:
        return y.copy_(x)
    qa, va = _acc(q), _acc(v)
    tile, smem, chunks, chunk_px = _plan(B, K, C, P, 1, 1, qa.element_size())
    with torch.cuda.device(x.device):
        _launch(
            "reproject_forward_kernel",
            x.dtype,
            B * chunks,
            smem,
            (x, *x.stride(), qa, va, y, C, P, ("i32", K), ("i32", tile), chunk_px, chunks),
        )
    return y


def grm_reproject_backward(gy: Tensor, x: Tensor, q: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``gx, gq, gv`` of ``grm_reproject`` (see grmseg_C::grm_reproject_backward)."""
    _check(x, gy, q, v)
    B, C, P = x.shape
    K = q.shape[1]
    gx = torch.empty((B, C, P), dtype=x.dtype, device=x.device)
    gq = torch.empty((B, K, C), dtype=q.dtype, device=x.device)
    gv = torch.empty((B, K, C), dtype=v.dtype, device=x.device)
    if B == 0 or C == 0 or K == 0 or P == 0:
        return gx.copy_(gy), gq.zero_(), gv.zero_()
    qa, va = _acc(q), _acc(v)
    tile, smem, chunks, chunk_px = _plan(B, K, C, P, 2, 2, qa.element_size())
    blocks = B * chunks
    part_q = torch.zeros((blocks, K, C), dtype=qa.dtype, device=x.device)
    part_v = torch.zeros((blocks, K, C), dtype=qa.dtype, device=x.device)
    with torch.cuda.device(x.device):
        _launch(
            "reproject_backward_kernel",
            x.dtype,
            blocks,
            smem,
            (gy, *gy.stride(), x, *x.stride(), qa, va, gx, part_q, part_v, C, P, ("i32", K), ("i32", tile),
             chunk_px, chunks),
        )  # fmt: skip
        _reduce(part_q, gq, B, K * C, chunks)
        _reduce(part_v, gv, B, K * C, chunks)
    return gx, gq, gv


def compile_ptx(arch: str = "compute_80") -> str:
    """The PTX of every kernel instantiation, through NVRTC alone (no GPU or driver needed): a build check."""
    import cupy
    from cupy_backends.cuda.libs import nvrtc

    options = [*OPTIONS, f"--gpu-architecture={arch}"]
    cuda_path = cupy._environment.get_cuda_path()
    if cuda_path:
        options.append(f"-I{os.path.join(cuda_path, 'include')}")
    prog = nvrtc.createProgram(load_source(), SOURCE_FILE, [], [])
    try:
        for name in name_expressions():
            nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as exc:
            raise RuntimeError(f"NVRTC failed on {SOURCE_FILE}: {exc}\n{nvrtc.getProgramLog(prog)}") from exc
        for name in name_expressions():
            nvrtc.getLoweredName(prog, name)
        return nvrtc.getPTX(prog).decode() if isinstance(nvrtc.getPTX(prog), bytes) else nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
