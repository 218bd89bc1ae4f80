"""cam, local_affinity and boundary_affinity: every backend that runs here against grmseg.reference.

Backends: ``reference``, ``csrc`` (C++ CPU; CUDA when a GPU is visible) and ``triton`` (CUDA, or its interpreter
on CPU). Each test checks that the named backend really runs the kernel (no silent fallback) and compares with
the float64 oracle by the rule of ``tests/_tolerance.py``. Odd sizes, edge pixels (the whole map is compared),
radius 1 (no offsets) to 10, a single class, an image without foreground label, non-contiguous inputs.
Interpreter cases stay small: few, large programs.
"""

from __future__ import annotations

import os

import loops
import pytest
import torch
from _tolerance import assert_close

import grmseg.ops as gops
from grmseg import reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BACKENDS = ["reference", "csrc", "triton"]
# Triton takes CPU tensors only in its interpreter (tests/conftest.py turns it on when no GPU is visible).
TRITON_CPU = os.environ.get("TRITON_INTERPRET", "") == "1"
CASES = [(d, b) for d in DEVICES for b in BACKENDS if d == "cuda" or b != "triton" or TRITON_CPU]
HALF = (torch.float16, torch.bfloat16)


def _uses(kernel: str, device: str, backend: str) -> None:
    """The named backend runs ``kernel`` itself (a missing kernel would fall back to the reference)."""
    assert gops.selected(kernel, device, backend) == backend, gops.backends()[backend]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------- cam
CAM_SHAPES = [  # (B, C, h, w, K)
    (2, 59, 13, 17, 21),
    (1, 7, 1, 1, 1),  # one pixel, one class
    (3, 16, 9, 5, 3),
    (1, 8, 37, 41, 5),  # several pixel blocks / chunks
    (2, 33, 6, 7, 81),  # COCO's class count
]


def _cam_inputs(b, c, h, w, k, seed=0):
    g = _gen(seed)
    feat = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(k, c, generator=g, dtype=torch.float64) / c**0.5
    labels = (torch.rand(b, k, generator=g) < 0.5).to(torch.int64)
    labels[0, 0] = 1
    return feat, weight, labels


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("shape", CAM_SHAPES)
def test_cam_matches_reference(device, backend, shape):
    _uses("cam_forward", device, backend)
    feat, weight, labels = _cam_inputs(*shape)
    for lab in (labels, None):
        oracle = reference.cam(feat, weight, lab)
        out = gops.cam(feat.float().to(device), weight.float().to(device),
                       None if lab is None else lab.to(device), backend=backend)
        assert out.dtype == torch.float32 and out.is_contiguous() and out.device.type == device
        assert_close(out, oracle, name=f"cam {backend} {shape}")
        assert out.min() >= 0 and out.max() < 1


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_cam_dtypes(device, backend, dtype):
    feat, weight, labels = _cam_inputs(2, 19, 7, 11, 4, seed=1)
    oracle = reference.cam(feat, weight, labels)
    f, w = feat.to(device, dtype), weight.to(device, dtype)
    out = gops.cam(f, w, labels.to(device), backend=backend)
    assert out.dtype == dtype
    plain = reference.cam(f, w, labels.to(device)) if dtype in HALF else None
    assert_close(out, oracle, plain, name=f"cam {backend} {dtype}")


@pytest.mark.parametrize("device,backend", CASES)
def test_cam_edge_cases(device, backend):
    feat, weight, _ = _cam_inputs(3, 12, 5, 9, 4, seed=2)
    weight[1] = -weight[1].abs()  # class 1 all negative before the ReLU on positive features
    feat = feat.abs()
    labels = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0], [True, False, True, True]], dtype=torch.bool)
    out = gops.cam(feat.float().to(device), weight.float().to(device), labels.to(device), backend=backend)
    assert torch.isfinite(out).all()
    assert (out[1] == 0).all(), "an image without foreground label has no CAM"
    assert (out[:, 1] == 0).all(), "a class that never activates is 0, not NaN"
    assert_close(out, reference.cam(feat, weight, labels), name="cam edge cases")


@pytest.mark.parametrize("device,backend", CASES)
def test_cam_non_contiguous(device, backend):
    feat, weight, labels = _cam_inputs(2, 10, 8, 13, 6, seed=3)
    f = feat.float().to(device).transpose(2, 3)  # [B, C, 13, 8], strided
    w = torch.cat([weight, weight], dim=1).float().to(device)[:, : weight.shape[1]]  # row stride 2C
    out = gops.cam(f, w, labels.to(device), backend=backend)
    assert_close(out, reference.cam(feat.transpose(2, 3), weight, labels), name="cam non-contiguous")
    chl = feat.float().to(device).contiguous(memory_format=torch.channels_last)
    assert_close(gops.cam(chl, w, None, backend=backend), reference.cam(feat, weight), name="cam channels_last")


# --------------------------------------------------------------------------------------------------- affinities
RADII = [1, 2, 3, 5, 7, 10]


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("radius", RADII)
def test_local_affinity_matches_reference(device, backend, radius):
    _uses("local_affinity_forward", device, backend)
    feat = torch.randn(2, 59, 13, 17, generator=_gen(radius), dtype=torch.float64)
    oracle = reference.local_affinity(feat, radius)
    out = gops.local_affinity(feat.float().to(device), radius, backend=backend)
    assert out.shape == (2, len(reference.affinity_offsets(radius)), 13, 17) and out.is_contiguous()
    assert_close(out, oracle, name=f"local_affinity r={radius}")
    assert ((out >= 0) & (out <= 1)).all()


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("radius", [1, 2, 3, 4, 5, 6, 7, 10])
@pytest.mark.parametrize("size", [(13, 17), (21, 9)])
def test_boundary_affinity_matches_reference(device, backend, radius, size):
    _uses("boundary_affinity_forward", device, backend)
    bd = torch.rand(2, 1, *size, generator=_gen(radius), dtype=torch.float64)
    oracle = reference.boundary_affinity(bd, radius)
    out = gops.boundary_affinity(bd.float().to(device), radius, backend=backend)
    assert out.shape == oracle.shape and out.is_contiguous()
    assert_close(out, oracle, name=f"boundary_affinity r={radius} {size}")
    for d, (dy, dx) in enumerate(reference.affinity_offsets(radius)):
        inside = torch.zeros(size, dtype=torch.bool)
        inside[: max(0, size[0] - dy), max(0, -dx) : max(0, min(size[1], size[1] - dx))] = True
        assert (out[:, d].cpu()[:, ~inside] == 0).all(), f"offset {(dy, dx)}: pairs leaving the map are 0"


def _probed_paths(device, backend, radius):
    """The path set of every offset as the backend computes it, read off its output: a single boundary pixel c
    (1, everything else 0) gives aff[d, p] = 0 exactly where c - p is on the path of offset d."""
    n = 2 * radius + 1
    bd = torch.zeros(1, 1, n, n, dtype=torch.float32)
    bd[0, 0, radius, radius] = 1.0
    out = gops.boundary_affinity(bd.to(device), radius, backend=backend).cpu()[0]
    found = {}
    for d, (dy, dx) in enumerate(reference.affinity_offsets(radius)):
        inside = torch.zeros(n, n, dtype=torch.bool)
        inside[: n - dy, max(0, -dx) : min(n, n - dx)] = True
        on_path = inside & (out[d] == 0)
        assert (out[d][inside & ~on_path] == 1).all() and (out[d][~inside] == 0).all(), (dy, dx)
        found[(dy, dx)] = {(radius - i, radius - j) for i, j in on_path.nonzero().tolist()}
    return found


@pytest.mark.parametrize("device,backend", CASES)
def test_boundary_paths_are_irn_paths(device, backend):
    """Each backend's path sets, probed through its output, are IRN's: the hand-derived ones, the reference's
    (``path_offsets``: so the C++ and Triton tables equal the Python ones), 242 pixels at radius 5."""
    _uses("boundary_affinity_forward", device, backend)
    for radius in (5, 6, 10):
        found = _probed_paths(device, backend, radius)
        for (dy, dx), pts in found.items():
            assert pts == set(reference.path_offsets(dy, dx)), f"r={radius} offset {(dy, dx)}: {sorted(pts)}"
            if (dy, dx) in loops.HAND_PATHS:
                assert pts == loops.HAND_PATHS[(dy, dx)], f"offset {(dy, dx)}"
        if radius == 5:
            assert sum(len(pts) for pts in found.values()) == 242
        if radius == 6:
            assert set(loops.HAND_PATHS) <= set(found)


@pytest.mark.parametrize("device,backend", CASES)
def test_affinity_edge_pixels(device, backend):
    """Pairs that leave the map are 0, pairs inside are not, on maps narrower than the radius."""
    for h, w in [(1, 1), (1, 6), (4, 3), (3, 11)]:
        feat = torch.randn(1, 5, h, w, generator=_gen(h * w), dtype=torch.float64)
        bd = torch.rand(1, 1, h, w, generator=_gen(h + w), dtype=torch.float64) * 0.9
        for radius in (2, 5):
            offs = reference.affinity_offsets(radius)
            loc = gops.local_affinity(feat.float().to(device), radius, backend=backend).cpu()
            bnd = gops.boundary_affinity(bd.float().to(device), radius, backend=backend).cpu()
            assert_close(loc, reference.local_affinity(feat, radius), name=f"local edge {h}x{w}")
            assert_close(bnd, reference.boundary_affinity(bd, radius), name=f"boundary edge {h}x{w}")
            for d, (dy, dx) in enumerate(offs):
                inside = torch.zeros(h, w, dtype=torch.bool)
                inside[: max(0, h - dy), max(0, -dx) : max(0, min(w, w - dx))] = True
                assert (loc[0, d][~inside] == 0).all() and (bnd[0, d][~inside] == 0).all()
                assert (loc[0, d][inside] > 0).all() and (bnd[0, d][inside] > 0).all()


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_affinity_dtypes(device, backend, dtype):
    feat = torch.randn(1, 9, 7, 10, generator=_gen(5), dtype=torch.float64)
    bd = torch.rand(1, 1, 7, 10, generator=_gen(6), dtype=torch.float64)
    f, b = feat.to(device, dtype), bd.to(device, dtype)
    loc = gops.local_affinity(f, 5, backend=backend)
    bnd = gops.boundary_affinity(b, 5, backend=backend)
    assert loc.dtype == dtype and bnd.dtype == dtype
    half = dtype in HALF
    assert_close(loc, reference.local_affinity(f.double(), 5),
                 reference.local_affinity(f, 5) if half else None, name=f"local {dtype}")
    assert_close(bnd, reference.boundary_affinity(b.double(), 5),
                 reference.boundary_affinity(b, 5) if half else None, name=f"boundary {dtype}")


@pytest.mark.parametrize("device,backend", CASES)
def test_affinity_non_contiguous(device, backend):
    feat = torch.randn(2, 6, 11, 9, generator=_gen(7), dtype=torch.float64)
    bd = torch.rand(2, 1, 11, 9, generator=_gen(8), dtype=torch.float64)
    f = feat.float().to(device).transpose(2, 3)
    b = bd.float().to(device).transpose(2, 3)
    assert_close(gops.local_affinity(f, 3, backend=backend), reference.local_affinity(feat.transpose(2, 3), 3),
                 name="local non-contiguous")
    assert_close(gops.boundary_affinity(b, 3, backend=backend), reference.boundary_affinity(bd.transpose(2, 3), 3),
                 name="boundary non-contiguous")
    chl = feat.float().to(device).contiguous(memory_format=torch.channels_last)
    assert_close(gops.local_affinity(chl, 4, backend=backend), reference.local_affinity(feat, 4),
                 name="local channels_last")


def test_offsets_match_the_design():
    assert len(reference.affinity_offsets(5)) == 34 and reference.affinity_offsets(1) == []
    assert reference.affinity_offsets(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]


@pytest.mark.parametrize("device", DEVICES)
def test_csrc_ops_pass_opcheck(device):
    """Schemas, Meta (fake tensor) kernels and the dispatch of the compiled ops (``torch.ops.grmseg_C``)."""
    from grmseg import _ext  # loads grmseg._C, which registers the ops

    assert _ext.built(), _ext.load_error()
    for name in ("cam_forward", "local_affinity_forward", "boundary_affinity_forward", "random_walk_forward"):
        assert _ext.has_kernel(name, device) and _ext.has_kernel(name, "meta"), name
    ops = torch.ops.grmseg_C
    g = _gen(9)
    feat = torch.randn(2, 4, 5, 7, generator=g).to(device)
    weight = torch.randn(3, 4, generator=g).to(device)
    labels = torch.tensor([[1, 0, 1], [0, 0, 1]], device=device)
    cam = torch.rand(2, 3, 5, 7, generator=g).to(device)
    aff = torch.rand(2, 12, 5, 7, generator=g).to(device)
    cases = [
        (ops.cam_forward, (feat, weight, labels)),
        (ops.cam_forward, (feat, weight, None)),
        (ops.local_affinity_forward, (feat, 3)),
        (ops.boundary_affinity_forward, (torch.rand(2, 1, 5, 7, generator=g).to(device), 3)),
        (ops.random_walk_forward, (cam, aff, 8.0, 3)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)
    meta = ops.local_affinity_forward(feat.to("meta"), 5)
    assert meta.shape == (2, 34, 5, 7) and meta.device.type == "meta"


# ------------------------------------------------------------------------------- csrc at every CPU kernel level
@pytest.mark.usefixtures("cpu_level")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_csrc_cpu_kernels_at_every_level(dtype):
    """cam, local_affinity and boundary_affinity of csrc on the CPU at each instruction-set level (conftest.py's
    cpu_level), on odd sizes with several tiles and chunks, strided and channels-last inputs."""
    for shape in [(2, 59, 13, 17, 21), (1, 8, 37, 41, 5), (2, 33, 6, 7, 81)]:
        feat, weight, labels = _cam_inputs(*shape)
        for lab in (labels, None):
            oracle = reference.cam(feat, weight, lab)
            f, w = feat.to(dtype), weight.to(dtype)
            plain = reference.cam(f, w, lab) if dtype in HALF else None
            assert_close(gops.cam(f, w, lab, backend="csrc"), oracle, plain, name=f"cam {shape} {dtype}")
        chl = feat.to(dtype).contiguous(memory_format=torch.channels_last)
        assert_close(gops.cam(chl, weight.to(dtype), None, backend="csrc"), reference.cam(feat, weight),
                     reference.cam(chl, weight.to(dtype)) if dtype in HALF else None, name="cam channels_last")
    for radius in (1, 3, 5):
        feat = torch.randn(2, 19, 13, 17, generator=_gen(radius), dtype=torch.float64)
        plain = reference.local_affinity(feat.to(dtype), radius) if dtype in HALF else None
        assert_close(gops.local_affinity(feat.to(dtype), radius, backend="csrc"),
                     reference.local_affinity(feat, radius), plain, name=f"local_affinity r={radius} {dtype}")
        bd = torch.rand(2, 1, 21, 9, generator=_gen(radius), dtype=torch.float64)
        plain = reference.boundary_affinity(bd.to(dtype), radius) if dtype in HALF else None
        assert_close(gops.boundary_affinity(bd.to(dtype), radius, backend="csrc"),
                     reference.boundary_affinity(bd, radius), plain, name=f"boundary_affinity r={radius} {dtype}")


@pytest.mark.usefixtures("cpu_level")
def test_csrc_cam_and_affinities_do_not_depend_on_the_thread_count():
    """Sizes large enough that the CPU kernels run in parallel (small calls stay on one thread)."""
    feat, weight, labels = _cam_inputs(2, 64, 33, 47, 21)
    f, w = feat.float(), weight.float()
    loc = torch.randn(2, 32, 64, 64, generator=_gen(7))
    bd = torch.rand(2, 1, 200, 200, generator=_gen(8))

    def run():
        return (gops.cam(f, w, labels, backend="csrc"), gops.local_affinity(loc, 5, backend="csrc"),
                gops.boundary_affinity(bd, 5, backend="csrc"))

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        first = run()
        torch.set_num_threads(max(2, before))
        second = run()
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
