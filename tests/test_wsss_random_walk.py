"""random_walk: every implementation that runs here against the dense oracle ``cam_vec @ T^steps``.

Implementations: the local PyTorch walk (``grmseg.ops.impl.local_walk``), ``csrc`` (C++ CPU; CUDA when a GPU is
visible), ``triton`` (CUDA, or its interpreter on CPU) with its fused kernel and with one launch per step. The
oracle is ``grmseg.reference.random_walk`` in float64 (for 48x48 maps: ``grmseg.reference.transition_matrix``
applied step by step, the same matrix without the cost of its 256th power). fp32 results must be within 1e-3
of it, relative to its largest value, for steps in {1, 7, 256}. Interpreter cases stay small. The fp32 accuracy
tests hold every implementation to within 2x of IRN's own fp32 dense walk after 256 steps (see below).
"""

from __future__ import annotations

import functools
import os

import pytest
import torch
from _tolerance import assert_close

import grmseg.ops as gops
from grmseg import reference
from grmseg.ops.impl import triton_wsss
from grmseg.ops.impl.local_walk import random_walk_local, walk_weights

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
RTOL = 1e-3


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _walker(impl: str, device: str):
    """``fn(cam, aff, beta, steps)`` running ``impl`` on ``device``."""
    if impl == "local":
        return random_walk_local
    if impl == "triton-step":
        return functools.partial(triton_wsss.random_walk_forward, fused=False)
    if impl == "triton-fused":
        return functools.partial(triton_wsss.random_walk_forward, fused=True)
    assert gops.selected("random_walk_forward", device, impl) == impl, gops.backends()[impl]
    return functools.partial(gops.random_walk, backend=impl)


def _inputs(bsz, k, h, w, radius, seed=0, kind="local"):
    g = _gen(seed)
    cam = torch.rand(bsz, k, h, w, generator=g, dtype=torch.float64)
    if kind == "local":
        aff = reference.local_affinity(torch.randn(bsz, 4, h, w, generator=g, dtype=torch.float64) * 0.7, radius)
    else:
        aff = reference.boundary_affinity(torch.rand(bsz, 1, h, w, generator=g, dtype=torch.float64) ** 4, radius)
    return cam, aff


@functools.cache
def _oracle(bsz, k, h, w, radius, seed, kind, beta, steps):
    cam, aff = _inputs(bsz, k, h, w, radius, seed, kind)
    if h * w <= 400:
        return reference.random_walk(cam, aff, beta, steps)
    t = reference.transition_matrix(aff, beta)
    y = cam.reshape(bsz, k, h * w)
    for _ in range(steps):
        y = torch.matmul(y, t)
    return y.reshape(bsz, k, h, w)


def _check(out, oracle, name):
    out = out.detach().double().cpu()
    assert out.shape == oracle.shape, name
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    err = (out - oracle).abs().max().item() / max(oracle.abs().max().item(), 1e-30)
    assert err <= RTOL, f"{name}: relative error {err:.3g} > {RTOL}"


def _run(impl, device, case, beta, steps, dtype=torch.float32):
    cam, aff = _inputs(*case)
    out = _walker(impl, device)(cam.to(device, dtype), aff.to(device, dtype), beta, steps)
    assert out.dtype == dtype and out.is_contiguous() and out.device.type == device
    return out


SMALL = (2, 3, 13, 17, 5, 0, "local")  # (B, K, h, w, radius, seed, affinity kind)
# Triton takes CPU tensors only in its interpreter (tests/conftest.py turns it on when no GPU is visible).
TRITON_CPU = os.environ.get("TRITON_INTERPRET", "") == "1"
CUDA_IMPLS = [(d, b) for d in DEVICES if d == "cuda" for b in ("csrc", "triton", "triton-step", "triton-fused", "local")]
FAST_IMPLS = [("cpu", "local"), ("cpu", "csrc")] + CUDA_IMPLS
ALL_IMPLS = FAST_IMPLS + ([("cpu", "triton")] if TRITON_CPU else [])
STEP_IMPLS = [("cpu", "triton-step")] if TRITON_CPU else []


@pytest.mark.parametrize("steps", [1, 7, 256])
@pytest.mark.parametrize("device,impl", ALL_IMPLS + STEP_IMPLS)
def test_small_map_matches_dense(device, impl, steps):
    if impl == "triton-step" and steps == 256 and device == "cpu":
        pytest.skip("one interpreter launch per step: 1 and 7 steps cover it")
    out = _run(impl, device, SMALL, 8.0, steps)
    _check(out, _oracle(*SMALL, 8.0, steps), f"{impl} {steps} steps")


@pytest.mark.parametrize("steps", [1, 7, 256])
@pytest.mark.parametrize("device,impl", FAST_IMPLS)
def test_48x48_matches_dense(device, impl, steps):
    case = (1, 4, 48, 48, 5, 1, "boundary")
    _check(_run(impl, device, case, 10.0, steps), _oracle(*case, 10.0, steps), f"{impl} 48x48 {steps} steps")


@pytest.mark.parametrize("device,impl", ALL_IMPLS + STEP_IMPLS)
@pytest.mark.parametrize(
    "case,beta,steps",
    [
        ((1, 2, 9, 11, 7, 2, "local"), 8.0, 7),  # radius 7: offsets longer than the map is tall
        ((2, 1, 7, 5, 3, 3, "boundary"), 2.5, 7),  # a single class, a non-integer beta
        ((1, 21, 6, 7, 2, 4, "local"), 10.0, 7),  # 21 classes on a tiny map
        ((1, 3, 1, 19, 5, 5, "local"), 8.0, 7),  # one row
    ],
)
def test_shapes_radii_betas(device, impl, case, beta, steps):
    _check(_run(impl, device, case, beta, steps), _oracle(*case, beta, steps), f"{impl} {case}")


@pytest.mark.parametrize("device,impl", ALL_IMPLS)
def test_radius_1_is_the_identity(device, impl):
    cam, _ = _inputs(2, 3, 5, 6, 1)
    aff = cam.new_zeros(2, 0, 5, 6)
    out = _walker(impl, device)(cam.float().to(device), aff.float().to(device), 8.0, 7)
    assert torch.equal(out.cpu(), cam.float())


@pytest.mark.parametrize("device,impl", ALL_IMPLS)
def test_zero_affinity_region_is_nan_free(device, impl):
    """Pixels without any affinity keep their score (d_j = 1): no NaN, and the oracle agrees."""
    cam, aff = _inputs(1, 2, 11, 12, 5, seed=6)
    aff[:, :, 2:7, 3:9] = 0.0
    zero = torch.zeros_like(aff)
    for a in (aff, zero):
        out = _walker(impl, device)(cam.float().to(device), a.float().to(device), 8.0, 7).cpu()
        _check(out, reference.random_walk(cam, a, 8.0, 7), f"{impl} zero affinity")
    assert torch.equal(out, cam.float()), "with no affinity at all the walk is the identity"


@pytest.mark.parametrize("device,impl", ALL_IMPLS)
def test_steps_0_and_no_aliasing(device, impl):
    cam, aff = _inputs(1, 2, 5, 7, 3, seed=7)
    c = cam.float().to(device)
    out = _walker(impl, device)(c, aff.float().to(device), 8.0, 0)
    assert torch.equal(out, c) and out.data_ptr() != c.data_ptr()
    before = c.clone()
    _walker(impl, device)(c, aff.float().to(device), 8.0, 3)
    assert torch.equal(c, before), "the input is not modified"


@pytest.mark.parametrize("device,impl", ALL_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes(device, impl, dtype):
    case = (1, 3, 9, 10, 5, 8, "local")
    cam, aff = _inputs(*case)
    c, a = cam.to(device, dtype), aff.to(device, dtype)
    out = _walker(impl, device)(c, a, 8.0, 7)
    assert out.dtype == dtype
    oracle = reference.random_walk(c.double().cpu(), a.double().cpu(), 8.0, 7)
    plain = reference.random_walk(c, a, 8.0, 7) if dtype != torch.float64 else None
    assert_close(out, oracle, plain, name=f"random_walk {impl} {dtype}")


@pytest.mark.parametrize("device,impl", ALL_IMPLS)
def test_non_contiguous(device, impl):
    cam, aff = _inputs(2, 3, 8, 11, 3, seed=9)
    c = cam.float().to(device).transpose(2, 3)
    a = aff.float().to(device).transpose(2, 3)
    out = _walker(impl, device)(c, a, 8.0, 7)
    # strided views are inputs like any other: the oracle gets the same values
    _check(out, reference.random_walk(c.double().cpu(), a.double().cpu(), 8.0, 7), f"{impl} non-contiguous")


@pytest.mark.skipif(not TRITON_CPU, reason="needs the Triton interpreter")
@pytest.mark.parametrize("fused", [True, False])
def test_triton_gpu_blocks_in_the_interpreter(monkeypatch, fused):
    """The GPU block shapes (several class blocks, pixel tiles and neighbour chunks per pass) on the interpreter."""
    monkeypatch.setattr(triton_wsss, "_walk_blocks", lambda *args: (2, 64, 4, False))
    case = (2, 3, 9, 23, 3, 12, "local")
    out = triton_wsss.random_walk_forward(*(t.float() for t in _inputs(*case)), 8.0, 3, fused=fused)
    _check(out, _oracle(*case, 8.0, 3), f"triton gpu blocks fused={fused}")


def test_local_walk_weights_are_the_transition_matrix():
    """The weights of the local scheme are the entries of the oracle's transition matrix, column by column."""
    _, aff = _inputs(1, 1, 6, 7, 3, seed=10)
    t = reference.transition_matrix(aff, 8.0)[0]  # [N, N]; column j: the weights into pixel j
    torch.testing.assert_close(t.sum(dim=0), torch.ones(42, dtype=torch.float64))
    weights, inv_d, offsets = walk_weights(aff, 8.0)
    local = torch.zeros_like(t)
    for y in range(6):
        for x in range(7):
            j = y * 7 + x
            local[j, j] = inv_d[0, 0, y, x]
            for d, (dy, dx) in enumerate(offsets):
                for sign, plane in ((1, d), (-1, len(offsets) + d)):
                    qy, qx = y + sign * dy, x + sign * dx
                    if 0 <= qy < 6 and 0 <= qx < 7:
                        local[qy * 7 + qx, j] = weights[0, plane, y, x] * inv_d[0, 0, y, x]
                    else:
                        assert weights[0, plane, y, x] == 0
    torch.testing.assert_close(local, t)


def test_csrc_128x128_matches_local_walk():
    """128 x 128 (N = 16384: the dense matrix alone would be 1 GiB in fp32): csrc against the local walk."""
    cam, aff = _inputs(1, 3, 128, 128, 5, seed=11)
    out = gops.random_walk(cam.float(), aff.float(), 8.0, 16, backend="csrc")
    ref = random_walk_local(cam, aff, 8.0, 16)
    _check(out, ref, "csrc 128x128")


# ------------------------------------------------------------------------------------------- fp32 accuracy
# After 256 steps an fp32 walk must stay as close to the float64 answer as IRN's own fp32 walk does: IRN forms
# the dense transition matrix T (column-normalised A^beta, unit diagonal) in fp32, squares it 8 times and
# returns cam_vec @ T^256. Errors, against the float64 oracle `ref` on the same inputs:
#   max error: max |out - ref| / max |ref|;   L2 error: ||out - ref||_2 / ||ref||_2   (over all classes/pixels).
# Every implementation must be within 2x of IRN's fp32 error on both. Inputs are IRN-like: a boundary map with
# ridges on the edges of a few elliptic objects (plus faint noise), its boundary_affinity at radius 5, and 21
# smooth CAM channels damped on the boundaries (IRN multiplies the CAMs by 1 - boundary).
ACC_STEPS = 256


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``x [1, C, h, w]`` (replicated edges)."""
    r = int(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    g = torch.exp(-(t**2) / (2 * sigma * sigma))
    g = g / g.sum()
    c = x.shape[1]
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (r, r, 0, 0), mode="replicate"),
                                   g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 0, r, r), mode="replicate"),
                                      g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@functools.cache
def _irn_scene(size: int, k: int = 21, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cam [1, k, size, size], aff [1, 34, size, size])`` in float64, IRN-like (see above)."""
    g = _gen(seed)
    yy, xx = torch.meshgrid(*(torch.arange(size, dtype=torch.float64),) * 2, indexing="ij")
    label = torch.zeros(size, size, dtype=torch.long)
    for obj in range(1, 5):
        cy, cx = (torch.rand(2, generator=g, dtype=torch.float64) * size).tolist()
        ry, rx = ((0.15 + 0.25 * torch.rand(2, generator=g, dtype=torch.float64)) * size).tolist()
        label[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = obj
    edge = torch.zeros(size, size, dtype=torch.float64)
    edge[:, 1:] += (label[:, 1:] != label[:, :-1]).double()
    edge[1:, :] += (label[1:] != label[:-1]).double()
    bd = _blur(edge.clamp(max=1)[None, None], 1.0)
    bd = (bd / bd.max() * 0.95 + 0.03 * torch.rand(1, 1, size, size, generator=g, dtype=torch.float64)).clamp(0, 1)
    noise = _blur(torch.rand(1, k, size, size, generator=g, dtype=torch.float64), size / 10)
    cam = torch.relu(noise - noise.mean(dim=(2, 3), keepdim=True))
    onehot = torch.nn.functional.one_hot(label % k, k).permute(2, 0, 1)[None].double()
    cam = (cam / (cam.amax(dim=(2, 3), keepdim=True) + 1e-5) * 0.5 + 0.5 * _blur(onehot, 2.0)) * (1 - bd)
    return cam, reference.boundary_affinity(bd, 5)


@functools.cache
def _float64_walk(size: int, beta: float) -> torch.Tensor:
    """The oracle in float64: ``reference.transition_matrix`` applied ``ACC_STEPS`` times (as a sparse matrix)."""
    cam, aff = _irn_scene(size)
    t = reference.transition_matrix(aff, beta)[0].t().to_sparse()  # y T = (T^t y^t)^t
    y = cam.reshape(cam.shape[1], -1).t().contiguous()
    for _ in range(ACC_STEPS):
        y = t @ y
    return y.t().reshape(cam.shape)


@functools.cache
def _irn_fp32_walk(size: int, beta: float) -> torch.Tensor:
    """IRN's fp32 walk: the dense fp32 T (IRN's to_transition_matrix), squared log2(steps) times."""
    cam, aff = _irn_scene(size)
    t = reference.transition_matrix(aff.float(), beta)[0]
    for _ in range(ACC_STEPS.bit_length() - 1):
        t = t @ t
    return (cam.float().reshape(cam.shape[1], -1) @ t).reshape(cam.shape)


def _walk_errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """``(max error, L2 error)`` of ``out`` against ``ref``, both relative to ``ref`` (see above)."""
    diff = out.detach().double().cpu() - ref
    return (diff.abs().max() / ref.abs().max()).item(), (diff.norm() / ref.norm()).item()


ACC_CASES = [(24, 8.0), (24, 10.0), (40, 8.0), (40, 10.0)]
# Triton's interpreter: three of the 21 classes (the errors of IRN's walk are taken on the same three).
ACC_IMPLS = FAST_IMPLS + ([("cpu", "triton")] if TRITON_CPU else [])


@pytest.mark.parametrize("device,impl", ACC_IMPLS)
@pytest.mark.parametrize("size,beta", ACC_CASES)
def test_fp32_walk_as_accurate_as_irn_dense_fp32(device, impl, size, beta):
    cam, aff = _irn_scene(size)
    classes = slice(0, 3) if (device, impl) == ("cpu", "triton") else slice(None)
    ref = _float64_walk(size, beta)[:, classes]
    irn = _walk_errors(_irn_fp32_walk(size, beta)[:, classes], ref)
    out = _walker(impl, device)(cam[:, classes].float().to(device), aff.float().to(device), beta, ACC_STEPS)
    assert out.dtype == torch.float32
    err = _walk_errors(out, ref)
    assert irn[0] > 0 and irn[1] > 0
    assert err[0] <= 2 * irn[0] and err[1] <= 2 * irn[1], (
        f"{impl} {size}x{size} beta {beta}: max error {err[0]:.3g}, L2 error {err[1]:.3g}; "
        f"IRN's fp32 dense walk: {irn[0]:.3g}, {irn[1]:.3g}"
    )


@pytest.mark.usefixtures("cpu_level")
@pytest.mark.parametrize("k", [1, 3, 21])
def test_csrc_cpu_walk_and_boundary_affinity_do_not_depend_on_the_thread_count(k):
    """One class (a parallel region per pass over rows) and three (one per class group): bitwise equal."""
    cam, aff = _irn_scene(24)
    c, a = cam[:, :k].float(), aff.float()
    # boundary maps: one small enough to stay on the calling thread, one large enough to be split
    bds = [torch.rand(2, 1, 29, 23, generator=_gen(13)), torch.rand(2, 1, 64, 61, generator=_gen(14))]
    before = torch.get_num_threads()

    def run():
        return [gops.random_walk(c, a, 10.0, 64, backend="csrc")] + [
            gops.boundary_affinity(bd, 6, backend="csrc") for bd in bds]

    try:
        torch.set_num_threads(1)
        first = run()
        torch.set_num_threads(max(2, before))
        second = run()
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))


@pytest.mark.usefixtures("cpu_level")
def test_csrc_cpu_walk_at_every_level():
    """The CPU pass kernels at each instruction-set level (conftest.py's cpu_level): the dense oracle on small
    maps (class blocks of every size, rows of one pixel block and of several), fp64 tight, and the fp32
    accuracy bound of IRN's walk on its scene."""
    for case, beta, steps in [(SMALL, 8.0, 7), ((1, 21, 6, 7, 2, 4, "local"), 10.0, 7),
                              ((1, 13, 9, 37, 5, 2, "boundary"), 8.0, 33)]:
        _check(_run("csrc", "cpu", case, beta, steps), _oracle(*case, beta, steps), f"csrc {case}")
        out64 = _run("csrc", "cpu", case, beta, steps, dtype=torch.float64)
        torch.testing.assert_close(out64, _oracle(*case, beta, steps), rtol=1e-9, atol=1e-12)
    cam, aff = _irn_scene(24)
    ref = _float64_walk(24, 10.0)
    irn = _walk_errors(_irn_fp32_walk(24, 10.0), ref)
    err = _walk_errors(_walker("csrc", "cpu")(cam.float(), aff.float(), 10.0, ACC_STEPS), ref)
    # the pass kernels add each pixel's own term after its neighbours: about a tenth of IRN's error (measured
    # 0.08-0.15 of it at every level); the own term first would be 0.5-2.5x
    assert err[0] <= irn[0] / 4 and err[1] <= irn[1] / 4, (err, irn)
