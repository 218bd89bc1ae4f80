"""The instruction-set levels of the CPU kernels (csrc/cpu/capability.h): what the build contains, the run-time
choice, $GRMSEG_CPU_CAPABILITY, what `python -m grmseg info` reports, and that every level computes the same
results (each kernel's own tests run at every level through the `cpu_level` fixture of conftest.py).

These tests fail, never skip, when grmseg._C is missing: `make build` builds it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import grmseg
from grmseg import _ext

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ("default", "avx2", "avx512")


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _expected_levels() -> tuple[str, ...]:
    """The levels an x86-64 Linux build must offer on this CPU (a build regression would lose them)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or os.environ.get("GRMSEG_CPU_LEVELS"):
        return ("default",)
    flags = _cpu_flags()
    out = ["default"]
    if {"avx2", "fma", "f16c", "bmi1", "bmi2", "abm"} <= flags:
        out.append("avx2")
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
            out.append("avx512")
    return tuple(out)


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    full_env.pop("GRMSEG_CPU_CAPABILITY", None)
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300,
                          check=False)


def test_levels_built_and_detected():
    assert _ext.built(), _ext.load_error()
    levels = _ext.cpu_capabilities()
    assert levels[0] == "default" and set(levels) <= set(LEVELS)
    assert list(levels) == sorted(levels, key=LEVELS.index)
    for expected in _expected_levels():
        assert expected in levels, (expected, levels, _ext.cpu_capability_report())
    assert _ext.cpu_capability() in levels
    info = _ext.build_info()
    assert info["cpu_capability"] == _ext.cpu_capability()
    assert info["cpu_capabilities"] == ",".join(levels)


def test_set_cpu_capability_switches_and_rejects_unknown_levels():
    before = _ext.cpu_capability()
    try:
        for level in _ext.cpu_capabilities():
            _ext.set_cpu_capability(level)
            assert _ext.cpu_capability() == level
            assert _ext.cpu_capability_report().startswith(f"{level} (set at run time")
    finally:
        _ext.set_cpu_capability(before)
    with pytest.raises(ValueError, match="level must be one of"):
        _ext.set_cpu_capability("sse9")
    with pytest.raises(ValueError, match="level must be"):
        _ext._C.set_cpu_capability("sse9")
    with pytest.raises(TypeError, match="must be a str"):
        _ext._C.set_cpu_capability(3)
    unsupported = [lv for lv in LEVELS if lv not in _ext.cpu_capabilities()]
    for level in unsupported:
        with pytest.raises(ValueError, match="not available here"):
            _ext._C.set_cpu_capability(level)


@pytest.mark.parametrize("level", LEVELS)
def test_environment_variable_forces_a_level(level):
    code = "from grmseg import _ext; print(_ext.cpu_capability()); print(_ext.cpu_capability_report())"
    proc = _run_python(code, GRMSEG_CPU_CAPABILITY=level.upper())
    assert proc.returncode == 0, proc.stderr
    got, report = proc.stdout.splitlines()[:2]
    if level in _ext.cpu_capabilities():
        assert got == level
        assert f"forced by GRMSEG_CPU_CAPABILITY={level.upper()}" in report
    else:  # more than the CPU runs: the best supported level, with a warning
        assert got == _ext.cpu_capabilities()[-1]
        assert "asked for more than the CPU and build support" in report
        assert "GRMSEG_CPU_CAPABILITY" in proc.stderr


def test_environment_variable_with_a_bad_value_warns_and_detects():
    proc = _run_python("from grmseg import _ext; print(_ext.cpu_capability())", GRMSEG_CPU_CAPABILITY="sse9")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [_ext.cpu_capabilities()[-1]]
    assert "GRMSEG_CPU_CAPABILITY=sse9 is not default, avx2 or avx512" in proc.stderr


def test_info_names_the_level():
    proc = subprocess.run([sys.executable, "-m", "grmseg", "info"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "GRMSEG_CPU_CAPABILITY": "default"},
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "grmseg._C CPU kernels: default (forced by GRMSEG_CPU_CAPABILITY=default" in proc.stdout
    assert "CPU kernels:" in grmseg.build_summary()


def test_every_level_computes_the_same_results():
    """The levels differ only in the rounding of their reductions: fp64 agrees to ~1e-12 across them."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 37, 301, generator=g, dtype=torch.float64)
    w = torch.randn(5, 37, generator=g, dtype=torch.float64) / 6
    b = torch.randn(5, generator=g, dtype=torch.float64)
    q, v = torch.randn(2, 5, 37, generator=g, dtype=torch.float64) / 6, torch.randn(2, 5, 37, generator=g,
                                                                                  dtype=torch.float64)
    ops = torch.ops.grmseg_C
    before = _ext.cpu_capability()
    results = {}
    try:
        for level in _ext.cpu_capabilities():
            _ext.set_cpu_capability(level)
            results[level] = (*ops.grm_project_forward(x, w, b), ops.grm_reproject_forward(x, q, v))
    finally:
        _ext.set_cpu_capability(before)
    first = results["default"]
    for level, outs in results.items():
        for a, ref in zip(outs, first):
            torch.testing.assert_close(a, ref, rtol=1e-12, atol=1e-12, msg=level)


def test_auto_skips_the_gemm_kernels_at_the_x86_baseline():
    """At the baseline level (SSE2) the GEMM-shaped CPU kernels are slower than the reference: auto keeps it."""
    code = ("import grmseg.ops as o; from grmseg.ops.impl import csrc; "
            "print(sorted(csrc.NOT_AUTO.get('cpu', ()))); print(o.selected('grm_project_forward', 'cpu'))")
    proc = _run_python(code, GRMSEG_CPU_CAPABILITY="default")
    assert proc.returncode == 0, proc.stderr
    skipped, chosen = proc.stdout.splitlines()[:2]
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert "grm_project_forward" in skipped and chosen == "reference"
    from grmseg.ops.impl import csrc

    if _ext.cpu_capability() == _ext.cpu_capabilities()[-1]:
        assert csrc.NOT_AUTO == {"cpu": csrc.SLOWER_ON_CPU}
    if _ext.cpu_capability() != "default":
        assert grmseg.ops.selected("grm_project_forward", "cpu") == "csrc"
        assert grmseg.ops.selected("graph_conv_forward", "cpu") == "reference"
        assert grmseg.ops.selected("graph_conv_forward", "cpu", "csrc") == "csrc"


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 levels")
def test_auto_follows_a_level_set_at_run_time():
    """set_cpu_capability changes auto's choice at once (no restart): the baseline level keeps the reference for the
    GEMM-shaped kernels, a vector level gives them back to csrc."""
    from grmseg.ops.impl import csrc

    levels = _ext.cpu_capabilities()
    if "default" not in levels or len(levels) < 2:
        pytest.skip("needs the baseline and one vector level")
    previous = _ext.set_cpu_capability("default")
    try:
        assert "grm_project_forward" in csrc.NOT_AUTO["cpu"]
        assert grmseg.ops.selected("grm_project_forward", "cpu") == "reference"
        _ext.set_cpu_capability(levels[-1])
        assert grmseg.ops.selected("grm_project_forward", "cpu") == "csrc"
        assert csrc.NOT_AUTO == {"cpu": csrc.SLOWER_ON_CPU}
    finally:
        _ext.set_cpu_capability(previous)
    assert grmseg.ops.selected("grm_project_forward", "cpu") == (
        "reference" if "grm_project_forward" in csrc.NOT_AUTO["cpu"] else "csrc")


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 levels")
@pytest.mark.parametrize("ratio", [1.85, 1.0])
def test_auto_keeps_the_reference_where_a_forced_level_loses_to_the_blas(monkeypatch, ratio):
    """Below the CPU's best level, on a CPU whose best level runs more FMAs per cycle (the Xeon: 1.85x), the
    reference's GEMMs (MKL, at the CPU's full width) beat grm_reproject's csrc forward: auto picks the reference
    for the op called alone there (forward and backward together), and csrc again at the best level. Where both
    levels run at one rate (Zen 4: 1.0x) csrc stays. grmseg.GRM keeps its group of kernels in csrc either way."""
    from grmseg.ops.impl import csrc

    levels = [lvl for lvl in _ext.cpu_capabilities() if lvl != "default"]
    if len(levels) < 2:
        pytest.skip("needs two vector levels (AVX2 and AVX-512)")
    monkeypatch.setattr(csrc, "fma_rate_ratio", lambda level, best: ratio)
    previous = _ext.set_cpu_capability(levels[0])
    try:
        wider = ratio >= csrc.BLAS_WIDER
        assert (csrc.SLOWER_BELOW_CPU_BEST <= csrc.NOT_AUTO["cpu"]) == wider
        assert grmseg.ops.selected("grm_reproject_backward", "cpu") == ("reference" if wider else "csrc")
        assert grmseg.ops.selected("grm_reproject_backward_kept", "cpu") == ("reference" if wider else "csrc")
        assert grmseg.ops.selected("grm_reproject_forward", "cpu") == ("reference" if wider else "csrc")
        assert grmseg.ops.selected("grm_reproject_keep_forward", "cpu") == ("reference" if wider else "csrc")
        assert grmseg.ops.selected("grm_reproject_backward", "cpu", "csrc") == "csrc"  # forced: still runs
        assert grmseg.ops.joint_backend("cpu") == "csrc"  # the layer's group, chosen as a whole
        _ext.set_cpu_capability(levels[-1])
        assert grmseg.ops.selected("grm_reproject_backward", "cpu") == "csrc"
    finally:
        monkeypatch.undo()  # before the level goes back: auto's exclusions are worked out with the real ratio
        _ext.set_cpu_capability(previous)


def test_fma_rate_ratio_of_the_levels():
    """The ratio behind that choice, measured: finite and positive between every pair of levels, and (cached)
    the same when asked again."""
    import math

    from grmseg.ops.impl import csrc

    levels = _ext.cpu_capabilities()
    for level in levels:
        ratio = csrc.fma_rate_ratio(level, levels[-1])
        assert isinstance(ratio, float) and math.isfinite(ratio) and ratio > 0, (level, ratio)
        assert csrc.fma_rate_ratio(level, levels[-1]) == ratio


def test_fma_peak_probe_runs_at_every_level():
    """The probe behind the benchmarks' "of FMA" column: a finite positive rate at each level (never timed
    against anything: only that it measures)."""
    import math

    previous = grmseg._ext.cpu_capability()
    try:
        for level in grmseg._ext.cpu_capabilities():
            grmseg._ext.set_cpu_capability(level)
            rate = grmseg._ext.cpu_fma_peak_gflops()
            assert isinstance(rate, float) and math.isfinite(rate) and rate > 0, (level, rate)
            # a level asked for by name, on one thread, whatever the active level
            other = grmseg._ext.cpu_fma_peak_gflops(previous, seconds=0.02, threads=1)
            assert isinstance(other, float) and math.isfinite(other) and other > 0, (previous, other)
    finally:
        grmseg._ext.set_cpu_capability(previous)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"level": "avx1024"}, "level must be"), ({"seconds": 0.0}, "seconds must be"),
     ({"seconds": float("nan")}, "seconds must be"), ({"threads": 0}, "threads must be"),
     ({"threads": True}, "threads must be")],
)
def test_fma_peak_probe_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grmseg._ext.cpu_fma_peak_gflops(**kwargs)


def test_fma_peak_probe_rejects_a_level_this_cpu_or_build_lacks():
    missing = [lvl for lvl in ("default", "avx2", "avx512") if lvl not in _ext.cpu_capabilities()]
    if not missing:
        pytest.skip("this CPU and build support every level")
    with pytest.raises(ValueError, match="not supported here"):
        grmseg._ext.cpu_fma_peak_gflops(missing[0], seconds=0.01)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 levels")
def test_grm_layer_runs_its_group_in_one_backend_under_auto(monkeypatch):
    """grmseg.GRM with backend="auto" runs its projection, reprojection and their joint backward in csrc as a
    group, also where auto leaves grm_reproject called alone to the reference (a forced level below a wider best);
    at x86-64's baseline, where the layer in csrc is slower than the reference, the group goes to the reference."""
    from grmseg.ops import _backends
    from grmseg.ops.impl import csrc

    levels = [lvl for lvl in _ext.cpu_capabilities() if lvl != "default"]
    if len(levels) < 2:
        pytest.skip("needs two vector levels (AVX2 and AVX-512)")
    ran: list[tuple[str, str]] = []
    kernel = _backends.kernel

    def logged(name, device, backend):
        ran.append((name, _backends.selected(name, device, backend)))
        return kernel(name, device, backend)

    monkeypatch.setattr(_backends, "kernel", logged)
    monkeypatch.setattr(csrc, "fma_rate_ratio", lambda level, best: 1.85)
    torch.manual_seed(0)
    layer = grmseg.GRM(16, 3, node_dim=8, key_dim=4).double()
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64, requires_grad=True)
    wrt = (x, *layer.parameters())
    gy = torch.randn_like(x)
    previous = _ext.set_cpu_capability(levels[0])
    try:
        assert grmseg.ops.selected("grm_reproject_keep_forward", "cpu") == "reference"
        grouped = torch.autograd.grad(layer(x), wrt, gy)
        grm = {name: be for name, be in ran if name.startswith("grm_")}
        assert grm == {"grm_project_keep_forward": "csrc", "grm_reproject_keep_forward": "csrc",
                       "grm_reproject_backward_kept_joint": "csrc", "grm_project_backward_kept_joint": "csrc"}
        _ext.set_cpu_capability("default")
        assert grmseg.ops.joint_backend("cpu") is None
        ran.clear()
        split = torch.autograd.grad(layer(x), wrt, gy)
        assert not any(name.endswith("_joint") for name, _ in ran)
        assert {be for name, be in ran if name.startswith("grm_reproject")} == {"reference"}
    finally:
        monkeypatch.undo()
        _ext.set_cpu_capability(previous)
    for a, b in zip(grouped, split):
        torch.testing.assert_close(a, b)
