"""Timers and peak-memory probes.

Time: warm-up, then repeated runs; the median and the 20th/80th percentiles (and min/max) are reported.
On CUDA each run is timed with its own pair of CUDA events after the L2 cache is flushed (zeroing a 256 MB
buffer), as ``triton.testing.do_bench`` does; on the CPU with ``time.perf_counter`` and the thread count
left as it is. Slow cases get fewer runs (never fewer than 3) so that one case stays within a time budget.

Peak memory: the most memory held above the starting point while one run is in progress. On CUDA it is
``torch.cuda.max_memory_allocated`` after a reset; on the CPU it is read from the torch profiler
(``profile_memory=True``) by walking its ``[memory]`` allocation/free events in time order.
:func:`cpu_profiler_self_check` checks that reading against known allocations.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

L2_FLUSH_BYTES = 256 * 1024 * 1024
MIN_RUNS = 3


@dataclass(frozen=True)
class Timing:
    """Run times of one case in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    min_ms: float
    max_ms: float
    runs: int

    def as_dict(self) -> dict[str, float]:
        """The fields as a plain dict (for JSON)."""
        return asdict(self)


def _quantile(sorted_times: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of an ascending sequence."""
    pos = q * (len(sorted_times) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_times[lo] + (pos - lo) * (sorted_times[hi] - sorted_times[lo])


def summarize(times_ms: Sequence[float]) -> Timing:
    """Median, p20, p80, min and max of ``times_ms`` (non-empty)."""
    if not times_ms:
        raise ValueError("summarize needs at least one time")
    s = sorted(times_ms)
    return Timing(_quantile(s, 0.5), _quantile(s, 0.2), _quantile(s, 0.8), s[0], s[-1], len(s))


def _run_count(estimate_s: float, repeats: int, budget_s: float) -> int:
    fit = int(budget_s / max(estimate_s, 1e-9))
    return max(min(repeats, MIN_RUNS), min(repeats, fit))


def time_cpu(fn: Callable[[], Any], repeats: int = 20, budget_s: float = 3.0, warmup_s: float = 0.05) -> Timing:
    """Time ``fn`` on the CPU: warm up for ``warmup_s`` (at least one run), then up to ``repeats`` timed runs
    (fewer for slow cases, to stay within ``budget_s``; never fewer than 3)."""
    warm_start = time.perf_counter()
    estimate = math.inf
    for _ in range(100):
        t0 = time.perf_counter()
        fn()
        estimate = min(estimate, time.perf_counter() - t0)
        if time.perf_counter() - warm_start >= warmup_s:
            break
    times = []
    for _ in range(_run_count(estimate, repeats, budget_s)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize(times)


def time_cuda(
    fn: Callable[[], Any], device: torch.device, repeats: int = 100, budget_s: float = 2.0, warmup_ms: float = 25.0
) -> Timing:
    """Time ``fn`` on a CUDA device: L2 flushed before every run, one pair of CUDA events per run.

    ``fn`` should have run once already (compilation, autotuning); one more run gives the estimate that sets
    the warm-up (``warmup_ms`` worth, none for slow cases) and the run count (``repeats`` within ``budget_s``).
    """
    cache = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    cache.zero_()
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize(device)
    estimate_ms = max(start.elapsed_time(end), 1e-3)
    for _ in range(min(100, int(warmup_ms / estimate_ms))):
        fn()
    n = _run_count(estimate_ms / 1e3, repeats, budget_s)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        cache.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize(device)
    return summarize([s.elapsed_time(e) for s, e in zip(starts, ends)])


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's garbage collector off for the duration (as ``timeit`` does): a collection of the whole heap
    that happens to fall into a timed run measures the interpreter, not the op."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def time_fn(fn: Callable[[], Any], device: torch.device, repeats: int | None = None) -> Timing:
    """Time ``fn`` on ``device`` with the device's timer, the garbage collector paused; ``repeats`` defaults to
    100 (CUDA) or 20 (CPU)."""
    with gc_paused():
        if device.type == "cuda":
            return time_cuda(fn, device, repeats or 100)
        return time_cpu(fn, repeats or 20)


def sgemm_gflops(device: torch.device, n: int = 1024, repeats: int = 10) -> float:
    """The device's fp32 GEMM rate: ``n x n x n`` ``torch.mm`` (2 n^3 flops) over its median time, in GFLOP/s."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.mm(a, b)
    t = time_fn(lambda: torch.mm(a, b), device, repeats)
    return 2.0 * n**3 / (t.median_ms * 1e-3) / 1e9


# ---------------------------------------------------------------------------------------------------- memory
_KINETO_NOISE = re.compile(r"^(USDT:.*profiler_(start|stop)|ERROR:.*gpuGetDeviceCount failed)")


@contextlib.contextmanager
def _quiet_profiler_logs() -> Iterator[None]:
    """Hide the native profiler's start/stop log lines on fd 2; every other line written there is re-emitted."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode(errors="replace").splitlines() if not _KINETO_NOISE.match(ln)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


def _deltas_from_kineto(prof: torch.profiler.profile) -> list[tuple[int, int]]:
    """``(time ns, +/- bytes)`` of the CPU ``[memory]`` events, from the raw kineto results."""
    out = []
    for e in prof.profiler.kineto_results.events():
        if e.name() == "[memory]" and e.device_type().name == "CPU":
            out.append((e.start_ns(), int(e.nbytes())))
    return out


def _deltas_from_function_events(prof: torch.profiler.profile) -> list[tuple[int, int]]:
    """Fallback: ``(time us, +/- bytes)`` from the parsed events; an op's own allocations net out at its start."""
    out = []
    for e in prof.profiler.function_events:
        delta = e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        if delta:
            out.append((e.time_range.start, int(delta)))
    return out


def peak_from_deltas(deltas: Sequence[tuple[float, int]]) -> int:
    """The largest running total of the allocation deltas, in time order (0 when it never rises)."""
    running = peak = 0
    for _, d in sorted(deltas, key=lambda td: td[0]):
        running += d
        peak = max(peak, running)
    return peak


def cpu_peak_bytes(fn: Callable[[], Any]) -> tuple[int, str]:
    """Peak CPU memory above the starting point while ``fn`` runs (its result is dropped inside).

    Returns:
        ``(bytes, method)``, method naming the profiler API that was read.
    """
    from torch.profiler import ProfilerActivity, profile

    with _quiet_profiler_logs(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    try:
        return peak_from_deltas(_deltas_from_kineto(prof)), "profiler kineto_results [memory] events"
    except (AttributeError, RuntimeError, TypeError):
        return peak_from_deltas(_deltas_from_function_events(prof)), "profiler function_events memory usage"


def cpu_profiler_self_check() -> tuple[bool, str]:
    """Check :func:`cpu_peak_bytes` against known allocations: 2 MB + 1 MB live together, then 0.5 MB."""
    mb = 1_000_000

    def probe() -> None:
        a = torch.empty(2 * mb, dtype=torch.uint8)
        b = torch.empty(mb, dtype=torch.uint8)
        del a
        c = torch.empty(mb // 2, dtype=torch.uint8)
        del b, c

    peak, method = cpu_peak_bytes(probe)
    ok = 3 * mb <= peak <= 3 * mb + 64 * 1024
    return ok, f"{method}; self-check: expected 3.00 MB, read {peak / mb:.2f} MB ({'ok' if ok else 'FAILED'})"


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak memory in bytes above what was allocated before ``fn`` ran, on ``device``."""
    if device.type == "cuda":
        gc.collect()  # cycles (compiled graphs) still holding device memory
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        del out
        return max(0, torch.cuda.max_memory_allocated(device) - base)
    return cpu_peak_bytes(fn)[0]
