"""``make gpu-check`` / ``make gpu-check-quick``: build, the CUDA tests, the benchmarks, on a GPU machine.

    python -m benchmarks.gpu_check PART --out DIR [--skip-build] [--bench-args "..."] [--budget SECONDS]

PART:
    quick       build (the CUDA part for the visible GPU), the CUDA tests of every kernel (the tests of the kernel
                modules whose id names ``cuda``: both GPU backends, fixed configs, plus the autotuned-path test),
                and the headline benchmark rows (``--sizes headline``: GRM layer fwd+bwd, projection and
                reprojection forward in bf16 at B8 C512 64x64 K21, the 256-step random walk at 128x128 K21).
                Fits 6 minutes on an H100/H200, build included: each step gets what is left of ``--budget``.
    tests       build, then the whole test suite (``pytest -n 8`` when pytest-xdist is there).
    bench-grm   build, then the benchmarks of grm_project, grm_reproject and grm_layer (size set "cuda").
    bench-rest  build, then the benchmarks of graph_conv, cam, the affinities and the random walk.
    all         build, the whole suite, every benchmark (the parts above in one run: longer than one device call).
The full check is ``tests`` + ``bench-grm`` + ``bench-rest``, each under 9 minutes.

Everything lands in DIR (at most 8 files): build.log, tests.log, tests.xml (JUnit), bench.log, bench.json,
bench.md, summary.json (every step: command, exit status, seconds; test counts and failures; the benchmark rows
and the issue's targets) and summary.txt, the one-screen summary also printed at the end. A failing step never
stops the others; the exit status is 1 when any step failed. No network is needed: the current ``python``, its
packages and the checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The kernel test modules: their ``cuda`` tests are the quick check's.
KERNEL_TESTS = (
    "tests/test_csrc.py",
    "tests/test_csrc_graph_conv_cuda.py",
    "tests/test_triton_grm.py",
    "tests/test_triton_graph_conv.py",
    "tests/test_wsss_ops.py",
    "tests/test_wsss_random_walk.py",
)
PARTS = ("quick", "tests", "bench-grm", "bench-rest", "all")
BENCH_OPS = {
    "bench-grm": "grm_project,grm_reproject,grm_layer",
    "bench-rest": "graph_conv,cam,local_affinity,boundary_affinity,random_walk,dense_crf",
}
#: Seconds a step may take at most (quick: further capped by what is left of the budget).
STEP_LIMITS = {"build": 240, "tests": 150, "bench": 170}
#: The issue's targets on the headline rows.
TARGET_PCT_PEAK = 70.0
TARGET_LAYER_EAGER = 3.0
TARGET_LAYER_COMPILE = 1.5
TARGET_WALK_MS = 5.0


@dataclass
class Step:
    """One command of the check and how it went."""

    name: str
    cmd: list[str]
    log: str
    rc: int | None = None
    seconds: float = 0.0
    timed_out: bool = False
    info: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.rc == 0


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def plan(part: str, out: Path, skip_build: bool = False, bench_args: Sequence[str] = ()) -> list[Step]:
    """The steps of ``part``, in order (commands only: nothing runs)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    py = sys.executable
    steps = []
    if not skip_build:
        steps.append(Step("build", [py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."],
                          "build.log"))
    xdist = ["-n", "8"] if _has_module("xdist") else []
    junit = f"--junitxml={out / 'tests.xml'}"
    if part == "quick":
        steps.append(Step("tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *xdist, "-k", "cuda",
                                    junit, *KERNEL_TESTS, "tests/test_gpu_autotune.py"], "tests.log"))
        steps.append(Step("bench", [py, "-m", "benchmarks", "--out", str(out), "--sizes", "headline",
                                    "--phases", "fwd,fwd+bwd", *bench_args], "bench.log"))
    if part in ("tests", "all"):
        steps.append(Step("tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *xdist, junit, "tests"],
                          "tests.log"))
    if part in ("bench-grm", "bench-rest"):
        steps.append(Step("bench", [py, "-m", "benchmarks", "--out", str(out), "--ops", BENCH_OPS[part],
                                    *bench_args], "bench.log"))
    if part == "all":
        steps.append(Step("bench", [py, "-m", "benchmarks", "--out", str(out), *bench_args], "bench.log"))
    return steps


def _env(part: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if part == "quick":
        # fixed configs: autotuning compiles every candidate of every launch, minutes on its own; the autotuned
        # path has its own test (tests/test_gpu_autotune.py) and the bench-* parts autotune
        env["GRMSEG_TRITON_AUTOTUNE"] = "0"
    return env


def run_step(step: Step, out: Path, env: dict[str, str], limit: float) -> None:
    """Run ``step`` with its output in ``out/step.log`` (appended), killed after ``limit`` seconds."""
    log_path = out / step.log
    t0 = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(step.cmd)}\n")
        log.flush()
        try:
            proc = subprocess.run(step.cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=max(1.0, limit), check=False)
            step.rc = proc.returncode
        except subprocess.TimeoutExpired:
            step.rc, step.timed_out = 124, True
            log.write(f"\n[gpu_check] {step.name}: killed after {limit:.0f} s\n")
        except OSError as exc:
            step.rc = 127
            log.write(f"\n[gpu_check] {step.name}: could not start: {exc}\n")
    step.seconds = time.perf_counter() - t0


def _backends_summary(env: dict[str, str]) -> str:
    code = "import grmseg; print(grmseg.build_summary())"
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120, check=False)
    except (subprocess.TimeoutExpired, OSError) as exc:
        return f"build_summary failed: {exc}"
    return (proc.stdout + proc.stderr).strip()


def junit_counts(path: Path) -> dict:
    """Passed / failed / skipped counts and the failed test ids of a JUnit file (empty when it is missing)."""
    if not path.is_file():
        return {}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"error": f"unreadable JUnit file: {exc}"}
    counts = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            counts["failures"].append(name)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def bench_summary(path: Path) -> dict:
    """The benchmark rows of ``bench.json`` and the issue's targets on the headline rows."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    rows = [r for r in data.get("rows", []) if r.get("median_ms") is not None]
    targets = []

    def find(op: str, phase: str, provider: str, dtype: str | None = None) -> dict | None:
        for r in rows:
            if r["op"] == op and r["phase"] == phase and r["provider"] == provider and (dtype in (None, r["dtype"])):
                return r
        return None

    for op in ("grm_project", "grm_reproject"):
        for provider in ("triton", "csrc"):
            r = find(op, "fwd", provider, "bf16")
            if r and r.get("pct_peak") is not None:
                targets.append({"what": f"{op} fwd {provider} bf16 {r['shape']}: % of HBM peak",
                                "value": r["pct_peak"], "target": f">= {TARGET_PCT_PEAK:g}",
                                "met": r["pct_peak"] >= TARGET_PCT_PEAK})
    ref, comp = find("grm_layer", "fwd+bwd", "reference", "bf16"), find("grm_layer", "fwd+bwd", "reference+compile",
                                                                         "bf16")
    for provider in ("triton", "csrc"):
        r = find("grm_layer", "fwd+bwd", provider, "bf16")
        if r and ref:
            v = ref["median_ms"] / r["median_ms"]
            targets.append({"what": f"grm_layer fwd+bwd {provider} bf16: x reference eager", "value": v,
                            "target": f">= {TARGET_LAYER_EAGER:g}", "met": v >= TARGET_LAYER_EAGER})
        if r and comp:
            v = comp["median_ms"] / r["median_ms"]
            targets.append({"what": f"grm_layer fwd+bwd {provider} bf16: x reference+compile", "value": v,
                            "target": f">= {TARGET_LAYER_COMPILE:g}", "met": v >= TARGET_LAYER_COMPILE})
    for r in rows:
        if r["op"] == "random_walk" and r["params"].get("H") == 128 and r["provider"] in ("triton", "csrc"):
            targets.append({"what": f"random_walk {r['provider']} {r['shape']}: ms", "value": r["median_ms"],
                            "target": f"< {TARGET_WALK_MS:g}", "met": r["median_ms"] < TARGET_WALK_MS})
    slim = [{k: r.get(k) for k in ("op", "phase", "provider", "ran", "shape", "dtype", "median_ms", "gbps",
                                   "pct_peak", "speedup", "first_call_ms")} for r in rows]
    notes = [n for n in data.get("notes", []) if "error" in n]
    return {"machine": data.get("machine", {}), "rows": slim, "targets": targets, "errors": notes,
            "rows_without_time": len(data.get("rows", [])) - len(rows)}


def format_summary(part: str, steps: Sequence[Step], backends: str, tests: dict, bench: dict, wall: float) -> str:
    """The one-screen summary."""
    lines = [f"grmseg gpu-check {part}: {wall:.0f} s"]
    machine = bench.get("machine", {}) if bench else {}
    if machine:
        lines.append(f"device: {machine.get('device_name') or machine.get('device')}, torch {machine.get('torch')}, "
                     f"triton {machine.get('triton')}, peak {machine.get('peak_bandwidth_gbps')} GB/s")
    for s in steps:
        state = "ok" if s.ok else ("TIMED OUT" if s.timed_out else f"FAILED (exit {s.rc})")
        lines.append(f"  {s.name:<6} {s.seconds:6.0f} s  {state}  (log: {s.log})")
    for line in backends.splitlines():
        if line.strip().startswith(("triton", "csrc", "reference", "grmseg._C")):
            lines.append(f"  {line.strip()[:110]}")
    if tests:
        lines.append(f"tests: {tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed, "
                     f"{tests.get('skipped', 0)} skipped")
        for name in tests.get("failures", [])[:12]:
            lines.append(f"  FAILED {name}")
        if len(tests.get("failures", [])) > 12:
            lines.append(f"  ... {len(tests['failures']) - 12} more in tests.log")
    if bench:
        lines.append("benchmarks (median ms, GB/s, % of peak, x reference):")
        for r in bench.get("rows", [])[:24]:
            pct = "" if r["pct_peak"] is None else f"{r['pct_peak']:5.1f}%"
            sp = "" if r["speedup"] is None else f"x{r['speedup']:.2f}"
            lines.append(f"  {r['op']:<13} {r['phase']:<7} {r['provider']:<17} {r['dtype']:<4} "
                         f"{r['median_ms']:9.4f} {r['gbps'] or 0:8.1f} {pct:>7} {sp:>7}")
        for t in bench.get("targets", []):
            lines.append(f"  target {'met ' if t['met'] else 'MISS'} {t['what']} = {t['value']:.3g} ({t['target']})")
        for n in bench.get("errors", [])[:6]:
            lines.append(f"  {n[:120]}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the part; returns 0 when every step succeeded."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=PARTS)
    p.add_argument("--out", required=True, help="folder for the logs and JSON")
    p.add_argument("--skip-build", action="store_true", help="use the extension as built")
    p.add_argument("--bench-args", default="", help="more arguments for python -m benchmarks (one string)")
    p.add_argument("--budget", type=float, default=345.0,
                   help="seconds the quick part may take in all (default 345: 6 minutes with a margin)")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    steps = plan(a.part, out, a.skip_build, shlex.split(a.bench_args))
    env = _env(a.part)
    started = time.perf_counter()
    backends = ""
    for step in steps:
        limit = STEP_LIMITS[step.name] if a.part == "quick" else 9 * 3600
        if a.part == "quick":
            left = a.budget - (time.perf_counter() - started)
            later = sum(min(STEP_LIMITS[s.name], 60) for s in steps[steps.index(step) + 1:])
            limit = max(20.0, min(limit, left - later * 0.5))
        print(f"[gpu_check] {step.name}: {shlex.join(step.cmd)} (limit {limit:.0f} s)", flush=True)
        run_step(step, out, env, limit)
        print(f"[gpu_check] {step.name}: exit {step.rc} after {step.seconds:.0f} s", flush=True)
        if step.name == "build":
            backends = _backends_summary(env)
            with open(out / step.log, "a", encoding="utf-8") as log:
                log.write("\n" + backends + "\n")
    if not backends:
        backends = _backends_summary(env)
    tests = junit_counts(out / "tests.xml") if any(s.name == "tests" for s in steps) else {}
    bench = bench_summary(out / "bench.json") if any(s.name == "bench" for s in steps) else {}
    wall = time.perf_counter() - started
    text = format_summary(a.part, steps, backends, tests, bench, wall)
    (out / "summary.txt").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps({
        "part": a.part, "wall_s": wall, "steps": [asdict(s) | {"ok": s.ok} for s in steps], "backends": backends,
        "tests": tests, "bench": bench,
    }, indent=1, default=str))
    print(text)
    return 0 if all(s.ok for s in steps) else 1


if __name__ == "__main__":
    raise SystemExit(main())
