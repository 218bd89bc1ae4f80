"""The csrc backend: the C++/CUDA kernels of ``grmseg._C``, called as ``torch.ops.grmseg_C.<kernel>``.

A kernel counts as implemented on a device type when ``grmseg._C`` registered a kernel for that dispatch key
(``CPU`` / ``CUDA``), so kernels added to ``csrc/`` show up here without editing this file. The op layer falls
back to the reference backend for the others.

When ``grmseg._C`` was built without its CUDA part, CUDA tensors may still be served by the same kernel sources
compiled at run time through CuPy's NVRTC (``cupy_nvrtc``); ``status("cuda")`` then names that path.
"""

from __future__ import annotations

import functools
import platform

import torch
from torch import Tensor

from grmseg import _ext
from grmseg.ops import _backends
from grmseg.ops.impl import cupy_nvrtc

NAME = "csrc"
#: CPU kernels that are slower than the reference at every instruction-set level, measured at the CPU benchmark
#: sizes (benchmarks/results/cpu-xeon-2core: graph_conv's forward is one GEMM that both run in MKL, and the
#: reference's single call beats the fixed blocks that keep csrc's result independent of the thread count:
#: 0.81-0.91x at one thread).
SLOWER_ON_CPU = frozenset({"graph_conv_forward"})
#: CPU kernels that are also slower than the reference when they run at the baseline instruction-set level of
#: x86-64 (SSE2: a CPU without AVX2, or ``GRMSEG_CPU_CAPABILITY=default``), measured at the CPU benchmark sizes. The
#: joint pair stands for ``grmseg.GRM``'s kernels as a group (``_backends.joint_backend``): the layer with every GRM
#: kernel in csrc is 0.42-0.43x the reference there, and grm_project's backward alone 0.44x (Xeon, B2 C256 64x64
#: K21, 1 and 2 threads, 2026-12-03; with it in csrc, auto's layer was 0.72-0.74x the reference at this level).
SLOWER_AT_X86_BASELINE = frozenset(
    {"grm_project_forward", "grm_project_backward", "grm_reproject_forward", "grm_reproject_backward",
     "graph_conv_forward", "graph_conv_backward", *_backends.JOINT_KERNELS}
)


#: CPU kernels that are slower than the reference when they run at a level below the CPU's best (AVX2 forced on an
#: AVX-512 CPU) on a CPU whose best level multiplies and adds more per cycle (see BLAS_WIDER): the reference's
#: GEMMs then run in MKL at the CPU's full vector width, the kernels at less. On the Xeon (1.85x the AVX2 FMA rate
#: at AVX-512; benchmarks/results/cpu-xeon-2core-8bce763) grm_reproject's forward, two GEMM-shaped products in
#: both, is 0.93-0.98x the reference at AVX2 (harness and interleaved runs, 1 and 2 threads), its backward
#: 1.07-1.13x; the two stay together, so that a call's kept assignment is written and read by one backend. On a
#: Zen 4, whose AVX-512 runs on 256-bit units at the AVX2 rate, both win (benchmarks/results/cpu-epyc-zen4-2core).
#: ``grmseg.GRM`` still runs them in csrc with the rest of its group (``_backends.joint_backend``): the layer is
#: 1.5-1.9x the reference that way on the Xeon at AVX2, and 12% slower with these two on the reference.
SLOWER_BELOW_CPU_BEST = frozenset({"grm_reproject_forward", "grm_reproject_backward"})
#: The ratio of the best level's FMA rate to the forced level's from which SLOWER_BELOW_CPU_BEST applies.
BLAS_WIDER = 1.4
#: How long each level's FMA probe runs for that ratio (twice per level, one thread; once a process).
_PROBE_SECONDS = 0.03


@functools.cache
def fma_rate_ratio(level: str, best: str) -> float:
    """The one-thread FMA rate of ``best`` over that of ``level`` (levels of :func:`grmseg._ext.cpu_capabilities`),
    each the better of two short probes taken in turn (about 0.25 s in all, once a process)."""
    rates: dict[str, float] = {level: 0.0, best: 0.0}
    for _ in range(2):
        for lvl in (level, best):
            rates[lvl] = max(rates[lvl], _ext.cpu_fma_peak_gflops(lvl, seconds=_PROBE_SECONDS, threads=1))
    return rates[best] / rates[level]


def _not_auto() -> dict[str, frozenset[str]]:
    level, levels = _ext.cpu_capability(), _ext.cpu_capabilities()
    slower = SLOWER_ON_CPU
    if platform.machine().lower() in ("x86_64", "amd64"):
        if level == "default":
            slower = slower | SLOWER_AT_X86_BASELINE
        if levels and level != levels[-1] and fma_rate_ratio(level, levels[-1]) >= BLAS_WIDER:
            slower = slower | SLOWER_BELOW_CPU_BEST
    # a kernel's keep variant (the same kernel, also storing or reading the assignment) follows it
    slower = slower | {_backends.KEEP_VARIANTS[k] for k in slower if k in _backends.KEEP_VARIANTS}
    return {"cpu": frozenset(slower)}


#: Implemented but slower than the next backend in line, so ``backend="auto"`` skips them (see the benchmarks;
#: a forced backend still runs them). At the CPU's best level (AVX2 or AVX-512) every other CPU kernel beats the
#: reference at the benchmark sizes (README); at a forced lower level, and at x86-64's baseline, some more do not.
#: Follows the level in use (``$GRMSEG_CPU_CAPABILITY`` at import, then ``grmseg._ext.set_cpu_capability``); worked
#: out then, not at first use, so that nothing is probed while torch.compile traces.
NOT_AUTO: dict[str, frozenset[str]] = _not_auto()


def _follow_cpu_capability(level: str) -> None:
    global NOT_AUTO
    NOT_AUTO = _not_auto()
    _backends.clear_choices()


_ext.on_cpu_capability_change(_follow_cpu_capability)

KERNEL_NAMES = _backends.KERNEL_NAMES

NO_CUDA_REASON = "grmseg was built without its CUDA part (no nvcc at build time, or GRMSEG_NO_CUDA=1)"


def status(device_type: str) -> tuple[bool, str]:
    """Whether the compiled kernels run on ``device_type`` tensors here, and why not."""
    if not _ext.built():
        return False, _ext.load_error() or "grmseg._C is not loaded"
    if device_type == "cpu":
        return True, ""
    if device_type == "cuda":
        if _ext.cuda_built():
            return True, ""
        nvrtc_ok, nvrtc_why = cupy_nvrtc.active()
        if nvrtc_ok:
            return True, nvrtc_why
        why = _ext.cuda_skip_reason()
        why = NO_CUDA_REASON if not why or why == NO_CUDA_REASON else f"{NO_CUDA_REASON}: {why}"
        return False, f"{why}; no run-time fallback: {nvrtc_why}"
    return False, f"grmseg._C has no kernels for {device_type!r} tensors"


def kernels(device_type: str) -> frozenset[str]:
    """The kernels that ``grmseg._C`` registered for ``device_type`` ("cpu" or "cuda")."""
    if not _ext.built():
        return frozenset()
    if device_type == "cuda" and not _ext.cuda_built():
        return frozenset(cupy_nvrtc.KERNEL_NAMES) if cupy_nvrtc.active()[0] else frozenset()
    return frozenset(name for name in KERNEL_NAMES if _ext.has_kernel(name, device_type))


def _nvrtc(x: Tensor) -> bool:
    """Whether ``x`` goes to the CuPy NVRTC kernels (a CUDA tensor, and grmseg._C without its CUDA part)."""
    return x.is_cuda and not _ext.cuda_built() and cupy_nvrtc.active()[0]


def _ops():
    return torch.ops.grmseg_C


def grm_project_forward(x: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``h [B, K, C], m [B, K]`` of ``grm_project``."""
    return _ops().grm_project_forward(x, w, b)


def grm_project_backward(
    gh: Tensor, gm: Tensor, x: Tensor, w: Tensor, b: Tensor, gx_base: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``gx, gw, gb`` of ``grm_project``; ``gx_base`` (optional, ``[B, C, P]``) is added to ``gx``, by the CPU
    kernel in its last product."""
    if _nvrtc(x):
        gx, gw, gb = cupy_nvrtc.grm_project_backward(gh, gm, x, w, b)
        return (gx if gx_base is None else gx.add_(gx_base)), gw, gb
    return _ops().grm_project_backward(gh, gm, x, w, b, gx_base)


def grm_reproject_forward(x: Tensor, q: Tensor, v: Tensor) -> Tensor:
    """``y [B, C, P]`` of ``grm_reproject``."""
    if _nvrtc(x):
        return cupy_nvrtc.grm_reproject_forward(x, q, v)
    return _ops().grm_reproject_forward(x, q, v)


def grm_reproject_backward(gy: Tensor, x: Tensor, q: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``gx, gq, gv`` of ``grm_reproject``."""
    if _nvrtc(x):
        return cupy_nvrtc.grm_reproject_backward(gy, x, q, v)
    return _ops().grm_reproject_backward(gy, x, q, v)


def grm_project_keep_forward(x: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``h, m`` of ``grm_project`` and its assignment ``a [B, K, P]`` (accumulation dtype; CPU kernels)."""
    return _ops().grm_project_keep_forward(x, w, b)


def grm_project_backward_kept(
    gh: Tensor, gm: Tensor, x: Tensor, a: Tensor, w: Tensor, b: Tensor, gx_base: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``gx, gw, gb`` of ``grm_project`` from the kept assignment ``a`` (CPU kernels)."""
    return _ops().grm_project_backward_kept(gh, gm, x, a, w, b, gx_base)


def grm_reproject_keep_forward(x: Tensor, q: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``y`` of ``grm_reproject`` and its assignment ``a [B, K, P]`` (accumulation dtype; CPU kernels)."""
    return _ops().grm_reproject_keep_forward(x, q, v)


def grm_reproject_backward_kept(gy: Tensor, x: Tensor, a: Tensor, q: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``gx, gq, gv`` of ``grm_reproject`` from the kept assignment ``a`` (CPU kernels)."""
    return _ops().grm_reproject_backward_kept(gy, x, a, q, v)


def grm_reproject_backward_kept_joint(
    gy: Tensor, x: Tensor, a: Tensor, q: Tensor, v: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``ge [B, K, P], gq, gv`` of ``grm_reproject`` from the kept assignment, for a joint backward (CPU kernels)."""
    return _ops().grm_reproject_backward_kept_joint(gy, x, a, q, v)


def grm_project_backward_kept_joint(
    gh: Tensor, gm: Tensor, x: Tensor, a: Tensor, w: Tensor, b: Tensor, gy: Tensor, ge: Tensor, q: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``gx, gw, gb`` of ``grm_project`` from the kept assignment, ``gx`` with ``gy + q^T ge`` added (CPU kernels)."""
    return _ops().grm_project_backward_kept_joint(gh, gm, x, a, w, b, gy, ge, q)


def graph_conv_forward(
    z: Tensor, adj: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str = "leaky_relu"
) -> Tensor:
    """``act(adj (z weight) + bias)``."""
    return _ops().graph_conv_forward(z, adj, weight, bias, activation)


def graph_conv_backward(
    gout: Tensor, out: Tensor, z: Tensor, adj: Tensor, weight: Tensor, bias: Tensor | None, activation: str
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``gz, gadj, gweight, gbias`` of ``graph_conv`` (``gbias`` is None without a bias, as in the reference)."""
    gz, gadj, gweight, gbias = _ops().graph_conv_backward(gout, out, z, adj, weight, bias, activation)
    return gz, gadj, gweight, (gbias if bias is not None else None)


def cam_forward(feat: Tensor, weight: Tensor, labels: Tensor | None = None) -> Tensor:
    """Class activation maps ``[B, K, h, w]``."""
    return _ops().cam_forward(feat, weight, labels)


def local_affinity_forward(feat: Tensor, radius: int) -> Tensor:
    """PSA affinities ``[B, D, h, w]``."""
    return _ops().local_affinity_forward(feat, radius)


def boundary_affinity_forward(boundary: Tensor, radius: int) -> Tensor:
    """IRN affinities ``[B, D, h, w]``."""
    return _ops().boundary_affinity_forward(boundary, radius)


def random_walk_forward(cam: Tensor, aff: Tensor, beta: float, steps: int) -> Tensor:
    """Random-walk propagated CAMs ``[B, K, h, w]``."""
    return _ops().random_walk_forward(cam, aff, beta, steps)


def dense_crf_forward(
    unary: Tensor, image: Tensor, iterations: int, gaussian_sxy: float, gaussian_weight: float,
    bilateral_sxy: float, bilateral_srgb: float, bilateral_weight: float,
) -> Tensor:
    """Mean-field marginals ``[B, K, H, W]`` of the dense CRF (permutohedral lattice)."""
    return _ops().dense_crf_forward(
        unary, image, iterations, gaussian_sxy, gaussian_weight, bilateral_sxy, bilateral_srgb, bilateral_weight
    )
