"""How the Triton backend launches a kernel: the target it compiles for, the configs it may pick, and the launch.

Shared by ``grmseg.ops.impl.triton`` (GRM kernels) and ``grmseg.ops.impl.triton_wsss`` (WSSS kernels); the
kernels themselves live in ``grmseg.triton``. Three pieces:

* :class:`Target`: what the launch is for, the interpreter or a GPU of a given compute capability, SM count and
  per-block shared-memory limit (the opt-in limit: 232448 B on sm_90, 166912 B on sm_80).
* :func:`launch`: one kernel launch over a list of candidate configs. With autotuning (CUDA, unless
  ``GRMSEG_TRITON_AUTOTUNE=0``) ``triton.autotune`` times them all; without it the first config is *the fixed
  choice*, and a config the GPU refuses (``OutOfResources``: shared memory or registers over the limit) is
  replaced by the next one, once per launch key, so a launch never fails for resources while a smaller
  config exists.
* :func:`recording`: instead of launching, record every launch the adapters would make for a given target
  (meta tensors are enough). ``tests/test_gpu_compile.py`` compiles each recorded config with Triton's real
  compiler for sm_80 and sm_90 and checks it fits: the configs checked are exactly those the code can pick.

The candidate lists are pruned before they get here (see the ``*_configs`` functions of the adapters): by the
shared-memory and register budget of :class:`Target`, with estimates that the compile test keeps honest.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

#: Opt-in shared memory per block (bytes) by compute capability (major * 10 + minor); the CUDA occupancy tables.
SMEM_PER_BLOCK = {70: 98304, 75: 65536, 80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448,
                  100: 232448, 103: 232448, 120: 101376}
#: Multiprocessors of the GPUs the benchmarks target (A100, H100/H200), for recorded launches.
SM_COUNT = {80: 108, 90: 132}
#: 32-bit registers per multiprocessor (every architecture since sm_50) and per thread (ISA limit).
REGS_PER_SM = 65536
MAX_REGS_PER_THREAD = 255
_AUTOTUNE_ENV = "GRMSEG_TRITON_AUTOTUNE"


def interpreting() -> bool:
    """Whether Triton's interpreter is on (``TRITON_INTERPRET=1``, read at kernel definition time by triton)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


@dataclass(frozen=True)
class Target:
    """What a launch is for.

    Attributes:
        interpreter: Triton's interpreter on CPU tensors (then ``arch`` is 0): few, large programs, no tuning.
        arch: compute capability as ``major * 10 + minor`` (90 for H100/H200, 80 for A100).
        sms: multiprocessors (sets how many programs fill the GPU).
        smem: the per-block shared-memory limit in bytes (opt-in).
    """

    interpreter: bool
    arch: int = 0
    sms: int = 1
    smem: int = 0

    @staticmethod
    def gpu(arch: int, sms: int | None = None) -> Target:
        """A GPU of compute capability ``arch`` (80, 90, ...) with the known SM count and shared memory."""
        return Target(False, arch, sms or SM_COUNT.get(arch, 108), SMEM_PER_BLOCK.get(arch, 101376))


INTERPRETER = Target(True)


@functools.cache
def _device_target(index: int) -> Target:
    props = torch.cuda.get_device_properties(index)
    arch = props.major * 10 + props.minor
    smem = getattr(props, "shared_memory_per_block_optin", 0) or SMEM_PER_BLOCK.get(arch, 101376)
    return Target(False, arch, props.multi_processor_count, int(smem))


@dataclass
class Launch:
    """One kernel launch as :func:`recording` saw it: everything ``triton.compile`` needs for each config."""

    module: str
    kernel: str
    args: tuple
    constexprs: dict[str, Any]
    configs: list[dict[str, Any]]
    tuned: bool
    target: Target
    grids: list[tuple[int, ...]] = field(default_factory=list)


_recorder: list[Launch] | None = None
_record_target: Target | None = None


@contextlib.contextmanager
def recording(target: Target, autotune: bool = True) -> Iterator[list[Launch]]:
    """Record, do not run, the launches made inside the block, as if on ``target`` (use meta tensors).

    Args:
        target: the GPU (or interpreter) the launches are planned for.
        autotune: whether launches take the autotune list (True) or the fixed choice (False).
    """
    global _recorder, _record_target
    saved = _recorder, _record_target, os.environ.get(_AUTOTUNE_ENV)
    _recorder, _record_target = [], target
    os.environ[_AUTOTUNE_ENV] = "1" if autotune else "0"
    try:
        yield _recorder
    finally:
        _recorder, _record_target = saved[0], saved[1]
        if saved[2] is None:
            os.environ.pop(_AUTOTUNE_ENV, None)
        else:
            os.environ[_AUTOTUNE_ENV] = saved[2]


def target_of(device: torch.device) -> Target:
    """The target of launches on ``device``: the recorded one inside :func:`recording`, the interpreter for
    CPU tensors or when ``TRITON_INTERPRET=1``, else the GPU itself."""
    if _record_target is not None:
        return _record_target
    if device.type != "cuda" or interpreting():
        return INTERPRETER
    return _device_target(device.index if device.index is not None else torch.cuda.current_device())


def autotune_on(target: Target) -> bool:
    """Autotuning: on a GPU unless ``GRMSEG_TRITON_AUTOTUNE=0``."""
    return not target.interpreter and os.environ.get(_AUTOTUNE_ENV, "1") != "0"


_OPTIONS = ("num_warps", "num_stages", "maxnreg")


def _split(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A config's constexprs and its compile options (num_warps, num_stages, maxnreg when set)."""
    meta = {k: v for k, v in cfg.items() if k not in _OPTIONS}
    options = {"num_warps": int(cfg.get("num_warps", 4)), "num_stages": int(cfg.get("num_stages", 2))}
    if cfg.get("maxnreg"):
        options["maxnreg"] = int(cfg["maxnreg"])
    return meta, options


def with_register_cap(configs: Sequence[dict[str, Any]], target: Target) -> list[dict[str, Any]]:
    """GPU configs with ``maxnreg`` set to what a thread may have (255 up to 8 warps). Without the explicit cap
    ptxas sometimes limits a kernel to 80 or 128 registers and spills (or to 32, with kilobytes of local memory);
    with it a kernel that fits in 255 registers gets them."""
    if target.interpreter:
        return [dict(c) for c in configs]
    return [{"maxnreg": min(MAX_REGS_PER_THREAD, REGS_PER_SM // (32 * int(c.get("num_warps", 4)))), **c}
            for c in configs]


@functools.cache
def _kernel(module: str, name: str) -> Any:
    import importlib

    return getattr(importlib.import_module(module), name)


def _freeze(configs: Sequence[dict[str, Any]]) -> tuple:
    return tuple(tuple(sorted(c.items())) for c in configs)


@functools.cache
def _autotuner(module: str, name: str, configs: tuple, key: tuple[str, ...]) -> Any:
    import triton

    cfgs = []
    for c in configs:
        meta, options = _split(dict(c))
        cfgs.append(triton.Config(meta, **options))
    return triton.autotune(configs=cfgs, key=list(key))(_kernel(module, name))


#: Fixed-choice launches whose first configs the GPU refused: (kernel, configs, launch key) -> index that ran.
_fixed_choice: dict[tuple, int] = {}


def _out_of_resources() -> tuple[type[BaseException], ...]:
    try:
        from triton.runtime.errors import OutOfResources
    except ImportError:  # pragma: no cover - every triton 3.x has it
        return ()
    return (OutOfResources,)


def launch(
    module: str,
    kernel: str,
    grid: Callable[[dict[str, Any]], tuple[int, ...]],
    args: tuple,
    constexprs: dict[str, Any],
    configs: Sequence[dict[str, Any]],
    target: Target,
    key: tuple[str, ...],
    launch_key: tuple = (),
) -> None:
    """Launch ``module.kernel`` over ``grid(config)`` with ``args`` and ``constexprs``.

    Args:
        module, kernel: where the ``@triton.jit`` function is (``"grmseg.triton.grm_project"``, ...).
        grid: the grid of a config (the config's entries, num_warps and num_stages included).
        args: positional runtime arguments; constexprs: the constexprs that do not depend on the config.
        configs: the candidates, best first; each holds constexprs plus ``num_warps`` and ``num_stages``.
        target: from :func:`target_of`.
        key: argument names whose values key the autotune cache.
        launch_key: values that, with the configs, identify a fixed-choice launch (for its fallback memo).
    """
    if not configs:
        raise ValueError(f"launch of {kernel}: no config to choose from")
    configs = with_register_cap(configs, target)
    tuned = autotune_on(target) and len(configs) > 1
    if _recorder is not None:
        chosen = list(configs) if tuned else [dict(configs[0])]
        _recorder.append(Launch(module, kernel, args, dict(constexprs), chosen, tuned, target,
                                [grid(c) for c in chosen]))
        return
    if tuned:
        fn = _autotuner(module, kernel, _freeze(configs), key)
        fn[lambda meta: grid(meta)](*args, **constexprs)
        return
    fn = _kernel(module, kernel)
    memo = (module, kernel, _freeze(configs), launch_key)
    start = _fixed_choice.get(memo, 0)
    errors = _out_of_resources()
    for i in range(start, len(configs)):
        meta, options = _split(dict(configs[i]))
        try:
            fn[grid(configs[i])](*args, **constexprs, **meta, **options)
        except errors:
            if i + 1 == len(configs):
                raise
            continue
        if i != start:
            _fixed_choice[memo] = i
        return


def is_recording() -> bool:
    """Whether launches are being recorded (inside :func:`recording`), not run."""
    return _recorder is not None


def launcher(module: str, kernel: str, config: dict[str, Any], target: Target) -> Callable[..., None]:
    """``run(grid, *args)``: repeated launches of one kernel with one fixed config and little Python per call
    (the random walk launches a pass kernel per step). Inside :func:`recording` each call is recorded."""
    if _recorder is not None:
        return lambda grid, *args: launch(module, kernel, lambda _: grid, args, {}, [config], target, key=())
    fn = _kernel(module, kernel)
    meta, options = _split(with_register_cap([config], target)[0])

    def run(grid: tuple[int, ...], *args: Any) -> None:
        fn[grid](*args, **meta, **options)

    return run
