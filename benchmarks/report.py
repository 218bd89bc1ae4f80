"""Results: the row schema, speedups against the reference, and the text table, JSON and Markdown outputs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REFERENCE = "reference"


@dataclass
class Row:
    """One measured (or skipped) case x provider.

    ``provider`` is what was asked for, ``ran`` what actually ran (they differ when a backend lacks the kernel
    and the op layer fell back to ``reference``); ``label`` is what the table shows. Times are milliseconds;
    ``bytes`` is the minimal traffic of :mod:`benchmarks.cases`. ``first_call_ms`` is the untimed first call
    (compilation, autotuning, lazy set-up). ``note`` says why a row has no numbers (or no peak memory).
    ``threads`` is the CPU thread count of the row (None on CUDA); ``flops`` the useful flops of
    :mod:`benchmarks.cases`, ``gflops`` that over the median time and ``of_sgemm`` that as a fraction of the
    machine's sgemm rate at the same thread count (CPU rows); ``of_fma`` as a fraction of the FMA peak of the
    csrc kernels' instruction-set level at that thread count (CPU rows that ran csrc).
    """

    op: str
    phase: str
    provider: str
    ran: str
    label: str
    shape: str
    dtype: str
    device: str
    params: dict[str, Any]
    bytes: int
    threads: int | None = None
    flops: float = 0.0
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    runs: int = 0
    gbps: float | None = None
    pct_peak: float | None = None
    peak_mb: float | None = None
    speedup: float | None = None
    gflops: float | None = None
    of_sgemm: float | None = None
    of_fma: float | None = None
    speedup_vs: str = REFERENCE
    first_call_ms: float | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        """Whether the row has a time."""
        return self.median_ms is not None

    def key(self) -> tuple[str, str, str, str, str, int | None]:
        """What rows are compared on: op, phase, shape, dtype, device, thread count."""
        return (self.op, self.phase, self.shape, self.dtype, self.device, self.threads)


@dataclass
class Report:
    """A whole run: machine facts, the configuration, the rows, the notes (skips, failures), the wall time."""

    machine: dict[str, Any]
    config: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"machine": self.machine, "config": self.config, "wall_s": self.wall_s,
                "rows": [asdict(r) for r in self.rows], "notes": self.notes}


def add_speedups(rows: Sequence[Row], baselines: Sequence[str] = ()) -> None:
    """Set ``speedup`` = base median / row median: the base is the reference-eager row, or, where that has no time
    (the exact reference cannot take the size), the first external baseline of ``baselines`` that has one
    (``speedup_vs`` then names it)."""
    timed = {(r.key(), r.provider): r.median_ms for r in rows if r.ok and (r.provider != REFERENCE or r.ran == REFERENCE)}
    for r in rows:
        base, r.speedup_vs = timed.get((r.key(), REFERENCE)), REFERENCE
        for name in baselines if base is None else ():
            if timed.get((r.key(), name)):
                base, r.speedup_vs = timed[(r.key(), name)], name
                break
        r.speedup = base / r.median_ms if base and r.ok and r.median_ms else None


COLUMNS = ("op", "phase", "provider", "shape", "dtype", "device", "threads", "median ms", "p20-p80 ms", "GB/s",
           "% peak", "GFLOP/s", "of sgemm", "of FMA", "peak MB", "vs ref")
_NUMERIC = {"threads", "median ms", "p20-p80 ms", "GB/s", "% peak", "GFLOP/s", "of sgemm", "of FMA", "peak MB",
            "vs ref"}


def _ms(v: float) -> str:
    return f"{v:.4f}" if v < 0.1 else f"{v:.3f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def _cells(r: Row) -> list[str]:
    if not r.ok:
        timing = ["skipped" if "skipped" in r.note else "error", ""]
    else:
        spread = "" if r.p20_ms is None or r.p80_ms is None else f"{_ms(r.p20_ms)}-{_ms(r.p80_ms)}"
        timing = [_ms(r.median_ms), spread]
    return [
        r.op, r.phase, r.label, r.shape, r.dtype, r.device, "" if r.threads is None else str(r.threads), *timing,
        "" if r.gbps is None else f"{r.gbps:.1f}" if r.gbps >= 10 else f"{r.gbps:.3g}",
        "" if r.pct_peak is None else f"{r.pct_peak:.0f}%",
        "" if r.gflops is None else f"{r.gflops:.1f}" if r.gflops >= 10 else f"{r.gflops:.3g}",
        "" if r.of_sgemm is None else f"{r.of_sgemm:.2f}",
        "" if r.of_fma is None else f"{r.of_fma:.2f}",
        "" if r.peak_mb is None else f"{r.peak_mb:.1f}" if r.peak_mb >= 1 else f"{r.peak_mb:.3f}",
        "" if r.speedup is None else f"{r.speedup:.2f}x" + ("" if r.speedup_vs == REFERENCE else f" ({r.speedup_vs})"),
    ]


def format_table(rows: Sequence[Row]) -> str:
    """A fixed-width text table of ``rows`` (numbers right-aligned)."""
    body = [_cells(r) for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(COLUMNS)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if COLUMNS[i] in _NUMERIC else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(COLUMNS), line(["-" * w for w in widths]), *(line(b) for b in body)])


_LEGEND = (
    "Median of repeated runs after warm-up (p20-p80 beside it), Python's garbage collector paused while timing."
    " GB/s: the minimal bytes each op must read and write once, over the median time (for `random_walk` that"
    " floor ignores its many passes). GFLOP/s: the op's useful flops (benchmarks/cases.py) over the median time;"
    " of sgemm: that over the machine's fp32 sgemm rate (1024^3, torch.mm) at the row's thread count, measured"
    " in the same run; of FMA (csrc rows): that over the fp32 FMA peak of the csrc kernels' instruction-set level"
    " (grmseg._ext.cpu_fma_peak_gflops) at the row's thread count, the ceiling of those kernels (a level"
    " below the CPU's best cannot reach a BLAS that uses wider vectors). Peak MB: the most memory held above the"
    " starting point during one run (`bwd` rows: a"
    " whole forward + backward). vs ref: speed-up over the `reference` backend in eager mode at the same thread"
    " count, or over the external baseline named beside it where the exact reference cannot run (`dense_crf`"
    " against pydensecrf). `a->b`: backend a lacks the kernel, b ran."
)


def _rates(by_threads: dict[str, float]) -> str:
    """``{"1": 188.0, "2": 375.0}`` -> ``"188 GFLOP/s at 1 thread, 375 GFLOP/s at 2 threads"``."""
    return ", ".join(f"{v:.0f} GFLOP/s at {t} thread{'s' if int(t) > 1 else ''}" for t, v in by_threads.items())


def format_markdown(report: Report) -> str:
    """The table as Markdown, with a line on the machine and the notes, ready to paste into the README."""
    m = report.machine
    bw = m.get("peak_bandwidth_gbps")
    sgemm = m.get("sgemm_gflops") or {}
    fma = m.get("fma_peak_gflops") or {}
    head = (
        f"Device: **{m.get('device_name')}** ({m.get('device')}"
        + (f", peak {bw:.0f} GB/s" if bw else "")
        + f"); torch {m.get('torch')}, triton {m.get('triton')}, {m.get('cpu_count')} CPUs"
        + f" ({m.get('torch_threads')} torch threads); {m.get('date')}"
        + (f"; grmseg {m.get('git_commit')}" if m.get("git_commit") else "")
        + "."
        + (f" csrc CPU kernels: {m.get('cpu_kernels')}." if m.get("cpu_kernels") else "")
        + (f" sgemm: {_rates(sgemm)}." if sgemm else "")
        + (f" FMA peak at the {m.get('fma_peak_level')} level: {_rates(fma)}." if fma else "")
        + (f" Memory: {m['malloc']}." if m.get("malloc") else "")
    )
    align = ["---:" if c in _NUMERIC else "---" for c in COLUMNS]
    lines = [
        head,
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(_cells(r)) + " |" for r in report.rows),
        "",
        _LEGEND,
    ]
    if report.notes:
        lines += ["", "Notes:", *(f"- {n}" for n in report.notes)]
    return "\n".join(lines) + "\n"


def write(report: Report, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``bench.json`` and ``bench.md`` under ``out_dir`` (created); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "bench.json", out / "bench.md"
    json_path.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    md_path.write_text(format_markdown(report))
    return json_path, md_path
