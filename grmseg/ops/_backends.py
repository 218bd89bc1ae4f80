"""Backend registry and selection for the op layer.

A backend is a module under ``grmseg.ops.impl`` that defines

* ``NAME`` (str),
* ``status(device_type: str) -> tuple[bool, str]``: whether it runs on that device type, and why not,
* ``kernels(device_type: str) -> frozenset[str]``: the kernel names it implements for that device type,
* one function per kernel name, e.g. ``grm_project_forward(x, w, b) -> (h, m)``,
* optionally ``NOT_AUTO: dict[str, frozenset[str]]``: per device type, kernels it implements but that
  ``"auto"`` should not pick because the benchmarks show the next backend in line is faster there (a forced
  backend still runs them).

The kernel names and signatures are those of ``grmseg.reference`` with ``_forward`` appended to the forward
functions (``grm_project_forward``, ``grm_project_backward``, ``grm_reproject_forward``, ...). The keep variants
(``grm_project_keep_forward`` / ``grm_project_backward_kept``, the same for ``grm_reproject``, see
``KEEP_VARIANTS``) also return or read the ``[B, K, P]`` assignment; the op layer uses them only where one backend
runs both (:func:`keeps_assignment`). The joint pair (``grm_reproject_backward_kept_joint`` /
``grm_project_backward_kept_joint``) is the backward of a projection and a reprojection of the same ``x`` in one
pass over ``gx`` (``grmseg.GRM``, where the CPU kernels run both: :func:`joint_backend`). Kernels get
validated tensors (possibly non-contiguous) and return contiguous outputs in the input dtype.

Selection happens at run time inside the registered ``torch.library`` ops, so ``torch.compile`` never traces
it. ``backend="auto"`` (the default) takes ``$GRMSEG_BACKEND`` when set, else the first backend in the
device's preference order that is available and implements the kernel. A named backend must be available
on the device; a kernel it does not implement yet falls back to ``reference`` (same math).
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

BACKEND_NAMES = ("reference", "triton", "csrc")
#: Every kernel of the contract (``grmseg_C`` declares the same names in csrc/grmseg.cpp).
KERNEL_NAMES = (
    "grm_project_forward",
    "grm_project_backward",
    "grm_reproject_forward",
    "grm_reproject_backward",
    "grm_project_keep_forward",
    "grm_project_backward_kept",
    "grm_reproject_keep_forward",
    "grm_reproject_backward_kept",
    "grm_reproject_backward_kept_joint",
    "grm_project_backward_kept_joint",
    "graph_conv_forward",
    "graph_conv_backward",
    "cam_forward",
    "local_affinity_forward",
    "boundary_affinity_forward",
    "random_walk_forward",
    "dense_crf_forward",
)
#: The kernels that keep the ``[B, K, P]`` assignment for backward, by the kernel they stand in for.
KEEP_VARIANTS = {
    "grm_project_forward": "grm_project_keep_forward",
    "grm_project_backward": "grm_project_backward_kept",
    "grm_reproject_forward": "grm_reproject_keep_forward",
    "grm_reproject_backward": "grm_reproject_backward_kept",
}
#: The two kernels of ``grmseg.GRM``'s joint backward, and every kernel a backend must run to serve it.
JOINT_KERNELS = ("grm_reproject_backward_kept_joint", "grm_project_backward_kept_joint")
JOINT_GROUP = (*JOINT_KERNELS, *(KEEP_VARIANTS[f"{op}_{phase}"] for op in ("grm_project", "grm_reproject")
                                 for phase in ("forward", "backward")))
ENV_VAR = "GRMSEG_BACKEND"
_PREFERENCE = {"cuda": ("triton", "csrc", "reference"), "cpu": ("csrc", "reference")}
_DEVICE_TYPES = ("cpu", "cuda")


@dataclass(frozen=True)
class BackendStatus:
    """What one backend offers on this machine."""

    name: str
    available: dict[str, bool]
    reason: dict[str, str]
    kernels: dict[str, tuple[str, ...]]

    def __str__(self) -> str:
        parts = []
        for dev in _DEVICE_TYPES:
            ok = self.available.get(dev, False)
            parts.append(f"{dev}: {'yes' if ok else 'no (' + self.reason.get(dev, '') + ')'}")
        counts = ", ".join(f"{dev} {len(self.kernels.get(dev, ()))}" for dev in _DEVICE_TYPES)
        return f"{self.name:<9} " + "; ".join(parts) + f"; kernels: {counts}"


@functools.cache
def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"grmseg.ops.impl.{name}")
    except ImportError:
        return None


@functools.cache
def _import_error(name: str) -> str:
    try:
        importlib.import_module(f"grmseg.ops.impl.{name}")
    except ImportError as exc:
        return f"import failed: {exc}"
    return ""


@functools.cache
def _status(name: str, device_type: str) -> tuple[bool, str]:
    mod = _module(name)
    if mod is None:
        return False, _import_error(name)
    if device_type == "cuda" and not torch.cuda.is_available():
        return False, "no CUDA device is visible"
    return mod.status(device_type)


@functools.cache
def _kernels(name: str, device_type: str) -> frozenset[str]:
    mod = _module(name)
    return frozenset() if mod is None else frozenset(mod.kernels(device_type))


def backends() -> dict[str, BackendStatus]:
    """Report every backend: whether it runs on CPU and CUDA tensors here, why not, and its kernels.

    Returns:
        ``{name: BackendStatus}`` for ``reference``, ``triton`` and ``csrc``.
    """
    out = {}
    for name in BACKEND_NAMES:
        statuses = {dev: _status(name, dev) for dev in _DEVICE_TYPES}
        out[name] = BackendStatus(
            name=name,
            available={dev: ok for dev, (ok, _) in statuses.items()},
            reason={dev: why for dev, (ok, why) in statuses.items() if not ok},
            kernels={dev: tuple(sorted(_kernels(name, dev))) for dev in _DEVICE_TYPES},
        )
    return out


def _requested(backend: str) -> str:
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if backend != "auto" and backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be 'auto' or one of {BACKEND_NAMES}, got {backend!r}")
    return backend


def check_backend_name(backend: str) -> None:
    """Raise ValueError for a backend name that does not exist (cheap; used by the public ops)."""
    if not isinstance(backend, str) or (backend != "auto" and backend not in BACKEND_NAMES):
        raise ValueError(f"backend must be 'auto' or one of {BACKEND_NAMES}, got {backend!r}")


@functools.cache
def _resolve(kernel: str, device_type: str, requested: str) -> str:
    if requested == "auto":
        for name in _PREFERENCE.get(device_type, ("reference",)):
            skip = getattr(_module(name), "NOT_AUTO", {}).get(device_type, frozenset())
            if kernel in _kernels(name, device_type) and kernel not in skip and _status(name, device_type)[0]:
                return name
        return "reference"
    ok, why = _status(requested, device_type)
    if not ok:
        raise RuntimeError(f"grmseg backend {requested!r} is not available for {device_type} tensors: {why}")
    return requested if kernel in _kernels(requested, device_type) else "reference"


def clear_choices() -> None:
    """Forget the cached backend choices (after something they depend on changed, e.g. the CPU level)."""
    _resolve.cache_clear()
    _resolve_joint.cache_clear()


def selected(kernel: str, device: torch.device | str, backend: str = "auto") -> str:
    """The name of the backend that runs ``kernel`` (e.g. ``"grm_project_forward"``) on ``device``."""
    if kernel not in KERNEL_NAMES:
        raise ValueError(f"unknown kernel {kernel!r}; kernels are {sorted(KERNEL_NAMES)}")
    return _resolve(kernel, torch.device(device).type, _requested(backend))


@torch.compiler.assume_constant_result
def keeps_assignment(op: str, device_type: str, backend: str = "auto") -> bool:
    """Whether ``op`` (``"grm_project"`` or ``"grm_reproject"``) keeps its assignment for backward on
    ``device_type``: the backend that would run its forward and backward kernels also runs their keep variants
    (the CPU kernels and the reference do; the Triton and CUDA kernels recompute it). A constant under
    ``torch.compile``: decided when the graph is traced."""
    requested = _requested(backend)
    for plain in (f"{op}_forward", f"{op}_backward"):
        if _resolve(plain, device_type, requested) != _resolve(KEEP_VARIANTS[plain], device_type, requested):
            return False
    return True


def kernel(name: str, device: torch.device, backend: str) -> Callable:
    """The function that implements kernel ``name`` for tensors on ``device``."""
    chosen = _resolve(name, device.type, _requested(backend))
    return getattr(_module(chosen), name)


def joint_backend(device_type: str, backend: str = "auto") -> str | None:
    """The backend that runs ``grmseg.GRM``'s projection and reprojection with their joint backward (see
    ``grm_project_backward_kept_joint``) on ``device_type``, or None: no backend other than the reference runs all
    of :data:`JOINT_GROUP` (the CPU kernels do; the reference composes the plain kept backwards, as the oracle).

    A named backend serves the group when every kernel of it resolves to that backend. Under ``"auto"`` the group is
    chosen as a whole: the first backend in line that implements all of it, is available, and whose ``NOT_AUTO``
    names neither of :data:`JOINT_KERNELS`. A member that ``auto`` leaves to the reference when called on its own
    (one level with the reference by itself, e.g. ``grm_reproject``'s at a forced level below the CPU's best) still
    runs in that backend here: the layer is measured as one, and splitting it would lose the joint pass."""
    return _resolve_joint(device_type, _requested(backend))


@functools.cache
def _resolve_joint(device_type: str, requested: str) -> str | None:
    # under auto the joint pair alone decides, so that a member's own NOT_AUTO entry does not split the group
    chosen = {_resolve(name, device_type, requested) for name in (JOINT_KERNELS if requested == "auto" else JOINT_GROUP)}
    if len(chosen) != 1 or chosen == {"reference"}:
        return None
    backend = chosen.pop()
    return backend if all(k in _kernels(backend, device_type) for k in JOINT_GROUP) else None
