"""The GPU kernels fit the hardware, proven by the real compilers on a machine without a GPU.

Triton: every config the launch code can pick (each autotune list and each fixed choice, as
``grmseg.ops.impl.triton_launch.recording`` sees the adapters make them on meta tensors) for the benchmark shapes
and dtypes, compiled for sm_80 and sm_90 with ``triton.compile`` (``tests/compile_check.py``). A config fails on
a compile error, shared memory over the architecture's per-block limit (232448 B on sm_90, 166912 B on sm_80),
any register spill, or shared memory above the adapter's own estimate (the estimate prunes configs per GPU, so it
must stay an upper bound). CUDA: every ``csrc/cuda/*.cu`` compiled with ``nvcc -cubin -Xptxas -v``; no kernel may
spill in fp32/fp16/bf16 (fp64 may), nor use more static shared memory than 48 KiB.

Results are cached (``tests/compile_check.py``: keyed by kernel source, config, architecture and compiler
version; under ``~/.cache``, never in the repository). ``make test`` runs a representative subset; the marker
``gpu_compile`` selects the whole set (``make test-gpu-compile``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import compile_check as cc
import pytest
import torch

from grmseg.ops.impl import triton as tri
from grmseg.ops.impl import triton_launch as tl
from grmseg.ops.impl import triton_wsss as tw

triton = pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
ARCHS = (80, 90)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STATIC_SMEM = 48 * 1024  # the static shared-memory limit of a CUDA kernel


def _m(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(*shape, device="meta", dtype=dtype)


# ------------------------------------------------------------------------------------------------ launches
def _grm_project(dt, b, c, p, k):
    x, w, bias = _m(b, c, p, dtype=dt), _m(k, c, dtype=dt), _m(k, dtype=dt)
    tri.grm_project_forward(x, w, bias)
    tri.grm_project_backward(_m(b, k, c, dtype=dt), _m(b, k, dtype=dt), x, w, bias)


def _grm_reproject(dt, b, c, p, k):
    x, q, v = _m(b, c, p, dtype=dt), _m(b, k, c, dtype=dt), _m(b, k, c, dtype=dt)
    tri.grm_reproject_forward(x, q, v)
    tri.grm_reproject_backward(_m(b, c, p, dtype=dt), x, q, v)


def _graph_conv(dt, b, k, f, d):
    z, adj, weight, bias = _m(b, k, f, dtype=dt), _m(k, k, dtype=dt), _m(f, d, dtype=dt), _m(d, dtype=dt)
    out = tri.graph_conv_forward(z, adj, weight, bias, "leaky_relu")
    tri.graph_conv_backward(_m(b, k, d, dtype=dt), out, z, adj, weight, bias, "leaky_relu")


def _cam(dt, b, c, h, w, k):
    tw.cam_forward(_m(b, c, h, w, dtype=dt), _m(k, c, dtype=dt), _m(b, k, dtype=torch.float32))


def _local_affinity(dt, b, c, h, w, r):
    tw.local_affinity_forward(_m(b, c, h, w, dtype=dt), r)


def _boundary_affinity(dt, b, h, w, r):
    tw.boundary_affinity_forward(_m(b, 1, h, w, dtype=dt), r)


def _random_walk(dt, b, k, h, w, r, steps):
    d = len(tw._ref.affinity_offsets(r))
    tw.random_walk_forward(_m(b, k, h, w, dtype=dt), _m(b, d, h, w, dtype=dt), 8.0, steps)


# The benchmark shapes (benchmarks/cases.py, size set "cuda") and the GRM layer's own graph convolutions
# (node_dim 256, with and without the 384-d class-name embeddings), plus C=256 / 2048 channel counts.
OPS: dict[str, tuple[Callable, list[tuple]]] = {
    "grm_project": (_grm_project, [(8, c, 4096, k) for c in (512, 256, 2048) for k in (21, 81)]),
    "grm_reproject": (_grm_reproject, [(8, c, 4096, k) for c in (512, 256, 2048) for k in (21, 81)]),
    "graph_conv": (_graph_conv, [(8, k, f, 256) for k in (21, 81) for f in (2048, 256, 640)] + [(1, 81, 1024, 2048)]),
    "cam": (_cam, [(8, 2048, 32, 32, k) for k in (20, 80)]),
    "local_affinity": (_local_affinity, [(8, 448, 64, 64, 5)]),
    "boundary_affinity": (_boundary_affinity, [(8, 128, 128, 5)]),
    "random_walk": (_random_walk, [(1, 21, s, s, 5, 256) for s in (32, 64, 128)]),
}
# make test: the headline shapes' fixed choices and the largest autotune config families, in bf16 and fp32
SUBSET = {
    "grm_project": [(8, 512, 4096, 21)],
    "grm_reproject": [(8, 512, 4096, 21)],
    "graph_conv": [(8, 81, 256, 256)],
    "random_walk": [(1, 21, 128, 128, 5, 256)],
}


def _launches(op: str, shapes: list[tuple], arch: int, dtypes: list[str], autotune: tuple[bool, ...]) -> list:
    fn = OPS[op][0]
    out = []
    for tune in autotune:
        with tl.recording(tl.Target.gpu(arch), autotune=tune) as rec:
            for shape in shapes:
                for name in dtypes:
                    fn(DTYPES[name], *shape)
        out += rec
    return out


def _smem_estimate(launch: tl.Launch, cfg: dict) -> int | None:
    """The adapter's own shared-memory estimate of a config, where it has one."""
    dtype = next(a.dtype for a in launch.args if isinstance(a, torch.Tensor))
    esize = torch.empty((), dtype=dtype).element_size()
    bk = launch.constexprs.get("BLOCK_K", 16)
    kinds = {"grm_project_fwd_kernel": "project_fwd", "grm_project_bwd_kernel": "project_bwd",
             "grm_reproject_bwd_kernel": "reproject_bwd"}
    graph = {"graph_conv_fwd_kernel": "fwd", "graph_conv_bwd_pre_kernel": "bwd_pre",
             "graph_conv_bwd_adj_kernel": "bwd_adj", "graph_conv_bwd_z_kernel": "bwd_z",
             "graph_conv_bwd_w_kernel": "bwd_w"}
    if launch.kernel in kinds:
        return tri._pixel_smem(kinds[launch.kernel], cfg, bk, esize)
    if launch.kernel == "grm_reproject_fwd_kernel":
        return tri._reproject_fwd_smem(cfg, bk, esize)
    if launch.kernel in graph:
        return tri._graph_smem(graph[launch.kernel], cfg, bk, esize)
    return None


def _check_triton(launches: list) -> None:
    rows, jobs = [], []
    for launch in launches:
        for cfg, job in zip(launch.configs, cc.launch_jobs(launch), strict=True):
            rows.append((launch, cfg))
            jobs.append(job)
    assert jobs, "no launch was recorded"
    results = cc.compile_triton(jobs)
    failures = []
    seen = set()
    for (launch, cfg), job, res in zip(rows, jobs, results, strict=True):
        label = cc.job_label(job)
        if label in seen:
            continue
        seen.add(label)
        why = cc.problems(job, res, launch.target.smem)
        est = _smem_estimate(launch, cfg)
        if not why and est is not None and res["shared"] > est:
            why.append(f"shared memory {res['shared']} B above the adapter's estimate {est} B")
        if why:
            dtype = job["args"][0].get("ptr", "?")
            failures.append(f"{label} [{dtype}, {'autotune' if launch.tuned else 'fixed'}]: {'; '.join(why)}")
    assert not failures, f"{len(failures)} of {len(seen)} configs do not fit:\n" + "\n".join(failures)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("op", list(SUBSET))
def test_triton_configs_fit_subset(op, arch):
    """The fixed choices at the headline shapes, bf16 and fp32 (``make test``)."""
    _check_triton(_launches(op, SUBSET[op], arch, ["bf16", "fp32"], (False,)))


@pytest.mark.gpu_compile
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("op", list(OPS))
def test_triton_configs_fit(op, arch):
    """Every config of every launch at every benchmark shape, fp32/fp16/bf16, autotuned and fixed."""
    _check_triton(_launches(op, OPS[op][1], arch, list(DTYPES), (True, False)))


def test_recording_sees_the_configs_the_launch_code_picks():
    """The recorded fixed choice is the first autotune config, recorded launches run nothing, and a recorded
    GPU target gets GPU configs (not the interpreter's) even for meta tensors."""
    with tl.recording(tl.Target.gpu(90), autotune=True) as tuned:
        _grm_project(torch.bfloat16, 8, 512, 4096, 21)
    with tl.recording(tl.Target.gpu(90), autotune=False) as fixed:
        _grm_project(torch.bfloat16, 8, 512, 4096, 21)
    assert [launch.kernel for launch in tuned] == ["grm_project_fwd_kernel", "grm_project_bwd_kernel"]
    for a, b in zip(tuned, fixed, strict=True):
        assert a.tuned and not b.tuned and b.configs == a.configs[:1]
        assert a.constexprs["PRECISION"] == tri.FP32_PRECISION and not a.constexprs["UPCAST"]
        assert all(cfg["num_stages"] == 2 for cfg in a.configs)  # GPU configs, not the interpreter's
    assert not tl.is_recording()
    # shared memory prunes per GPU: an sm_86 part (101376 B) gets no config an sm_90 estimate puts above it
    with tl.recording(tl.Target.gpu(86), autotune=True) as small:
        _grm_project(torch.float32, 8, 512, 4096, 81)
    for launch in small:
        for cfg in launch.configs:
            assert (_smem_estimate(launch, cfg) or 0) <= tl.SMEM_PER_BLOCK[86]


def test_compile_check_reports_spills_and_shared_memory():
    """The checker itself: configs known not to fit are reported (an fp32 backward tile with the 3xTF32 dots
    spills; a fused 512-channel reprojection at 128 nodes needs more than sm_90's shared memory), the fixed
    choice of the same launch is clean."""
    with tl.recording(tl.Target.gpu(90), autotune=False) as rec:
        _grm_project(torch.float32, 1, 512, 256, 21)
        _grm_reproject(torch.bfloat16, 1, 512, 256, 81)
    small = cc.launch_jobs(rec[1])[0]
    spill = {**small, "constexprs": {**small["constexprs"], "BLOCK_CO": 32, "BLOCK_C": 32, "BLOCK_P": 32,
                                     "FUSED": False, "PRECISION": "tf32x3"}, "num_warps": 4, "num_stages": 1}
    fwd = cc.launch_jobs(rec[2])[0]
    smem = {**fwd, "constexprs": {**fwd["constexprs"], "BLOCK_C": 512, "BLOCK_P": 128, "FUSED": True},
            "num_warps": 8, "num_stages": 2}
    res_small, res_spill, res_smem = cc.compile_triton([small, spill, smem])
    limit = tl.SMEM_PER_BLOCK[90]
    assert res_small["error"] is None and not cc.problems(small, res_small, limit)
    assert any("spills" in w for w in cc.problems(spill, res_spill, limit)), res_spill
    assert any("shared memory" in w for w in cc.problems(smem, res_smem, limit)), res_smem


# ---------------------------------------------------------------------------------------------------- CUDA
CUDA_SOURCES = sorted(p.name for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
CUDA_SUBSET = ["grm_fused_cuda.cu"]


def _cuda_ready() -> str | None:
    """Why the CUDA sources cannot be compiled here, or None."""
    if cc.nvcc_path() is None:
        return "no nvcc"
    if torch.version.cuda is None:
        return "torch is not a CUDA build (its headers configure the CUDA sources)"
    if shutil.which("c++filt") is None:
        return "no c++filt to read the kernel names (binutils)"
    return None


def _check_cuda(source: str, arch: int) -> None:
    why = _cuda_ready()
    if why:
        pytest.skip(why)
    res = cc.compile_cuda(ROOT / "csrc" / "cuda" / source, arch)
    assert res["error"] is None, res["error"]
    assert res["kernels"], f"{source}: ptxas reported no kernel"
    bad = []
    for k in res["kernels"]:
        scalar = cc.cuda_scalar(k["name"])
        if (k["spill_stores"] or k["spill_loads"]) and scalar != "double":
            bad.append(f"{k['name']}: spills {k['spill_stores']}/{k['spill_loads']} B ({k['regs']} registers)")
        if k["smem"] > STATIC_SMEM:
            bad.append(f"{k['name']}: {k['smem']} B of static shared memory > {STATIC_SMEM}")
    assert not bad, f"{source} sm_{arch}:\n" + "\n".join(bad)


def test_cuda_sources_fit_subset():
    """The GRM CUDA kernels on sm_90 (``make test``)."""
    for source in CUDA_SUBSET:
        _check_cuda(source, 90)


@pytest.mark.gpu_compile
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", CUDA_SOURCES)
def test_cuda_sources_fit(source, arch):
    """Every CUDA source for sm_80 and sm_90: no spill outside fp64, static shared memory within 48 KiB."""
    _check_cuda(source, arch)
