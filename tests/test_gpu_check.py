"""make gpu-check / gpu-check-quick (benchmarks/gpu_check.py): the plan of each part, the step runner's limits,
the JUnit and benchmark summaries and the issue's targets, checked here without a GPU (no build, no timing)."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks import gpu_check as gc


def test_parts_plan_the_right_steps(tmp_path):
    quick = gc.plan("quick", tmp_path)
    assert [s.name for s in quick] == ["build", "tests", "bench"]
    tests = quick[1].cmd
    assert "-k" in tests and tests[tests.index("-k") + 1] == "cuda"
    assert all(t in tests for t in gc.KERNEL_TESTS) and "tests/test_gpu_autotune.py" in tests
    bench = quick[2].cmd
    assert bench[bench.index("--sizes") + 1] == "headline" and "fwd,fwd+bwd" in bench
    assert [s.name for s in gc.plan("tests", tmp_path, skip_build=True)] == ["tests"]
    for part, ops in gc.BENCH_OPS.items():
        (step,) = gc.plan(part, tmp_path, skip_build=True, bench_args=["--dtype", "bf16"])
        assert step.cmd[step.cmd.index("--ops") + 1] == ops and step.cmd[-2:] == ["--dtype", "bf16"]
    assert [s.name for s in gc.plan("all", tmp_path)] == ["build", "tests", "bench"]
    # the parts of the full check cover every benchmark op
    from benchmarks.cases import OPS

    assert sorted(",".join(gc.BENCH_OPS.values()).split(",")) == sorted(OPS)
    with pytest.raises(ValueError, match="part must be one of"):
        gc.plan("everything", tmp_path)
    assert gc._env("quick")["GRMSEG_TRITON_AUTOTUNE"] == "0"  # the benchmark parts keep the caller's setting


def test_step_runner_logs_and_kills_at_the_limit(tmp_path):
    ok = gc.Step("tests", [sys.executable, "-c", "print('hello')"], "a.log")
    gc.run_step(ok, tmp_path, {}, limit=60)
    assert ok.ok and "hello" in (tmp_path / "a.log").read_text()
    slow = gc.Step("bench", [sys.executable, "-c", "import time; time.sleep(30)"], "b.log")
    gc.run_step(slow, tmp_path, {}, limit=1)
    assert slow.timed_out and slow.rc == 124 and not slow.ok and "killed after" in (tmp_path / "b.log").read_text()


def test_summaries_and_targets(tmp_path):
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.test_a" name="t1"/>'
        '<testcase classname="tests.test_a" name="t2"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_b" name="t3"><skipped/></testcase></testsuite></testsuites>'
    )
    counts = gc.junit_counts(tmp_path / "tests.xml")
    assert counts == {"passed": 1, "failed": 1, "skipped": 1, "failures": ["tests.test_a::t2"]}
    assert gc.junit_counts(tmp_path / "missing.xml") == {}

    def row(op, phase, provider, ms, pct=None, h=64):
        return {"op": op, "phase": phase, "provider": provider, "ran": provider, "shape": "s", "dtype": "bf16"
                if op != "random_walk" else "fp32", "median_ms": ms, "gbps": 1.0, "pct_peak": pct, "speedup": None,
                "first_call_ms": 1.0, "params": {"H": h}}

    rows = [row("grm_project", "fwd", "triton", 0.1, 75.0), row("grm_reproject", "fwd", "triton", 0.1, 50.0),
            row("grm_layer", "fwd+bwd", "reference", 9.0), row("grm_layer", "fwd+bwd", "reference+compile", 4.0),
            row("grm_layer", "fwd+bwd", "triton", 2.0), row("random_walk", "fwd", "triton", 3.0, h=128),
            {**row("random_walk", "fwd", "csrc", 1.0, h=128), "median_ms": None}]
    (tmp_path / "bench.json").write_text(json.dumps({"machine": {"device_name": "GPU"}, "rows": rows,
                                                     "notes": ["cam fwd triton: error: boom", "fine"]}))
    bench = gc.bench_summary(tmp_path / "bench.json")
    met = {t["what"].split(":")[0]: t["met"] for t in bench["targets"]}
    assert met["grm_project fwd triton bf16 s"] and not met["grm_reproject fwd triton bf16 s"]
    layer = [t for t in bench["targets"] if t["what"].startswith("grm_layer")]
    assert [round(t["value"], 2) for t in layer] == [4.5, 2.0] and all(t["met"] for t in layer)
    assert any(t["what"].startswith("random_walk triton") and t["met"] for t in bench["targets"])
    assert bench["rows_without_time"] == 1 and bench["errors"] == ["cam fwd triton: error: boom"]
    steps = [gc.Step("build", ["x"], "build.log", rc=0, seconds=80), gc.Step("tests", ["y"], "tests.log", rc=1),
             gc.Step("bench", ["z"], "bench.log", rc=124, timed_out=True)]
    text = gc.format_summary("quick", steps, "  triton cuda: yes\nother", counts, bench, 300)
    assert "FAILED tests.test_a::t2" in text and "TIMED OUT" in text and "target MISS" in text
    assert "triton cuda: yes" in text and "other" not in text
    assert len(text.splitlines()) < 60  # one screen
