"""The benchmark harness (benchmarks/): a quick CPU run end to end, bytes moved, peak memory, labels.

Timings are never asserted; only that the harness produces them.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import pytest
import torch

import grmseg

# benchmarks/ is a top-level package of the repository, not installed: make it importable under plain `pytest`.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks import providers, report, timing
from benchmarks.__main__ import main, parse_args
from benchmarks.cases import OPS, SIZE_SETS, make_cases

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # triton is left out: on the CPU it only runs in its (slow) interpreter, which says nothing about speed
    args = ["--quick", "--device", "cpu", "--no-compile", "--providers", "reference,csrc", "--quiet",
            "--threads", "1,2"]
    rc = main([*args, "--out", str(out)])
    return rc, out


def test_quick_run_writes_json_and_markdown(quick_run):
    rc, out = quick_run
    assert rc == 0
    data = json.loads((out / "bench.json").read_text())
    for key in ("device_name", "torch", "triton", "cpu_count", "date", "peak_memory_method"):
        assert key in data["machine"]
    rows = data["rows"]
    expected_ops = set(OPS) if hasattr(grmseg, "GRM") else set(OPS) - {"grm_layer"}
    assert {r["op"] for r in rows} == expected_ops
    assert set(data["machine"]["sgemm_gflops"]) == {"1", "2"} and all(v > 0 for v in data["machine"]["sgemm_gflops"].values())
    assert data["machine"]["cpu_kernels"].split()[0] in grmseg._ext.cpu_capabilities()
    assert data["machine"]["fma_peak_level"] == grmseg._ext.cpu_capability()
    assert set(data["machine"]["fma_peak_gflops"]) == {"1", "2"}
    assert all(v > 0 for v in data["machine"]["fma_peak_gflops"].values())
    if platform.libc_ver()[0] == "glibc":
        assert "keeps freed memory" in data["machine"]["malloc"]
    # every op and phase has a timed reference row at each thread count
    for name in expected_ops:
        for phase in OPS[name].phases():
            for threads in (1, 2):
                ref = [r for r in rows if r["op"] == name and r["phase"] == phase and r["label"] == "reference"
                       and r["threads"] == threads]
                assert len(ref) == 1, (name, phase, threads)
                assert ref[0]["median_ms"] > 0 and ref[0]["speedup"] == pytest.approx(1.0)
                assert ref[0]["peak_mb"] is not None and ref[0]["peak_mb"] >= 0
    for r in rows:
        assert r["bytes"] > 0 and r["flops"] > 0 and r["threads"] in (1, 2)
        if r["median_ms"] is not None:
            assert r["median_ms"] > 0 and r["gbps"] > 0 and r["runs"] >= 1
            assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
            assert r["gflops"] == pytest.approx(r["flops"] / r["median_ms"] / 1e6)
            assert r["of_sgemm"] == pytest.approx(r["gflops"] / data["machine"]["sgemm_gflops"][str(r["threads"])])
            if r["ran"] == "csrc":  # the FMA peak of the csrc level is the ceiling of csrc rows only
                assert r["of_fma"] == pytest.approx(r["gflops"] / data["machine"]["fma_peak_gflops"][str(r["threads"])])
            else:
                assert r["of_fma"] is None
        else:
            assert r["note"]  # a row without a time says why
    md = (out / "bench.md").read_text()
    assert "| op | phase | provider |" in md and "grm_project" in md and "of sgemm" in md and "sgemm:" in md
    assert "of FMA" in md and "FMA peak at the" in md


def test_useful_flops():
    cases = {(c.op.name, c.phase, c.params.get("H")): c for c in make_cases(SIZE_SETS["cpu"])}
    walk = cases[("random_walk", "fwd", 32)]
    t = walk.inputs(CPU)
    # the definition: 2 * steps * N * (1 + 2D) * K, D = 34 for radius 5
    assert walk.flops(t) == 2 * 256 * 32 * 32 * 69 * 21
    grm = cases[("grm_project", "bwd", 64)]
    assert grm.flops(grm.inputs(CPU)) == 5 * 2 * 2 * 21 * 256 * 64 * 64


def test_bytes_moved_match_the_outputs():
    """The forward bytes are exactly the inputs plus the outputs the reference op returns."""
    for case in make_cases(SIZE_SETS["quick"], [n for n in OPS if n != "grm_layer"]):
        if case.phase != "fwd":
            continue
        inputs = case.inputs(CPU)
        args = [inputs[a] for a in case.op.args]
        outs = getattr(grmseg.reference, case.op.name)(*args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        read = sum(t.nbytes for t in inputs.values() if isinstance(t, torch.Tensor))
        assert case.bytes_moved(inputs) == read + sum(t.nbytes for t in outs), case.op.name


def test_backward_bytes_count_grads_in_and_out():
    case = next(c for c in make_cases(SIZE_SETS["quick"], ["grm_reproject"]) if c.phase == "bwd")
    x, q, v = (case.inputs(CPU)[n] for n in ("x", "q", "v"))
    # read gy, x, q, v; write gx, gq, gv
    assert case.bytes_moved(case.inputs(CPU)) == 3 * x.nbytes + 2 * q.nbytes + 2 * v.nbytes


def test_cpu_peak_memory_reads_known_allocations():
    ok, how = timing.cpu_profiler_self_check()
    assert ok, how

    def alloc() -> torch.Tensor:
        a = torch.empty(4_000_000, dtype=torch.uint8)
        b = torch.empty(1_000_000, dtype=torch.uint8)
        del a
        return b

    assert 5_000_000 <= timing.peak_memory_bytes(alloc, CPU) < 5_100_000


def test_summarize_quantiles():
    t = timing.summarize([5.0, 1.0, 2.0, 4.0, 3.0])
    assert (t.median_ms, t.min_ms, t.max_ms, t.runs) == (3.0, 1.0, 5.0, 5)
    assert t.p20_ms == pytest.approx(1.8) and t.p80_ms == pytest.approx(4.2)


def test_providers_and_labels():
    found = providers.discover(CPU, compile=True)
    assert found[0].name == "reference" and found[-1].name == providers.COMPILED and found[-1].compiled
    assert providers.discover(CPU, compile=False)[0].name == "reference"
    p = providers.Provider("triton", "triton")
    assert providers.row_label(p, "triton") == "triton"
    assert providers.row_label(p, "reference") == "triton->reference"
    assert providers.row_label(p, "reference+triton") == "triton(+reference)"


def test_speedups_against_reference_eager():
    def row(provider: str, ms: float) -> report.Row:
        return report.Row("cam", "fwd", provider, provider, provider, "s", "fp32", "cpu", {}, 1, median_ms=ms)

    rows = [row("reference", 4.0), row("triton", 1.0), row(providers.COMPILED, 2.0)]
    report.add_speedups(rows)
    assert [r.speedup for r in rows] == [1.0, 4.0, 2.0]
    table = report.format_table(rows)
    assert "4.00x" in table and "median ms" in table


def test_cli_rejects_unknown_names():
    with pytest.raises(SystemExit):
        parse_args(["--ops", "nope"])
    with pytest.raises(SystemExit):
        parse_args(["--dtype", "int8"])
    with pytest.raises(SystemExit):
        parse_args(["--providers", "cuda"])
    with pytest.raises(SystemExit):
        parse_args(["--threads", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--cpu-level", "sse9"])
    cfg = parse_args(["--ops", "cam,random_walk", "--dtype", "bf16", "--repeats", "5", "--no-compile",
                      "--providers", "reference,triton", "--threads", "1,2", "--cpu-level", "avx2"])
    assert cfg.ops == ["cam", "random_walk"] and cfg.dtypes == ["bf16"] and cfg.repeats == 5 and not cfg.compile
    assert cfg.providers == ["reference", "triton"] and cfg.threads == [1, 2] and cfg.cpu_level == "avx2"
    assert cfg.malloc == "retain" and parse_args(["--malloc", "default"]).malloc == "default"
    with pytest.raises(SystemExit):
        parse_args(["--malloc", "jemalloc"])


def test_external_baseline_rows_for_their_op_only():
    from benchmarks import external

    assert "pydensecrf" in external.names()
    found = providers.discover(CPU, compile=True)
    names = [p.name for p in found]
    assert names[-1] == providers.COMPILED
    crf = next(c for c in make_cases(SIZE_SETS["quick"], ["dense_crf"]))
    cam = next(c for c in make_cases(SIZE_SETS["quick"], ["cam"]))
    ext = providers.Provider("pydensecrf", "", external=True)
    assert providers.applies(crf, ext) and not providers.applies(cam, ext)
    assert providers.applies(cam, providers.Provider("csrc", "csrc"))
    assert providers.ran_backend(crf, ext, CPU) == "pydensecrf"
    if external.available("pydensecrf"):
        assert "pydensecrf" in names
        bench = providers.build(crf, ext, crf.inputs(CPU))
        out = bench.timed()
        assert out.shape == crf.inputs(CPU)["unary"].shape
        assert "labels agree with grmseg on 100.000% of pixels" in bench.note
    else:
        assert "pydensecrf" not in names


def test_speedup_falls_back_to_the_external_baseline():
    def row(provider: str, ms: float | None, ran: str | None = None) -> report.Row:
        r = report.Row("dense_crf", "fwd", provider, ran or provider, provider, "s", "fp32", "cpu", {}, 1)
        r.median_ms = ms
        return r

    rows = [row("reference", None), row("csrc", 1.0), row("pydensecrf", 3.0)]
    report.add_speedups(rows, ["pydensecrf"])
    assert [r.speedup for r in rows] == [None, 3.0, 1.0]
    assert rows[1].speedup_vs == "pydensecrf"
    assert "3.00x (pydensecrf)" in report.format_table(rows)
    rows = [row("reference", 2.0), row("csrc", 1.0), row("pydensecrf", 3.0)]
    report.add_speedups(rows, ["pydensecrf"])
    assert rows[1].speedup == 2.0 and rows[1].speedup_vs == "reference"


def test_interleaved_rows_on_quick_sizes():
    from benchmarks import interleaved

    rows = interleaved.compare(["cam", "random_walk"], [1], rounds=2, sizes="quick", log=lambda s: None)
    assert [r["op"] for r in rows] == ["cam", "random_walk"]
    for r in rows:
        assert r["csrc_ms"] > 0 and r["ref_ms"] > 0 and r["ratio"] > 0 and r["of_sgemm"] > 0 and r["threads"] == 1
    assert "| cam | fwd |" in interleaved.format_markdown(rows)
    rows = interleaved.compare(["random_walk"], [1], rounds=1, sizes="quick", dense_max_pixels=1, log=lambda s: None)
    assert "ref_ms" not in rows[0] and "not run (dense)" in interleaved.format_markdown(rows)
    rows = interleaved.compare(["grm_layer"], [1], rounds=2, sizes="quick", log=lambda s: None, recompute=True)
    assert rows[0]["recompute_ms"] > 0 and rows[0]["keep_gain"] > 0 and rows[0]["recompute_ratio"] > 0
    assert "keep gain" in interleaved.format_markdown(rows)
