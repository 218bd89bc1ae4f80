"""dense_crf: the exact reference, the lattice backends against it and against pydensecrf, determinism, bad input,
and the Triton kernels (interpreter on the CPU; compiled for sm_90 by Triton's real compiler, no GPU needed).

The lattice (csrc on the CPU, triton on CUDA or in its interpreter) approximates the dense Gaussian kernels, so it
is compared with the exact reference by bounds measured on these inputs with a margin (the approximation error
of one message pass, and the label agreement after 10 iterations), and with pydensecrf (the same lattice) to float
rounding. Inputs: images of coloured rectangles with noise, probabilities that favour the rectangles' classes
(a CRF on uniform noise is chaotic: every backend would pick a different symmetry breaking).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

import grmseg.ops as gops
from grmseg import reference
from grmseg.ops import _library

CUDA = torch.cuda.is_available()
TRITON_CPU = os.environ.get("TRITON_INTERPRET", "") == "1"
# The whole lattice suite runs on csrc (CPU) and, with a GPU, on triton (CUDA). Triton's interpreter is slow: on
# the CPU it gets its own, smaller tests against csrc (the same lattice: equal to float rounding) at the end.
LATTICE = [("cpu", "csrc")] + ([("cuda", "triton")] if CUDA else [])
DEFAULTS = {  # pydensecrf's usual settings (the op's defaults), in the order of the op's arguments
    "gaussian_sxy": 3.0,
    "gaussian_weight": 3.0,
    "bilateral_sxy": 80.0,
    "bilateral_srgb": 13.0,
    "bilateral_weight": 10.0,
}
PARAMS = [  # (name, parameters): pydensecrf's defaults, sharp kernels, wide kernels, each kernel alone
    ("default", {}),
    ("sharp", {"gaussian_sxy": 1.0, "bilateral_sxy": 20.0, "bilateral_srgb": 5.0}),
    ("wide", {"gaussian_sxy": 10.0, "bilateral_sxy": 200.0, "bilateral_srgb": 40.0}),
    ("gaussian only", {"bilateral_weight": 0.0}),
    ("bilateral only", {"gaussian_weight": 0.0}),
]
SHAPES = [(1, 4, 17, 23), (2, 3, 31, 29), (1, 21, 12, 40)]  # (B, K, H, W), odd sizes
# The lattice's error on one message pass, relative to the sum of the kernel weights (measured worst on these
# inputs: max 0.25 / mean 0.013 over all PARAMS, 0.12 / 0.004 for the defaults), and the label agreement after
# 10 iterations (worst 0.93 over all, 0.996 for the defaults).
MESSAGE_MAX, MESSAGE_MEAN = 0.35, 0.02
DEFAULT_MAX, DEFAULT_MEAN = 0.18, 0.006
AGREE_ALL, AGREE_DEFAULT = 0.9, 0.98


def _uses(device: str, backend: str) -> None:
    """The named backend runs the kernel itself (no silent fallback to the reference)."""
    assert gops.selected("dense_crf_forward", device, backend) == backend, gops.backends()[backend]


def crf_inputs(b: int, k: int, h: int, w: int, seed: int = 0, device: str = "cpu"):
    """``(p [B, K, H, W] float32, image [B, 3, H, W] uint8)``: coloured rectangles with noise, confident but noisy
    probabilities of the rectangles' classes."""
    g = torch.Generator().manual_seed(seed)
    lab = torch.zeros(b, h, w, dtype=torch.long)
    for bi in range(b):
        for _ in range(6):
            y0, x0 = torch.randint(0, h, (1,), generator=g).item(), torch.randint(0, w, (1,), generator=g).item()
            lab[bi, y0 : y0 + max(1, h // 2), x0 : x0 + max(1, w // 2)] = torch.randint(0, k, (1,), generator=g).item()
    colours = torch.rand(k, 3, generator=g) * 255
    img = colours[lab].permute(0, 3, 1, 2) + 10 * torch.randn(b, 3, h, w, generator=g)
    img = img.clamp(0, 255).round().to(torch.uint8)
    logits = 2.0 * torch.nn.functional.one_hot(lab, k).permute(0, 3, 1, 2).float()
    logits = logits + 1.5 * torch.randn(b, k, h, w, generator=g)
    return logits.softmax(dim=1).to(device), img.to(device)


def _clr(q: torch.Tensor) -> torch.Tensor:
    """Centred log marginals: after one iteration ``log p + m - mean_K(log p + m)``, so their difference between two
    backends is the difference of their messages ``m`` (up to a per-pixel constant, removed by the centring)."""
    lq = q.double().log()
    return lq - lq.mean(dim=1, keepdim=True)


# ------------------------------------------------------------------------------------------------ reference
def _naive_crf(p, img, iterations, gaussian_sxy, gaussian_weight, bilateral_sxy, bilateral_srgb, bilateral_weight):
    """The model written out pixel pair by pixel pair (float64, one image): the reference's specification."""
    _, k, h, w = p.shape
    logp = p[0].double().clamp(reference.CRF_PROB_CLIP, 1).log().reshape(k, -1)
    pix = [(x, y) for y in range(h) for x in range(w)]
    rgb = img[0].double().reshape(3, -1)
    kernels = []
    for weight, sxy, srgb in ((gaussian_weight, gaussian_sxy, None), (bilateral_weight, bilateral_sxy, bilateral_srgb)):
        if weight == 0:
            continue
        kern = torch.zeros(h * w, h * w, dtype=torch.float64)
        for i, (xi, yi) in enumerate(pix):
            for j, (xj, yj) in enumerate(pix):
                d2 = ((xi - xj) ** 2 + (yi - yj) ** 2) / sxy**2
                if srgb is not None:
                    d2 += float(((rgb[:, i] - rgb[:, j]) ** 2).sum()) / srgb**2
                kern[i, j] = math.exp(-d2 / 2)
        norm = (kern.sum(dim=1) + reference.CRF_NORM_EPS).rsqrt()
        kernels.append((weight, kern, norm))
    q = logp.softmax(dim=0)
    for _ in range(iterations):
        msg = torch.zeros_like(q)
        for weight, kern, norm in kernels:
            for i in range(h * w):
                msg[:, i] += weight * norm[i] * sum(kern[i, j] * norm[j] * q[:, j] for j in range(h * w))
        q = (logp + msg).softmax(dim=0)
    return q.reshape(1, k, h, w)


@pytest.mark.parametrize("name,params", PARAMS[:2] + PARAMS[3:])
def test_reference_is_the_model_written_out(name, params):
    p, img = crf_inputs(1, 3, 4, 5, seed=1)
    args = {**DEFAULTS, **params}
    for iterations in (0, 1, 3):
        q = reference.dense_crf(p.double(), img, iterations, *args.values())
        torch.testing.assert_close(q, _naive_crf(p, img, iterations, *args.values()), rtol=1e-10, atol=1e-12)


def test_reference_fixed_points():
    p, img = crf_inputs(1, 5, 6, 7)
    p[0, :, 0, 0] = 0.0  # clipped to 1e-5 each: uniform
    q0 = reference.dense_crf(p, img, 0)
    clipped = p.clamp(reference.CRF_PROB_CLIP, 1)
    torch.testing.assert_close(q0, clipped / clipped.sum(dim=1, keepdim=True))
    no_pairwise = reference.dense_crf(p, img, 5, gaussian_weight=0.0, bilateral_weight=0.0)
    torch.testing.assert_close(no_pairwise, q0)
    one = reference.dense_crf(p[:, :1], img, 4)
    assert torch.equal(one, torch.ones_like(one))
    q = reference.dense_crf(p, img, 10)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(1, 6, 7))


def test_reference_refuses_large_images():
    n = math.isqrt(reference.CRF_REFERENCE_MAX_PIXELS) + 1
    p, img = torch.full((1, 2, n, n), 0.5), torch.zeros(1, 3, n, n, dtype=torch.uint8)
    with pytest.raises(ValueError, match="at most"):
        gops.dense_crf(p, img, backend="reference")


# ----------------------------------------------------------------------------------- lattice vs reference
@pytest.mark.parametrize("device,backend", LATTICE)
@pytest.mark.parametrize("name,params", PARAMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_lattice_message_error_is_bounded(device, backend, name, params, shape):
    _uses(device, backend)
    p, img = crf_inputs(*shape, seed=sum(shape), device=device)
    args = {**DEFAULTS, **params}
    wsum = args["gaussian_weight"] + args["bilateral_weight"]
    q = gops.dense_crf(p, img, iterations=1, **args, backend=backend)
    r = gops.dense_crf(p.double(), img, iterations=1, **args, backend="reference")
    err = (_clr(q) - _clr(r)).abs() / wsum
    top, mean = (DEFAULT_MAX, DEFAULT_MEAN) if name == "default" else (MESSAGE_MAX, MESSAGE_MEAN)
    assert err.max().item() <= top and err.mean().item() <= mean, (err.max().item(), err.mean().item())

    q10 = gops.dense_crf(p, img, iterations=10, **args, backend=backend)
    r10 = gops.dense_crf(p.double(), img, iterations=10, **args, backend="reference")
    agree = (q10.argmax(dim=1) == r10.argmax(dim=1)).double().mean().item()
    assert agree >= (AGREE_DEFAULT if name == "default" else AGREE_ALL), agree
    torch.testing.assert_close(q10.sum(dim=1), torch.ones_like(q10[:, 0]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("device,backend", LATTICE)
def test_lattice_without_messages_is_exact(device, backend):
    p, img = crf_inputs(2, 6, 9, 13, device=device)
    p[0, :, 2, 3] = 0.0
    p[1, 1, 4, 4] = 1.0
    r = reference.dense_crf(p.double(), img, 0)
    torch.testing.assert_close(gops.dense_crf(p, img, iterations=0, backend=backend).double(), r, rtol=1e-6, atol=1e-7)
    off = {"gaussian_weight": 0.0, "bilateral_weight": 0.0}
    torch.testing.assert_close(
        gops.dense_crf(p, img, iterations=3, **off, backend=backend).double(), r, rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("device,backend", LATTICE)
@pytest.mark.parametrize("k", [1, 2, 21, 81])
@pytest.mark.parametrize("hw", [(1, 1), (1, 37), (19, 1), (15, 22)])
def test_lattice_class_counts_and_odd_sizes(device, backend, k, hw):
    _uses(device, backend)
    p, img = crf_inputs(1, k, *hw, seed=k, device=device)
    q = gops.dense_crf(p, img, backend=backend)
    assert q.shape == p.shape and q.dtype == p.dtype and q.device == p.device
    assert torch.isfinite(q).all() and (q >= 0).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones_like(q[:, 0]), rtol=0, atol=1e-5)
    if k == 1:
        assert torch.equal(q, torch.ones_like(q))
    r = gops.dense_crf(p.double(), img, backend="reference")
    agree = (q.argmax(dim=1) == r.argmax(dim=1)).double().mean().item()
    assert agree >= AGREE_ALL, agree


@pytest.mark.parametrize("device,backend", LATTICE)
def test_lattice_dtypes_layouts_and_float_images(device, backend):
    p, img = crf_inputs(2, 5, 14, 19, seed=3, device=device)
    q = gops.dense_crf(p, img, backend=backend)
    # non-contiguous unary (a channels-last copy, a transposed view) and image
    p_cl = p.contiguous(memory_format=torch.channels_last)
    img_t = img.transpose(2, 3).contiguous().transpose(2, 3)
    assert torch.equal(gops.dense_crf(p_cl, img_t, backend=backend), q)
    # an integer-valued float image is the uint8 image
    for dt in (torch.float32, torch.float64, torch.float16):
        assert torch.equal(gops.dense_crf(p, img.to(dt), backend=backend), q), dt
    # every unary dtype: computed in float32, returned in its own dtype
    for dt in (torch.float64, torch.float16, torch.bfloat16):
        qd = gops.dense_crf(p.to(dt), img, backend=backend)
        assert qd.dtype == dt
        ref = gops.dense_crf(p.to(dt).float(), img, backend=backend)
        tol = 1e-6 if dt == torch.float64 else (4e-3 if dt == torch.float16 else 2e-2)
        torch.testing.assert_close(qd.float(), ref, rtol=0, atol=tol)


@pytest.mark.parametrize("device,backend", LATTICE)
def test_lattice_is_deterministic(device, backend):
    p, img = crf_inputs(2, 21, 45, 61, seed=4, device=device)
    first = gops.dense_crf(p, img, backend=backend)
    assert torch.equal(gops.dense_crf(p, img, backend=backend), first)
    if device == "cpu":
        threads = torch.get_num_threads()
        try:
            for n in (1, 2, 3, 5):
                torch.set_num_threads(n)
                assert torch.equal(gops.dense_crf(p, img, backend=backend), first), n
        finally:
            torch.set_num_threads(threads)


def test_lattice_table_grows():
    """Colour noise gives every pixel its own simplices: the bilateral lattice outgrows the first hash table
    (N / 2 slots at least 4096) and is rebuilt in a larger one, with the same result as pydensecrf's."""
    g = torch.Generator().manual_seed(7)
    img = torch.randint(0, 256, (1, 3, 70, 90), generator=g, dtype=torch.uint8)
    p = torch.rand(1, 3, 70, 90, generator=g).softmax(dim=1)
    q = gops.dense_crf(p, img, iterations=3, backend="csrc")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(gops.dense_crf(p, img, iterations=3, backend="csrc"), q)
    finally:
        torch.set_num_threads(threads)
    pytest.importorskip("pydensecrf.densecrf")
    torch.testing.assert_close(q, _pydensecrf(p, img, 3, *DEFAULTS.values()), rtol=0, atol=2e-5)


def test_lattice_batch_is_per_image():
    p, img = crf_inputs(3, 4, 16, 21, seed=5)
    q = gops.dense_crf(p, img, backend="csrc")
    for i in range(3):
        assert torch.equal(gops.dense_crf(p[i : i + 1], img[i : i + 1], backend="csrc"), q[i : i + 1])


def test_auto_picks_the_lattice():
    assert gops.selected("dense_crf_forward", "cpu") == "csrc"
    if torch.cuda.is_available():
        assert gops.selected("dense_crf_forward", "cuda") == "triton"


def test_compile_and_fake_tensor():
    p, img = crf_inputs(1, 3, 10, 12)
    fn = torch.compile(lambda a, b: gops.dense_crf(a, b, iterations=4), fullgraph=True)
    assert torch.equal(fn(p, img), gops.dense_crf(p, img, iterations=4))
    from torch._subclasses.fake_tensor import FakeTensorMode

    half = p.to(torch.float16)
    with FakeTensorMode() as mode:
        fp, fi = mode.from_tensor(half), mode.from_tensor(img)
        out = _library.dense_crf(fp, fi, 10, 3.0, 3.0, 80.0, 13.0, 10.0, "auto")
        assert out.shape == p.shape and out.dtype == torch.float16


def test_no_backward():
    p, img = crf_inputs(1, 3, 5, 6)
    p.requires_grad_(True)
    with pytest.raises(RuntimeError):
        gops.dense_crf(p, img).sum().backward()


# ---------------------------------------------------------------------------------------------- pydensecrf
def _pydensecrf(p, img, iterations, gaussian_sxy, gaussian_weight, bilateral_sxy, bilateral_srgb, bilateral_weight):
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    from pydensecrf.utils import unary_from_softmax

    b, k, h, w = p.shape
    out = []
    for bi in range(b):
        d = dcrf.DenseCRF2D(w, h, k)
        d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(p[bi].cpu().numpy())))
        if gaussian_weight:
            d.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_weight)
        if bilateral_weight:
            rgb = np.ascontiguousarray(img[bi].permute(1, 2, 0).cpu().numpy())
            d.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=rgb, compat=bilateral_weight)
        out.append(torch.from_numpy(np.array(d.inference(iterations))).reshape(k, h, w))
    return torch.stack(out)


@pytest.mark.parametrize("device,backend", LATTICE)
@pytest.mark.parametrize("name,params", PARAMS)
@pytest.mark.parametrize("shape", [(1, 21, 37, 53), (2, 2, 24, 31), (1, 81, 20, 17)])
def test_lattice_matches_pydensecrf(device, backend, name, params, shape):
    pytest.importorskip("pydensecrf.densecrf")
    _uses(device, backend)
    p, img = crf_inputs(*shape, seed=shape[1], device=device)
    args = {**DEFAULTS, **params}
    for iterations in (1, 10):
        q = gops.dense_crf(p, img, iterations=iterations, **args, backend=backend).cpu()
        ref = _pydensecrf(p, img, iterations, *args.values())
        # the same lattice, summed in another order: float rounding (measured <= 5e-7)
        torch.testing.assert_close(q, ref, rtol=0, atol=2e-5)
        assert (q.argmax(dim=1) == ref.argmax(dim=1)).double().mean().item() >= 0.999


# -------------------------------------------------------------------------------------------------- bad input
def _raises(exc, words, fn, *args, **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    for word in words:
        assert word in str(info.value), f"{word!r} missing from: {info.value}"


@pytest.mark.parametrize("backend", ["auto", "reference", "csrc"])
def test_bad_input(backend):
    p, img = crf_inputs(1, 3, 6, 7)
    crf = gops.dense_crf
    kw = {"backend": backend}
    _raises(ValueError, ["'unary'", "[B, K, H, W]", "[3, 6, 7]"], crf, p[0], img, **kw)
    _raises(TypeError, ["'unary'", "torch.int64"], crf, p.long(), img, **kw)
    _raises(TypeError, ["'unary'", "list"], crf, p.tolist(), img, **kw)
    _raises(ValueError, ["'unary'", "empty"], crf, p[:, :0], img[:, :, :, :], **kw)
    _raises(ValueError, ["'image'", "rank 4"], crf, p, img[0], **kw)
    _raises(ValueError, ["'image'", "3 (RGB)", "got 1"], crf, p, img[:, :1], **kw)
    _raises(ValueError, ["'image'", "H of unary", "= 6, got 5"], crf, p, img[:, :, :5], **kw)
    _raises(ValueError, ["'image'", "W of unary"], crf, p, img[:, :, :, 1:], **kw)
    _raises(ValueError, ["'image'", "B of unary"], crf, p, img.expand(2, -1, -1, -1), **kw)
    _raises(TypeError, ["'image'", "torch.int32"], crf, p, img.int(), **kw)
    _raises(TypeError, ["'image'", "ndarray"], crf, p, img.numpy(), **kw)
    for bad in (float("nan"), float("inf"), -0.1, 1.5):
        q = p.clone()
        q[0, 1, 2, 3] = bad
        _raises(ValueError, ["'unary'", "probabilities", "[0, 1]"], crf, q, img, **kw)
    for bad in (float("nan"), -1.0, 256.0, float("inf")):
        im = img.float()
        im[0, 2, 1, 1] = bad
        _raises(ValueError, ["'image'", "0..255"], crf, p, im, **kw)
    _raises(ValueError, ["'iterations'", ">= 0", "-1"], crf, p, img, iterations=-1, **kw)
    _raises(TypeError, ["'iterations'", "2.5"], crf, p, img, iterations=2.5, **kw)
    for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
        _raises(ValueError, [f"'{name}'", "> 0"], crf, p, img, **{name: 0.0}, **kw)
        _raises(ValueError, [f"'{name}'", "finite"], crf, p, img, **{name: float("nan")}, **kw)
    for name in ("gaussian_weight", "bilateral_weight"):
        _raises(ValueError, [f"'{name}'", "finite"], crf, p, img, **{name: float("inf")}, **kw)
        _raises(ValueError, [f"'{name}'", "finite"], crf, p, img, **{name: True}, **kw)
    _raises(ValueError, ["backend"], crf, p, img, backend="cuda")


def test_kernel_checks_its_inputs():
    ops = torch.ops.grmseg_C
    p, img = crf_inputs(1, 3, 6, 7)
    args = (10, 3.0, 3.0, 80.0, 13.0, 10.0)
    _raises(RuntimeError, ["unary must be [B, K, H, W]"], ops.dense_crf_forward, p[0], img, *args)
    _raises(RuntimeError, ["image must be [B, 3, H, W] = [1, 3, 6, 7]"], ops.dense_crf_forward, p, img[:, :2], *args)
    _raises(RuntimeError, ["image must be uint8 or a float dtype"], ops.dense_crf_forward, p, img.int(), *args)
    _raises(RuntimeError, ["iterations must be >= 0"], ops.dense_crf_forward, p, img, -1, *args[1:])
    _raises(RuntimeError, ["bilateral_srgb must be > 0"], ops.dense_crf_forward, p, img, 10, 3.0, 3.0, 80.0, 0.0, 1.0)
    q = p.clone()
    q[0, 0, 0, 0] = float("nan")
    _raises(ValueError, ["unary must hold probabilities"], ops.dense_crf_forward, q, img, *args)
    # features so spread that the lattice's int16 keys would overflow
    _raises(RuntimeError, ["overflow"], ops.dense_crf_forward, p, img, 1, 3.0, 3.0, 80.0, 1e-4, 10.0)


# ------------------------------------------------------------------------------------- triton (interpreter)
triton_cpu = pytest.mark.skipif(not TRITON_CPU, reason="Triton's interpreter is off (TRITON_INTERPRET != 1)")


TRITON_CASES = [((1, 4, 9, 13), name, params) for name, params in PARAMS] + [
    ((2, 21, 7, 6), *PARAMS[0]),
    ((1, 2, 1, 11), *PARAMS[1]),
]


@triton_cpu
@pytest.mark.parametrize(
    "shape,name,params", TRITON_CASES, ids=[f"{n}-{'x'.join(map(str, s))}" for s, n, _ in TRITON_CASES]
)
def test_triton_interpreter_matches_csrc(shape, name, params):
    _uses("cpu", "triton")
    p, img = crf_inputs(*shape, seed=shape[3])
    args = {**DEFAULTS, **params}
    for iterations in (0, 3):
        q = gops.dense_crf(p, img, iterations=iterations, **args, backend="triton")
        ref = gops.dense_crf(p, img, iterations=iterations, **args, backend="csrc")
        torch.testing.assert_close(q, ref, rtol=0, atol=2e-6)


@triton_cpu
@pytest.mark.parametrize("k", [1, 3, 81])
def test_triton_interpreter_class_counts_dtypes_determinism(k):
    p, img = crf_inputs(1, k, 5, 7, seed=k)
    q = gops.dense_crf(p, img, iterations=2, backend="triton")
    torch.testing.assert_close(q, gops.dense_crf(p, img, iterations=2, backend="csrc"), rtol=0, atol=2e-6)
    assert torch.equal(gops.dense_crf(p, img, iterations=2, backend="triton"), q)
    half = gops.dense_crf(p.half(), img.float(), iterations=2, backend="triton")
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), q, rtol=0, atol=4e-3)


@triton_cpu
def test_triton_interpreter_rejects_overflowing_keys():
    p, img = crf_inputs(1, 2, 4, 5)
    with pytest.raises(RuntimeError, match="overflow"):
        gops.dense_crf(p, img, iterations=1, bilateral_srgb=1e-4, backend="triton")


# ------------------------------------------------------------------------ triton (compiled, no GPU needed)
I32, F32 = "*i32", "*fp32"


def _crf_kernel_cases() -> list:
    """``[id, kernel, signature, constexprs]`` for every kernel at the GPU block sizes of the launch policy."""
    from grmseg.ops.impl import triton_crf

    cases = []
    for d, dp in ((2, 4), (5, 8)):
        gpu = triton_crf._blocks(False, 32)
        bl = gpu[f"lattice{d}"]
        bits = (63 - 3) // d
        cases.append(["crf_lattice_kernel", {"feat": F32, "scale": F32, "tkey": "*i64", "towner": I32,
                      "slot_of": I32, "bary": F32, "bad": I32, "NP": "i32", "mask": "i32", "dummy": "i32"},
                      {"D": d, "DP": dp, "BITS": bits, "BLOCK": bl}])
        cases.append(["crf_neighbours_kernel", {"tkey": "*i64", "slot_point": I32, "point_slot": I32, "blur": I32,
                      "M": "i32", "mask": "i32"}, {"D": d, "DP": dp, "BITS": bits, "BLOCK": gpu["neighbours"]}])
    for kp in (1, 2, 32, 128):
        b = triton_crf._blocks(False, kp)
        pts, pix = b["points"], b["pixels"]
        cases += [
            ["crf_splat_kernel", {"q": F32, "seg_pix": I32, "seg_w": F32, "cstart": I32, "cend": I32, "part": F32,
             "NC": "i32"}, {"KP": kp, "CHUNK": b["chunk"], "BLOCK": pts}],
            ["crf_gather_kernel", {"part": F32, "pfirst": I32, "V": F32, "M": "i32"}, {"KP": kp, "BLOCK": pts}],
            ["crf_blur_kernel", {"src": F32, "dst": F32, "blur": I32, "M": "i32", "j": "i32"},
             {"KP": kp, "BLOCK": pts}],
            ["crf_update_kernel", {"q": F32, "u": F32, "out": F32, "off_g": I32, "w_g": F32, "V_g": F32, "off_b": I32,
             "w_b": F32, "V_b": F32, "N": "i32", "K": "i32", "clip": "fp32"},
             {"HAS_G": True, "HAS_B": True, "WRITE_OUT": True, "KP": kp, "BLOCK": pix}],
        ]
    ids = [f"{name}-" + "-".join(f"{k}{v}" for k, v in const.items()) for name, _, const in cases]
    return [[case_id, *case] for case_id, case in zip(ids, cases, strict=True)]


CRF_KERNEL_CASES = _crf_kernel_cases()


@pytest.fixture(scope="module")
def sm90_builds():
    pytest.importorskip("triton")
    from _triton_compile import run_in_subprocess

    return run_in_subprocess("grmseg.triton.dense_crf", CRF_KERNEL_CASES)


@pytest.mark.parametrize("case_id", [c[0] for c in CRF_KERNEL_CASES])
def test_triton_kernels_compile_for_sm90_without_spills(sm90_builds, case_id):
    """Triton's real compiler (no GPU needed) takes every kernel at the block sizes the policy launches on a GPU,
    and keeps everything in registers."""
    result = sm90_builds[case_id]
    assert result["ok"], result["error"]
    assert result["spill"] in (None, 0), f"{case_id}: {result['spill']} bytes of register spills"


@triton_cpu
def test_triton_packed_keys_are_narrower_than_int16():
    """Keys of |key| >= 12288 (bilateral, D = 5) fit pydensecrf's int16 but not the Triton table's 12-bit fields:
    csrc takes them, triton says so."""
    p, img = crf_inputs(1, 2, 4, 5)
    img[0, :, 0, 0] = 255
    args = {**DEFAULTS, "bilateral_srgb": 0.05}
    gops.dense_crf(p, img, iterations=1, **args, backend="csrc")
    with pytest.raises(RuntimeError, match="packed keys"):
        gops.dense_crf(p, img, iterations=1, **args, backend="triton")
