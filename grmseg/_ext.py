"""Loader of grmseg's compiled extension ``grmseg._C`` (the kernels registered as ``torch.ops.grmseg_C.*``).

When the extension is not built (a source checkout before ``make build``), importing this module still works:
:func:`built` is False, :func:`load_error` says why, and grmseg runs on its Python backends (reference, Triton).
When ``_C`` is there but does not load (built for another torch: the binary is tied to the torch it was built
against even though its wheel tag says abi3), or when another library already registered the ``grmseg_C``
operators (``libgrmseg_ops.so`` of the CMake build loaded first: a second registration would abort the process),
importing raises :class:`ExtensionLoadError` with the fix. ``GRMSEG_IGNORE_EXT_ERRORS=1`` turns that into the
fallback above. Built for another torch version that still loads: a warning, once.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from types import ModuleType

import torch

__all__ = [
    "CPU_CAPABILITY_ENV",
    "ExtensionLoadError",
    "build_info",
    "build_summary",
    "built",
    "cpu_capabilities",
    "cpu_capability",
    "cpu_capability_report",
    "cpu_fma_peak_gflops",
    "cuda_built",
    "cuda_skip_reason",
    "has_kernel",
    "load_error",
    "set_cpu_capability",
]

OP_NAMESPACE = "grmseg_C"
PROBE_OP = "grm_project_forward"  # any operator of csrc/grmseg.cpp's TORCH_LIBRARY block
IGNORE_ERRORS_ENV = "GRMSEG_IGNORE_EXT_ERRORS"
REBUILD_HINT = "pip install --no-build-isolation --no-deps --force-reinstall ."
#: Forces the instruction-set level of the CPU kernels (``default``, ``avx2``, ``avx512``), read at first use.
CPU_CAPABILITY_ENV = "GRMSEG_CPU_CAPABILITY"
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta"}


class ExtensionLoadError(ImportError):
    """``grmseg._C`` exists but cannot be loaded (or must not be: its operators are registered already)."""


def ops_registered_elsewhere() -> bool:
    """Whether ``torch.ops.grmseg_C`` operators exist although ``grmseg._C`` is not imported (another library,
    e.g. ``libgrmseg_ops.so`` through ``torch.ops.load_library``, registered them)."""
    if "grmseg._C" in sys.modules:
        return False
    try:
        torch._C._dispatch_find_schema_or_throw(f"{OP_NAMESPACE}::{PROBE_OP}", "")
    except RuntimeError:
        return False
    return True


def _load() -> tuple[ModuleType | None, str | None]:
    """``(module, None)``, or ``(None, why)`` when ``_C`` is not built; raises :class:`ExtensionLoadError` when
    it is built but cannot (or must not) be loaded, unless ``$GRMSEG_IGNORE_EXT_ERRORS`` is set."""
    if ops_registered_elsewhere():
        return None, _refuse(
            f"the {OP_NAMESPACE} operators are registered already by another library (libgrmseg_ops.so of the "
            "CMake build, loaded with torch.ops.load_library?); loading grmseg._C as well would abort the process "
            "(two TORCH_LIBRARY blocks for one namespace)",
            "Use one of them in a process: `import grmseg` (its kernels are the same), or the C++ library alone",
        )
    try:
        from grmseg import _C  # loading the library registers the ops
    except ImportError as exc:
        if getattr(exc, "name", None) == "grmseg._C":
            return None, "grmseg._C is not built (run `pip install --no-build-isolation -e .` or `make build`)"
        return None, _refuse(f"grmseg._C is installed but does not load: {exc}", _REBUILD)
    except Exception as exc:  # noqa: BLE001  (an OSError, a c10::Error from a static initialiser, ...)
        return None, _refuse(f"grmseg._C is installed but does not load: {type(exc).__name__}: {exc}", _REBUILD)
    return _C, None


_REBUILD = (
    f"It was built for another torch than the torch {torch.__version__} installed here, or it is damaged: rebuild "
    f"it in the source folder with `{REBUILD_HINT}` (or `make build`)"
)


def _refuse(why: str, fix: str) -> str:
    """Raise :class:`ExtensionLoadError` for ``why`` with ``fix``, or return ``why`` when errors are ignored."""
    if os.environ.get(IGNORE_ERRORS_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return why
    raise ExtensionLoadError(
        f"{why}.\n{fix}. To run on grmseg's Python backends only (reference, Triton), set {IGNORE_ERRORS_ENV}=1."
    )


_C, _LOAD_ERROR = _load()

if _C is not None:
    _built_for = getattr(_C, "torch_version", "")
    if _built_for != torch.__version__:
        warnings.warn(
            f"grmseg._C was built for torch {_built_for or '(unknown)'} but torch {torch.__version__} is installed; "
            "its kernels may crash or misbehave. Rebuild it: `pip install --no-build-isolation --no-deps -e .`",
            RuntimeWarning,
            stacklevel=2,
        )


def built() -> bool:
    """Whether ``grmseg._C`` is loaded (its CPU kernels and op schemas are registered)."""
    return _C is not None


def load_error() -> str | None:
    """Why ``grmseg._C`` is not loaded, or None when it is."""
    return _LOAD_ERROR


def has_kernel(name: str, device_type: str) -> bool:
    """Whether ``torch.ops.grmseg_C.<name>`` has a kernel for ``device_type`` ("cpu"/"cuda" or "CPU"/"CUDA")."""
    if _C is None:
        return False
    key = _DISPATCH_KEYS.get(device_type.lower(), device_type)
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"{OP_NAMESPACE}::{name}", key))
    except RuntimeError:  # unknown op or dispatch key
        return False


def cuda_built() -> bool:
    """Whether the CUDA part of ``grmseg._C`` was compiled in."""
    return _C is not None and bool(getattr(_C, "with_cuda", 0)) and has_kernel("grm_project_forward", "cuda")


def cuda_skip_reason() -> str:
    """Why the CUDA part is missing ("" when it is built)."""
    if _C is None:
        return _LOAD_ERROR or ""
    if cuda_built():
        return ""
    why = getattr(_C, "cuda_skip_reason", "")
    return why or "grmseg was built without its CUDA part (no nvcc at build time, or GRMSEG_NO_CUDA=1)"


def cpu_capability() -> str | None:
    """The instruction-set level the CPU kernels run at (``"default"``, ``"avx2"``, ``"avx512"``); None unbuilt.

    Every kernel file under ``csrc/cpu/kernels/`` is compiled once per level; the best level that the CPU and the
    build support is used, unless ``$GRMSEG_CPU_CAPABILITY`` asks for a lower one.
    """
    return None if _C is None else _C.cpu_capability()


def cpu_capabilities() -> tuple[str, ...]:
    """Every level the CPU and this build support, lowest first (empty when ``grmseg._C`` is not loaded)."""
    return () if _C is None else tuple(_C.cpu_capabilities())


def cpu_capability_report() -> str:
    """One line: the level in use, why (detected or forced), and what the CPU and the build support."""
    if _C is None:
        return _LOAD_ERROR or ""
    return _C.cpu_capability_report()


def cpu_fma_peak_gflops(level: str | None = None, seconds: float = 0.3, threads: int | None = None) -> float:
    """The fp32 multiply-add rate (GFLOP/s, a multiply-add counts 2) of this CPU at an instruction-set level, with
    ``threads`` threads running independent FMA chains at once (the best of three runs, about ``seconds`` in
    all): the ceiling of every CPU kernel at that level. With a level below the CPU's best forced, the BLAS sgemm
    (which picks its own, wider, vectors) can be out of the kernels' reach; this cannot.

    Args:
        level: one of :func:`cpu_capabilities`; None for the active level.
        seconds: how long the probe runs, in (0, 60].
        threads: how many threads run it; None for ``torch.get_num_threads()``.

    Raises:
        ValueError: ``level`` is not supported here, or ``seconds`` / ``threads`` are out of range.
        RuntimeError: ``grmseg._C`` is not loaded.
    """
    if _C is None:
        raise RuntimeError(f"grmseg._C is not loaded: {_LOAD_ERROR}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"cpu_fma_peak_gflops: threads must be an int >= 1 or None, got {threads!r}")
    return float(_C.cpu_fma_peak_gflops(level, float(seconds), threads or 0))


_CAPABILITY_LISTENERS: list[Callable[[str], None]] = []


def on_cpu_capability_change(listener: Callable[[str], None]) -> None:
    """Call ``listener(level)`` after every :func:`set_cpu_capability` (the backend choice of ``grmseg.ops``, which
    depends on the level, registers here: this module sits below it and does not import it)."""
    _CAPABILITY_LISTENERS.append(listener)


def set_cpu_capability(level: str) -> str:
    """Run the CPU kernels at ``level`` from now on; returns the previous level. ``backend="auto"`` follows (it
    keeps the reference for the kernels that are slower at the new level).

    Raises:
        ValueError: ``level`` is not one of :func:`cpu_capabilities`.
        RuntimeError: ``grmseg._C`` is not loaded.
    """
    if _C is None:
        raise RuntimeError(f"grmseg._C is not loaded: {_LOAD_ERROR}")
    if level not in cpu_capabilities():
        raise ValueError(f"set_cpu_capability: level must be one of {cpu_capabilities()}, got {level!r}")
    previous = _C.cpu_capability()
    _C.set_cpu_capability(level)
    for listener in _CAPABILITY_LISTENERS:
        listener(level)
    return previous


def build_info() -> dict[str, str | bool | None]:
    """Facts recorded in ``grmseg._C`` at build time (empty values when it is not loaded)."""
    return {
        "built": built(),
        "load_error": _LOAD_ERROR,
        "torch_version": getattr(_C, "torch_version", None),
        "torch_cuda_version": getattr(_C, "torch_cuda_version", None) or None,
        "with_cuda": cuda_built(),
        "cuda_home": getattr(_C, "cuda_home", None) or None,
        "cuda_arch_list": getattr(_C, "cuda_arch_list", None) or None,
        "cuda_skip_reason": cuda_skip_reason() or None,
        "cpu_capability": cpu_capability(),
        "cpu_capabilities": ",".join(cpu_capabilities()) or None,
    }


def build_summary() -> str:
    """A few lines on this install: versions, how ``grmseg._C`` was built, and what each backend offers."""
    import grmseg  # here, not at the top: grmseg imports this module
    from grmseg.ops import backends

    cuda_rt = torch.version.cuda or "none"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU visible"
    version = grmseg.__version__
    try:  # the installed build's version names its torch: 0.1.0+pt2.14.1.cu130
        import importlib.metadata

        installed = importlib.metadata.version("grmseg")
        version = installed if installed.split("+")[0] == version else version
    except importlib.metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
        pass
    lines = [f"grmseg {version}, torch {torch.__version__} (CUDA {cuda_rt}; {gpu})"]
    if _C is None:
        lines.append(f"grmseg._C: not loaded: {_LOAD_ERROR}")
    else:
        info = build_info()
        if cuda_built():
            lines.append(
                f"grmseg._C: built with CUDA (for torch {info['torch_version']}, CUDA {info['torch_cuda_version']}, "
                f"archs {info['cuda_arch_list']}, toolkit {info['cuda_home']})"
            )
        else:
            lines.append(f"grmseg._C: built without CUDA (for torch {info['torch_version']}): {cuda_skip_reason()}")
        lines.append(f"grmseg._C CPU kernels: {cpu_capability_report()} (${CPU_CAPABILITY_ENV} forces a level)")
    lines.extend(f"  {status}" for status in backends().values())
    return "\n".join(lines)
