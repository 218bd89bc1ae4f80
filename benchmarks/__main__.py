"""Command line: ``python -m benchmarks [--out DIR] [--device D] [--ops a,b] [--dtype bf16,fp32] [--quick] ...``.

Prints the table on stdout (progress on stderr) and, with ``--out``, writes ``bench.json`` and ``bench.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from benchmarks import external
from benchmarks.cases import DTYPES, OPS, PHASES, SIZE_SETS
from benchmarks.machine import MALLOC_MODES
from benchmarks.providers import COMPILED
from benchmarks.report import format_table
from benchmarks.runner import BenchConfig, run
from grmseg.ops import BACKEND_NAMES


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    """Parse the command line into a :class:`BenchConfig`."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="grmseg kernel microbenchmarks: every op, forward and backward, on every backend of the device.",
    )
    p.add_argument("--out", metavar="DIR", help="write DIR/bench.json and DIR/bench.md")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when visible)")
    p.add_argument("--ops", type=_csv, metavar="A,B", help=f"ops to run (default all: {','.join(OPS)})")
    p.add_argument("--dtype", type=_csv, metavar="D,E", dest="dtypes",
                   help=f"dtypes replacing each shape's own ({', '.join(sorted(set(DTYPES)))})")
    p.add_argument("--phases", type=_csv, metavar="P,Q",
                   help=f"phases to keep ({', '.join(PHASES)}; default: every op's own)")
    p.add_argument("--providers", type=_csv, metavar="P,Q",
                   help="providers to keep (default: every available backend, the external baselines that import "
                        "(pydensecrf for dense_crf), plus reference+compile)")
    p.add_argument("--sizes", choices=sorted(SIZE_SETS), help="size set (default: the device type's)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and 3 runs per row: a smoke test")
    p.add_argument("--repeats", type=int, metavar="N", help="timed runs per row (default 100 CUDA, 20 CPU)")
    p.add_argument("--threads", type=_csv, metavar="N,M",
                   help="CPU thread counts: every case runs at each, e.g. 1,2 (default: left as it is)")
    p.add_argument("--cpu-level", choices=("default", "avx2", "avx512"),
                   help="instruction-set level of the csrc CPU kernels (default: detected, or $GRMSEG_CPU_CAPABILITY)")
    p.add_argument("--no-sgemm", dest="sgemm", action="store_false",
                   help="do not measure the sgemm rate (nor, on the CPU, the FMA peak of the csrc level)")
    p.add_argument("--malloc", choices=MALLOC_MODES, default="retain",
                   help="CPU: 'retain' (default) makes glibc's malloc reuse freed memory instead of faulting every "
                        "call's buffers in afresh; 'default' leaves the allocator as it is")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="leave out reference+compile")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="do not measure peak memory")
    p.add_argument("--peak-bandwidth", type=float, metavar="GBPS", dest="peak_bandwidth_gbps",
                   help="peak memory bandwidth of the device in GB/s (default: known for H100/H200/A100...)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    a = p.parse_args(argv)
    if a.repeats is not None and a.repeats < 1:
        p.error("--repeats must be >= 1")
    threads = None
    if a.threads is not None:
        try:
            threads = [int(t) for t in a.threads]
        except ValueError:
            p.error(f"--threads must be positive integers, got {','.join(a.threads)}")
        if not threads or min(threads) < 1:
            p.error("--threads must be positive integers")
    for name in a.ops or ():
        if name not in OPS:
            p.error(f"unknown op {name!r}; choose from {', '.join(OPS)}")
    known = (*BACKEND_NAMES, *external.names(), COMPILED)
    for name in a.providers or ():
        if name not in known:
            p.error(f"unknown provider {name!r}; choose from {', '.join(known)}")
    for name in a.dtypes or ():
        if name not in DTYPES:
            p.error(f"unknown dtype {name!r}; choose from {', '.join(sorted(DTYPES))}")
    for name in a.phases or ():
        if name not in PHASES:
            p.error(f"unknown phase {name!r}; choose from {', '.join(PHASES)}")
    config = BenchConfig(
        device=a.device, sizes=a.sizes, quick=a.quick, ops=a.ops, dtypes=a.dtypes, phases=a.phases,
        providers=a.providers, repeats=a.repeats, threads=threads, cpu_level=a.cpu_level, sgemm=a.sgemm,
        malloc=a.malloc, compile=a.compile, memory=a.memory, peak_bandwidth_gbps=a.peak_bandwidth_gbps, out=a.out,
    )
    if a.quiet:
        config.log = None
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks and print the table; returns the exit status (1 when no row has a time)."""
    config = parse_args(argv)
    try:
        report = run(config)
    except ValueError as exc:
        print(f"python -m benchmarks: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(report.rows))
    for note in report.notes:
        print(f"note: {note}")
    return 0 if any(r.ok for r in report.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
