"""Interleaved A/B timing of csrc against the eager reference on a shared CPU: ``python -m benchmarks.interleaved``.

On a machine shared with other work the load changes from one second to the next, so rows timed one after the
other (the main harness) compare different machines. Here every round times the reference once, csrc once and
(for ``of sgemm``) one 1024^3 sgemm, in alternating order, so each ratio compares calls made within a fraction of
a second of each other; the table gives the medians over the rounds (times and per-round ratios).
Cases: the CPU size set (:mod:`benchmarks.cases`), fp32, at every thread count given; the dense reference random
walk only where it fits ``--dense-max-pixels`` (it takes seconds a call). With ``--recompute``, the GRM layer is
also timed with ``keep_assignment=False`` in the same rounds (``recompute ms``, and ``keep gain``: the median
per-round ratio of the two csrc times).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import providers as prov
from benchmarks.cases import SIZE_SETS, make_cases
from benchmarks.machine import MALLOC_MODES, machine_info, retain_freed_memory

REF, CSRC = prov.Provider("reference", "reference"), prov.Provider("csrc", "csrc")


def _once(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _recomputing(case: Any, inputs: dict[str, Any]) -> Callable[[], Any]:
    """The GRM layer case's csrc step with the layer's assignments recomputed (``keep_assignment=False``)."""
    module = copy.deepcopy(inputs["module"])
    module.keep_assignment = False
    return prov.build(case, CSRC, {**inputs, "module": module}).timed


def compare(
    ops: Sequence[str] | None, threads: Sequence[int], rounds: int, sizes: str = "cpu", dense_max_pixels: int = 32 * 32,
    log: Callable[[str], None] = print, recompute: bool = False,
) -> list[dict[str, Any]]:
    """Rows of ``{op, phase, shape, threads, ref_ms, csrc_ms, ratio, of_sgemm}`` (medians over ``rounds``); with
    ``recompute``, the GRM layer's rows also have ``recompute_ms`` and ``keep_gain``."""
    device = torch.device("cpu")
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    out = []
    for case in make_cases(SIZE_SETS[sizes], ops):
        if case.dtype_name != "fp32":
            continue
        inputs = case.inputs(device)
        dense = case.op.name != "random_walk" or case.params["H"] * case.params["W"] <= dense_max_pixels
        flops = case.flops(inputs)
        for t in threads:
            torch.set_num_threads(t)
            ref = prov.build(case, REF, inputs).timed if dense else None
            ours = prov.build(case, CSRC, inputs).timed
            again = _recomputing(case, inputs) if recompute and case.op.name == "grm_layer" else None
            for fn in (ref, ours, again):
                if fn is not None:
                    fn()
            times: dict[str, list[float]] = {"ref": [], "csrc": [], "sgemm": [], "recompute": []}
            gc.disable()
            try:
                for i in range(rounds):
                    order = [("ref", ref), ("csrc", ours), ("recompute", again), ("sgemm", lambda: torch.mm(a, b))]
                    for name, fn in order if i % 2 == 0 else order[::-1]:
                        if fn is not None:
                            times[name].append(_once(fn))
            finally:
                gc.enable()
            row: dict[str, Any] = {"op": case.op.name, "phase": case.phase, "shape": case.shape, "threads": t,
                                   "rounds": rounds, "csrc_ms": statistics.median(times["csrc"])}
            sgemm_rate = [2 * 1024**3 / (ms * 1e-3) for ms in times["sgemm"]]
            row["of_sgemm"] = statistics.median(
                flops / (c * 1e-3) / s for c, s in zip(times["csrc"], sgemm_rate, strict=True))
            row["sgemm_gflops"] = statistics.median(sgemm_rate) / 1e9
            if ref is not None:
                row["ref_ms"] = statistics.median(times["ref"])
                row["ratio"] = statistics.median(r / c for r, c in zip(times["ref"], times["csrc"], strict=True))
            if again is not None:
                row["recompute_ms"] = statistics.median(times["recompute"])
                row["keep_gain"] = statistics.median(
                    r / c for r, c in zip(times["recompute"], times["csrc"], strict=True))
                if ref is not None:
                    row["recompute_ratio"] = statistics.median(
                        r / c for r, c in zip(times["ref"], times["recompute"], strict=True))
            out.append(row)
            ratio = f" ratio {row['ratio']:.2f}x" if "ratio" in row else ""
            if "keep_gain" in row:
                ratio += f" (recompute {row['recompute_ms']:.4g} ms, keep gain {row['keep_gain']:.2f}x)"
            log(f"{case.op.name} {case.phase} {case.shape} {t}t: csrc {row['csrc_ms']:.4g} ms{ratio}"
                f" of sgemm {row['of_sgemm']:.2f}")
        del inputs
    return out


def format_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table (with the recompute columns when a row has them)."""
    extra = any("keep_gain" in r for r in rows)
    head = "| op | phase | shape | threads | reference ms | csrc ms | csrc vs ref (median ratio) | csrc of sgemm |"
    lines = [head + (" csrc recompute ms | recompute vs ref | keep gain |" if extra else ""),
             "|---|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if extra else "")]
    for r in rows:
        ref = f"{r['ref_ms']:.4g}" if "ref_ms" in r else "not run (dense)"
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else ""
        line = (f"| {r['op']} | {r['phase']} | {r['shape']} | {r['threads']} | {ref} | {r['csrc_ms']:.4g} | "
                f"{ratio} | {r['of_sgemm']:.2f} |")
        if extra:
            if "keep_gain" in r:
                rr = f"{r['recompute_ratio']:.2f}x" if "recompute_ratio" in r else ""
                line += f" {r['recompute_ms']:.4g} | {rr} | {r['keep_gain']:.2f}x |"
            else:
                line += "  |  |  |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--ops``, ``--threads 1,2``, ``--rounds``, ``--cpu-level``, ``--malloc``, ``--out DIR``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.interleaved", description=__doc__.splitlines()[0])
    p.add_argument("--ops", help="comma-separated op names (default: all)")
    p.add_argument("--threads", default="1", help="thread counts, e.g. 1,2")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--sizes", default="cpu", choices=sorted(SIZE_SETS))
    p.add_argument("--cpu-level", choices=("default", "avx2", "avx512"))
    p.add_argument("--dense-max-pixels", type=int, default=32 * 32)
    p.add_argument("--malloc", choices=MALLOC_MODES, default="retain",
                   help="'retain' (default): glibc malloc reuses freed memory (see benchmarks.machine."
                        "retain_freed_memory); 'default': the allocator as it is")
    p.add_argument("--recompute", action="store_true",
                   help="also time the GRM layer with keep_assignment=False in the same rounds")
    p.add_argument("--out", help="write DIR/interleaved.json and DIR/interleaved.md")
    a = p.parse_args(argv)
    malloc = retain_freed_memory() if a.malloc == "retain" else None
    if a.cpu_level:
        from grmseg import _ext

        _ext.set_cpu_capability(a.cpu_level)
    ops = a.ops.split(",") if a.ops else [n for n in ("grm_project", "grm_reproject", "graph_conv", "cam",
                                                       "local_affinity", "boundary_affinity", "random_walk",
                                                       "grm_layer")]
    threads = [int(t) for t in a.threads.split(",")]
    rows = compare(ops, threads, a.rounds, a.sizes, a.dense_max_pixels, recompute=a.recompute)
    md = format_markdown(rows)
    print(md)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        from grmseg import _ext

        info = {"machine": machine_info(torch.device("cpu"), None), "cpu_level": _ext.cpu_capability(),
                "rounds": a.rounds, "malloc": malloc, "rows": rows}
        (out / "interleaved.json").write_text(json.dumps(info, indent=1))
        (out / "interleaved.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
