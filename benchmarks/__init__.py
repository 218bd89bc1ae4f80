"""Kernel microbenchmarks for grmseg: every op, forward and backward, on every backend this device offers.

Run from the repository root::

    python -m benchmarks                     # the device's default size set, all ops
    python -m benchmarks --out bench-out     # also writes bench-out/bench.json and bench-out/bench.md
    python -m benchmarks --quick --no-compile --ops grm_project,cam

Modules, one job each: :mod:`benchmarks.cases` (what to run: shapes, inputs, bytes moved),
:mod:`benchmarks.providers` (who runs it: one row per backend, plus the reference under ``torch.compile``),
:mod:`benchmarks.external` (baselines outside grmseg: pydensecrf for ``dense_crf``),
:mod:`benchmarks.timing` (timers and peak memory), :mod:`benchmarks.machine` (device facts: name, versions,
peak bandwidth), :mod:`benchmarks.runner` (the loop) and :mod:`benchmarks.report` (table, JSON, Markdown).
"""

from benchmarks.runner import BenchConfig, run

__all__ = ["BenchConfig", "run"]
