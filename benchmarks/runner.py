"""The benchmark loop: every case x provider -> a :class:`~benchmarks.report.Row`.

A failing or skipped row never ends the run: it is recorded with a note, and the next row runs.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from benchmarks import external, timing
from benchmarks import providers as prov
from benchmarks import report as rep
from benchmarks.cases import OPS, SIZE_SETS, Case, Inputs, grm_layer_available, make_cases
from benchmarks.machine import MALLOC_MODES, machine_info, peak_bandwidth, retain_freed_memory


def _stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class BenchConfig:
    """What to run.

    Attributes:
        device: ``"cuda"``, ``"cpu"``, ``"cuda:1"``...; None picks CUDA when visible.
        sizes: ``"cuda"``, ``"cpu"`` or ``"quick"``; None picks the device type's set (``"quick"`` if ``quick``).
        quick: tiny sizes and few repeats (the test suite's run).
        ops: op names to run (None: all of ``benchmarks.cases.OPS``).
        dtypes: dtype names that replace each shape's own (None: the size set's).
        phases: phases to run (None: every op's own; e.g. ``["fwd", "fwd+bwd"]``).
        providers: provider names to keep (None: every backend available here, plus ``reference+compile``).
        repeats: timed runs per row (None: 100 on CUDA, 20 on the CPU, 3 with ``quick``).
        threads: CPU thread counts: every case runs at each (``torch.set_num_threads``); None: left as it is.
        cpu_level: the instruction-set level of the csrc CPU kernels (``default``, ``avx2``, ``avx512``; None:
            as detected or forced by ``$GRMSEG_CPU_CAPABILITY``).
        sgemm: measure the device's sgemm rate (per thread count on the CPU) for the ``of sgemm`` column, and on
            the CPU the FMA peak of the csrc kernels' level for the ``of FMA`` column.
        malloc: on the CPU, ``"retain"`` makes glibc's malloc keep freed memory (see
            :func:`benchmarks.machine.retain_freed_memory`), ``"default"`` leaves it as it is.
        compile: add the ``reference+compile`` provider.
        memory: measure peak memory.
        peak_bandwidth_gbps: override the device's peak bandwidth (GB/s) for the ``% peak`` column.
        out: directory for ``bench.json`` and ``bench.md`` (None: write nothing).
        log: where progress lines go (default: stderr; None: silent).
    """

    device: str | None = None
    sizes: str | None = None
    quick: bool = False
    ops: list[str] | None = None
    dtypes: list[str] | None = None
    phases: list[str] | None = None
    providers: list[str] | None = None
    repeats: int | None = None
    threads: list[int] | None = None
    cpu_level: str | None = None
    sgemm: bool = True
    malloc: str = "retain"
    compile: bool = True
    memory: bool = True
    peak_bandwidth_gbps: float | None = None
    out: str | None = None
    log: Callable[[str], None] | None = _stderr_log

    def public(self) -> dict[str, object]:
        """The settings as plain data (for the JSON header)."""
        d = asdict(self)
        d.pop("log")
        return d


def _by_thread_count(rates: dict[int | None, float]) -> dict[str, float]:
    """``rates`` keyed by the thread count as text (None: the count in use), as the report stores them."""
    return {str(t or torch.get_num_threads()): v for t, v in rates.items()}


def _release(device: torch.device, collect: bool) -> None:
    """Drop what the last row left behind. A full ``gc.collect`` costs ~0.2 s with torch loaded, so it runs
    after compiled rows (their graphs hold reference cycles), after each case, and after every CUDA row."""
    if collect or device.type == "cuda":
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"


def _uses_reference(ran: str) -> bool:
    return "reference" in ran.split("+") or ran == prov.COMPILED


def _measure(
    case: Case, provider: prov.Provider, inputs: Inputs, row: rep.Row, device: torch.device,
    config: BenchConfig, peak_bw: float | None, memory_ok: bool,
) -> None:
    if provider.compiled:
        torch._dynamo.reset()
    bench = prov.build(case, provider, inputs)
    t0 = time.perf_counter()
    bench.timed()  # compile, autotune, lazy initialisation: not in the timings
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    row.first_call_ms = (time.perf_counter() - t0) * 1e3
    row.note = bench.note
    repeats = config.repeats or (3 if config.quick else None)
    t = timing.time_fn(bench.timed, device, repeats)
    row.median_ms, row.p20_ms, row.p80_ms, row.min_ms, row.max_ms, row.runs = (
        t.median_ms, t.p20_ms, t.p80_ms, t.min_ms, t.max_ms, t.runs,
    )
    row.gbps = row.bytes / (t.median_ms * 1e-3) / 1e9
    row.pct_peak = None if peak_bw is None else 100.0 * row.gbps * 1e9 / peak_bw
    if row.flops:
        row.gflops = row.flops / (t.median_ms * 1e-3) / 1e9
    if config.memory and memory_ok and not provider.external:  # an external library's memory is not seen
        try:
            row.peak_mb = timing.peak_memory_bytes(bench.memory, device) / 2**20
        except Exception as exc:  # noqa: BLE001 - the time stands without the memory figure
            row.note = "; ".join(filter(None, [row.note, f"peak memory failed: {_first_line(exc)}"]))


def _one_row(
    case: Case, provider: prov.Provider, inputs: Inputs, device: torch.device, config: BenchConfig,
    peak_bw: float | None, memory_ok: bool, threads: int | None,
) -> rep.Row:
    ran = prov.ran_backend(case, provider, device)
    row = rep.Row(
        op=case.op.name, phase=case.phase, provider=provider.name, ran=ran, label=prov.row_label(provider, ran),
        shape=case.shape, dtype=case.dtype_name, device=device.type, params=case.params,
        bytes=case.bytes_moved(inputs), threads=threads, flops=case.flops(inputs),
    )
    skip = case.dense_reference_skip(device) if _uses_reference(ran) else None
    if skip:
        row.note = skip
        return row
    try:
        _measure(case, provider, inputs, row, device, config, peak_bw, memory_ok)
    except Exception as exc:  # noqa: BLE001 - one row's failure (OOM, compile error) must not end the run
        row.median_ms = None
        row.note = f"error: {_first_line(exc)}"
    finally:
        _release(device, collect=provider.compiled)
    return row


def run(config: BenchConfig) -> rep.Report:
    """Run the benchmarks of ``config``; write ``bench.json`` and ``bench.md`` when ``config.out`` is set.

    Raises:
        ValueError: for an unknown op, dtype or size-set name, or a device that is not there.
    """
    log = config.log or (lambda _msg: None)
    started = time.perf_counter()
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {config.device!r} was asked for but no CUDA device is visible")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:N], got {config.device!r}")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    size_name = config.sizes or ("quick" if config.quick else device.type)
    if size_name not in SIZE_SETS:
        raise ValueError(f"unknown size set {size_name!r}; choose from {list(SIZE_SETS)}")
    if config.cpu_level:
        from grmseg import _ext

        if config.cpu_level not in _ext.cpu_capabilities():
            raise ValueError(f"cpu_level {config.cpu_level!r} is not available here; levels: {_ext.cpu_capabilities()}")
        _ext.set_cpu_capability(config.cpu_level)
    if config.malloc not in MALLOC_MODES:
        raise ValueError(f"malloc must be one of {MALLOC_MODES}, got {config.malloc!r}")
    malloc = retain_freed_memory() if device.type == "cpu" and config.malloc == "retain" else None
    thread_counts: list[int | None] = [None] if device.type == "cuda" else list(config.threads or [None])
    peak_bw = config.peak_bandwidth_gbps * 1e9 if config.peak_bandwidth_gbps else peak_bandwidth(device)
    report = rep.Report(machine=machine_info(device, peak_bw), config={**config.public(), "sizes": size_name})
    if malloc:
        report.machine["malloc"] = malloc
    sgemm: dict[int | None, float] = {}
    fma: dict[int | None, float] = {}
    if config.sgemm:
        from grmseg import _ext

        fma_probe = device.type == "cpu" and _ext.built()  # the csrc level's ceiling, CPU only
        for threads in thread_counts:
            _set_threads(threads)
            sgemm[threads] = timing.sgemm_gflops(device, 256 if config.quick else 1024)
            if fma_probe:
                fma[threads] = _ext.cpu_fma_peak_gflops()
        report.machine["sgemm_gflops"] = _by_thread_count(sgemm)
        if fma:
            report.machine["fma_peak_level"] = _ext.cpu_capability()
            report.machine["fma_peak_gflops"] = _by_thread_count(fma)

    ops = list(config.ops) if config.ops else list(OPS)
    if "grm_layer" in ops:
        ok, why = grm_layer_available()
        if not ok:
            ops.remove("grm_layer")
            report.notes.append(why)
    cases = make_cases(SIZE_SETS[size_name], ops, config.dtypes, config.phases)
    providers = prov.discover(device, compile=config.compile)
    if config.providers:
        names = [p.name for p in providers]
        missing = [n for n in config.providers if n not in names]
        if missing:
            report.notes.append(f"provider(s) {missing} not available on {device.type}; available: {names}")
        providers = [p for p in providers if p.name in config.providers]
    report.machine["providers"] = [p.name for p in providers]

    memory_ok = True
    if device.type == "cuda":
        report.machine["peak_memory_method"] = "torch.cuda.max_memory_allocated (reset before each probe)"
    elif config.memory:
        memory_ok, how = timing.cpu_profiler_self_check()
        report.machine["peak_memory_method"] = how
        if not memory_ok:
            report.notes.append(f"peak memory not reported: {how}")

    total = len(cases) * len(providers) * len(thread_counts)
    done = 0
    for case in cases:
        inputs = case.inputs(device)
        for threads in thread_counts:
            _set_threads(threads)
            at = "" if threads is None else f" {threads}t"
            for provider in providers:
                if not prov.applies(case, provider):
                    done += 1
                    continue
                row = _one_row(case, provider, inputs, device, config, peak_bw, memory_ok, threads)
                if row.gflops is not None and sgemm.get(threads):
                    row.of_sgemm = row.gflops / sgemm[threads]
                if row.gflops is not None and fma.get(threads) and row.ran == "csrc":
                    row.of_fma = row.gflops / fma[threads]
                report.rows.append(row)
                done += 1
                result = f"{row.median_ms:.4g} ms (first call {row.first_call_ms:.4g} ms)" if row.ok else row.note
                log(f"[{done}/{total}] {row.op} {row.phase} {row.label} {row.shape} {row.dtype}{at}: {result}")
                if row.note:
                    report.notes.append(f"{row.op} {row.phase} {row.label} {row.shape} {row.dtype}{at}: {row.note}")
        del inputs
        _release(device, collect=True)

    rep.add_speedups(report.rows, external.names())
    report.wall_s = time.perf_counter() - started
    if config.out:
        paths = rep.write(report, config.out)
        log(f"wrote {paths[0]} and {paths[1]}")
    return report
