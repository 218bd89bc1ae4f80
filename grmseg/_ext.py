"""Loader of grmseg's compiled extension ``grmseg._C`` (the kernels registered as ``torch.ops.grmseg_C.*``).

Importing this module never fails: when the extension is missing or does not load, :func:`built` is False and
:func:`load_error` says why. When it was built against another torch version than the one installed, a
warning is issued once (rebuild with ``pip install --no-build-isolation -e .``).
"""

from __future__ import annotations

import warnings
from types import ModuleType

import torch

__all__ = [
    "CPU_CAPABILITY_ENV",
    "build_info",
    "build_summary",
    "built",
    "cpu_capabilities",
    "cpu_capability",
    "cpu_capability_report",
    "cuda_built",
    "cuda_skip_reason",
    "has_kernel",
    "load_error",
    "set_cpu_capability",
]

OP_NAMESPACE = "grmseg_C"
#: Forces the instruction-set level of the CPU kernels (``default``, ``avx2``, ``avx512``), read at first use.
CPU_CAPABILITY_ENV = "GRMSEG_CPU_CAPABILITY"
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta"}


def _load() -> tuple[ModuleType | None, str | None]:
    try:
        from grmseg import _C  # loading the library registers the ops
    except ImportError as exc:
        if getattr(exc, "name", None) == "grmseg._C":
            return None, "grmseg._C is not built (run `pip install --no-build-isolation -e .` or `make build`)"
        return None, f"grmseg._C failed to load: {exc}"
    except Exception as exc:  # noqa: BLE001  (a broken binary must not break `import grmseg`)
        return None, f"grmseg._C failed to load: {type(exc).__name__}: {exc}"
    return _C, None


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


def set_cpu_capability(level: str) -> str:
    """Run the CPU kernels at ``level`` from now on; returns the previous level.

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
    lines = [f"grmseg {grmseg.__version__}, torch {torch.__version__} (CUDA {cuda_rt}; {gpu})"]
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
