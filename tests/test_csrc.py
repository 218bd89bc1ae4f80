"""The compiled backend (grmseg._C, torch.ops.grmseg_C.*): the GRM kernels (grm_project forward and backward,
grm_reproject forward and backward) on CPU and CUDA, the backend plumbing (status, kernels, fallback to the
reference) and the build report.

These tests fail, never skip, when grmseg._C is missing: `make build` builds it.
"""

from __future__ import annotations

import os

import pytest
import torch
from _tolerance import assert_close

import grmseg
from grmseg import _ext, reference
from grmseg.ops import _backends
from grmseg.ops.impl import csrc, cupy_nvrtc

SHAPES = [  # (B, C, P, K)
    (3, 59, 97, 21),
    (1, 1, 1, 1),
    (2, 5, 1, 3),
    (1, 3, 33, 1),
    (2, 7, 40, 2),
]
LARGE_P = (1, 13, 5003, 6)  # several pixel chunks per batch element on the CPU, many tiles on CUDA

ops = torch.ops.grmseg_C


def _inputs(b, c, p, k, dtype=torch.float64, device="cpu", seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, p, generator=g, dtype=torch.float64) * scale
    w = torch.randn(k, c, generator=g, dtype=torch.float64) / max(c, 1) ** 0.5
    bias = torch.randn(k, generator=g, dtype=torch.float64)
    return tuple(t.to(device=device, dtype=dtype) for t in (x, w, bias))


def _ref64(x, w, b):
    return reference.grm_project(x.double(), w.double(), b.double())


def _max_err(out, ref):
    return (out.double() - ref.double()).abs().max().item() if out.numel() else 0.0


def _check_fp32(out, ref):
    for o, r in zip(out, ref):
        assert o.dtype == torch.float32 and o.is_contiguous()
        torch.testing.assert_close(o.double(), r, rtol=1e-5, atol=1e-5 * max(1.0, r.abs().max().item()))


def _check_half(out, x, w, b):
    """Error of the kernel <= 2x the error of the reference run in the same dtype (+ a tiny atol)."""
    ref64 = _ref64(x, w, b)
    same = reference.grm_project(x, w, b)
    for o, r, s in zip(out, ref64, same):
        assert o.dtype == x.dtype and o.is_contiguous() and o.shape == r.shape
        tol = 2 * _max_err(s, r) + 1e-3 * max(1.0, r.abs().max().item()) * torch.finfo(x.dtype).eps
        assert _max_err(o, r) <= tol, (x.dtype, _max_err(o, r), _max_err(s, r))


# ------------------------------------------------------------------------------------------------- the build
def test_extension_is_built():
    assert _ext.built(), _ext.load_error()
    assert _ext.load_error() is None
    assert _ext.has_kernel("grm_project_forward", "cpu")
    assert _ext.has_kernel("grm_project_forward", "CPU")
    assert _ext.has_kernel("grm_project_forward", "Meta")
    assert not _ext.has_kernel("no_such_kernel", "cpu")
    assert _ext.build_info()["torch_version"] == torch.__version__


SCHEMAS = {
    "grm_project_forward": "(Tensor x, Tensor w, Tensor b) -> (Tensor, Tensor)",
    "grm_project_backward": (
        "(Tensor gh, Tensor gm, Tensor x, Tensor w, Tensor b, Tensor? gx_base=None) -> (Tensor, Tensor, Tensor)"
    ),
    "grm_reproject_forward": "(Tensor x, Tensor q, Tensor v) -> Tensor",
    "grm_reproject_backward": "(Tensor gy, Tensor x, Tensor q, Tensor v) -> (Tensor, Tensor, Tensor)",
    "grm_project_keep_forward": "(Tensor x, Tensor w, Tensor b) -> (Tensor, Tensor, Tensor)",
    "grm_project_backward_kept": (
        "(Tensor gh, Tensor gm, Tensor x, Tensor a, Tensor w, Tensor b, Tensor? gx_base=None) -> "
        "(Tensor, Tensor, Tensor)"
    ),
    "grm_reproject_keep_forward": "(Tensor x, Tensor q, Tensor v) -> (Tensor, Tensor)",
    "grm_reproject_backward_kept": "(Tensor gy, Tensor x, Tensor a, Tensor q, Tensor v) -> (Tensor, Tensor, Tensor)",
    "grm_reproject_backward_kept_joint": "(Tensor gy, Tensor x, Tensor a, Tensor q, Tensor v) -> "
    "(Tensor, Tensor, Tensor)",
    "grm_project_backward_kept_joint": "(Tensor gh, Tensor gm, Tensor x, Tensor a, Tensor w, Tensor b, Tensor gy, "
    "Tensor ge, Tensor q) -> (Tensor, Tensor, Tensor)",
    "graph_conv_forward": "(Tensor z, Tensor adj, Tensor weight, Tensor? bias, str activation) -> Tensor",
    "graph_conv_backward": "(Tensor gout, Tensor out, Tensor z, Tensor adj, Tensor weight, Tensor? bias, "
    "str activation) -> (Tensor, Tensor, Tensor, Tensor)",
    "cam_forward": "(Tensor feat, Tensor weight, Tensor? labels) -> Tensor",
    "local_affinity_forward": "(Tensor feat, int radius) -> Tensor",
    "boundary_affinity_forward": "(Tensor boundary, int radius) -> Tensor",
    "random_walk_forward": "(Tensor cam, Tensor aff, float beta, int steps) -> Tensor",
    "dense_crf_forward": "(Tensor unary, Tensor image, int iterations, float gaussian_sxy, float gaussian_weight, "
    "float bilateral_sxy, float bilateral_srgb, float bilateral_weight) -> Tensor",
}


def test_all_schemas_are_registered():
    assert set(SCHEMAS) == set(csrc.KERNEL_NAMES)
    for name, signature in SCHEMAS.items():
        assert str(getattr(ops, name).default._schema) == f"grmseg_C::{name}{signature}"


# ------------------------------------------------------------------------------------------------------ CPU
@pytest.mark.parametrize("shape", SHAPES + [LARGE_P])
@pytest.mark.usefixtures("cpu_level")
def test_cpu_fp64_matches_reference(shape):
    x, w, b = _inputs(*shape)
    h, m = ops.grm_project_forward(x, w, b)
    hr, mr = reference.grm_project(x, w, b)
    assert h.shape == hr.shape and m.shape == mr.shape
    assert h.dtype == m.dtype == torch.float64 and h.is_contiguous() and m.is_contiguous()
    torch.testing.assert_close(h, hr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m, mr, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES + [LARGE_P])
@pytest.mark.usefixtures("cpu_level")
def test_cpu_fp32_matches_fp64_reference(shape):
    x, w, b = _inputs(*shape, dtype=torch.float32)
    _check_fp32(ops.grm_project_forward(x, w, b), _ref64(x, w, b))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES + [LARGE_P])
@pytest.mark.usefixtures("cpu_level")
def test_cpu_half_error_within_twice_reference(shape, dtype):
    x, w, b = _inputs(*shape, dtype=dtype)
    _check_half(ops.grm_project_forward(x, w, b), x, w, b)


@pytest.mark.usefixtures("cpu_level")
def test_cpu_non_contiguous_inputs():
    bsz, c, p, k = 3, 59, 97, 21
    x_t, w, b = _inputs(bsz, p, c, k)[0].transpose(1, 2), *_inputs(bsz, c, p, k)[1:]
    assert not x_t.is_contiguous()
    big = _inputs(bsz + 2, 2 * c + 1, p + 4, k)[0]
    sliced = big[1:-1:1, 1::2, 3:-1]  # [B, C, P] with channel stride 2 and an offset
    assert sliced.shape == (bsz, c, p)
    feat = _inputs(bsz, c, 97, k)[0].reshape(bsz, c, 97, 1).contiguous(memory_format=torch.channels_last)
    cl = feat.flatten(2)  # a channels-last map seen as [B, C, P]: stride(1) == 1, stride(2) == C
    assert cl.stride(1) == 1 and cl.stride(2) == c
    expanded = _inputs(1, c, p, k)[0].expand(bsz, c, p)  # batch stride 0
    w_t = torch.randn(c, k, dtype=torch.float64).t()  # non-contiguous w
    b_s = torch.randn(2 * k, dtype=torch.float64)[::2]  # non-contiguous b
    for xx, ww, bb in [(x_t, w, b), (sliced, w, b), (cl, w, b), (expanded, w, b), (x_t, w_t, b_s)]:
        h, m = ops.grm_project_forward(xx, ww, bb)
        hr, mr = reference.grm_project(xx.contiguous(), ww.contiguous(), bb.contiguous())
        torch.testing.assert_close(h, hr, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(m, mr, rtol=1e-12, atol=1e-12)
    # and in half precision from a channels-last half map
    for dtype in (torch.float16, torch.bfloat16):
        xh = cl.to(dtype)
        _check_half(ops.grm_project_forward(xh, w.to(dtype), b.to(dtype)), xh.contiguous(), w.to(dtype), b.to(dtype))


@pytest.mark.usefixtures("cpu_level")
def test_cpu_empty_sizes():
    x, w, b = _inputs(2, 4, 0, 3)  # no pixels: h = 0, m = 0
    h, m = ops.grm_project_forward(x, w, b)
    assert h.shape == (2, 3, 4) and m.shape == (2, 3)
    assert h.abs().sum() == 0 and m.abs().sum() == 0
    x, w, b = _inputs(0, 4, 5, 3)
    h, m = ops.grm_project_forward(x, w, b)
    assert h.shape == (0, 3, 4) and m.shape == (0, 3)
    x, w, b = _inputs(2, 0, 5, 3)  # no channels: the softmax of b, summed over pixels
    h, m = ops.grm_project_forward(x, w, b)
    assert h.shape == (2, 3, 0)
    torch.testing.assert_close(m, reference.grm_project(x, w, b)[1])


@pytest.mark.usefixtures("cpu_level")
def test_cpu_deterministic_across_thread_counts():
    x, w, b = _inputs(2, 32, 5003, 21, dtype=torch.float32)  # large enough to run in parallel
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        h1, m1 = ops.grm_project_forward(x, w, b)
        torch.set_num_threads(max(2, before))
        h2, m2 = ops.grm_project_forward(x, w, b)
        h3, m3 = ops.grm_project_forward(x, w, b)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(h1, h2) and torch.equal(m1, m2) and torch.equal(h2, h3) and torch.equal(m2, m3)


def test_meta_kernel_and_opcheck():
    x, w, b = _inputs(3, 59, 97, 21, dtype=torch.float32)
    h, m = ops.grm_project_forward(x.to("meta"), w.to("meta"), b.to("meta"))
    assert h.device.type == "meta" and h.shape == (3, 21, 59) and m.shape == (3, 21) and h.dtype == torch.float32
    torch.library.opcheck(ops.grm_project_forward.default, (x, w, b))


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.randn(3, 5), torch.randn(2, 5), torch.randn(2)), r"x must be \[B, C, P\]"),
        ((torch.randn(1, 5, 7), torch.randn(2, 4), torch.randn(2)), r"w must be \[K, C\] with C = x.size\(1\) = 5"),
        ((torch.randn(1, 5, 7), torch.randn(2, 5), torch.randn(3)), r"b must be \[K\] with K = w.size\(0\) = 2"),
        ((torch.randn(1, 5, 7), torch.randn(2, 5, 1), torch.randn(2)), r"w must be \[K, C\]"),
        ((torch.randn(1, 5, 7), torch.randn(2, 5).double(), torch.randn(2)), r"same dtype"),
        (
            (
                torch.ones(1, 5, 7, dtype=torch.int32),
                torch.ones(2, 5, dtype=torch.int32),
                torch.ones(2, dtype=torch.int32),
            ),
            r"float16, bfloat16, float32 or float64",
        ),
    ],
)
def test_bad_input_raises_runtime_error(args, match):
    with pytest.raises(RuntimeError, match=match):
        ops.grm_project_forward(*args)


# ------------------------------------------------------------- CPU: grm_project_backward, grm_reproject_*
# Each kernel: (name of torch.ops.grmseg_C.<name>, the reference function, its inputs from _grm_inputs).
GRM_KERNELS = {
    "grm_project_backward": (reference.grm_project_backward, ("gh", "gm", "x", "w", "b")),
    "grm_reproject_forward": (reference.grm_reproject, ("x", "q", "v")),
    "grm_reproject_backward": (reference.grm_reproject_backward, ("gy", "x", "q", "v")),
    # the same kernels keeping the [B, K, P] assignment (a_p, a_r: the reference's, from x) for backward
    "grm_project_keep_forward": (reference.grm_project_keep, ("x", "w", "b")),
    "grm_project_backward_kept": (reference.grm_project_backward_kept, ("gh", "gm", "x", "a_p", "w", "b")),
    "grm_reproject_keep_forward": (reference.grm_reproject_keep, ("x", "q", "v")),
    "grm_reproject_backward_kept": (reference.grm_reproject_backward_kept, ("gy", "x", "a_r", "q", "v")),
    # the joint backward of a projection and a reprojection of the same x (ge: the reference's, from the above)
    "grm_reproject_backward_kept_joint": (reference.grm_reproject_backward_kept_joint, ("gy", "x", "a_r", "q", "v")),
    "grm_project_backward_kept_joint": (
        reference.grm_project_backward_kept_joint, ("gh", "gm", "x", "a_p", "w", "b", "gy", "ge", "q")
    ),
}
#: The kernels of the table that CUDA has as well (the keep variants are CPU kernels).
CUDA_GRM_KERNELS = {n: GRM_KERNELS[n] for n in ("grm_project_backward", "grm_reproject_forward", "grm_reproject_backward")}
#: Outputs in the accumulation dtype (float32 for half inputs) rather than the dtype of x: the kept assignments.
ACC_OUTPUTS = {("grm_project_keep_forward", 2), ("grm_reproject_keep_forward", 1), ("grm_reproject_backward_kept_joint", 0)}
GRM_SHAPES = [(3, 59, 97, 21), (2, 5, 1, 3), (1, 3, 33, 1), (1, 1, 1, 1), (2, 7, 300, 2)]


def _grm_inputs(bsz, c, p, k, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    t = {
        "x": rnd(bsz, c, p),
        "w": rnd(k, c, scale=max(c, 1) ** -0.5),
        "b": rnd(k),
        "q": rnd(bsz, k, c, scale=2 * max(c, 1) ** -0.5),
        "v": rnd(bsz, k, c),
        "gh": rnd(bsz, k, c),
        "gm": rnd(bsz, k),
        "gy": rnd(bsz, c, p),
    }
    t = {n: v.to(device=device, dtype=dtype) for n, v in t.items()}
    t["a_p"] = reference.grm_project_keep(t["x"], t["w"], t["b"])[2]
    t["a_r"] = reference.grm_reproject_keep(t["x"], t["q"], t["v"])[1]
    t["ge"] = reference.grm_reproject_backward_kept_joint(t["gy"], t["x"], t["a_r"], t["q"], t["v"])[0]
    return t


def _out_dtype(name, i, dtype):
    half = dtype in (torch.float16, torch.bfloat16)
    return torch.float32 if (name, i) in ACC_OUTPUTS and half else dtype


def _as_tuple(out):
    return out if isinstance(out, (tuple, list)) else (out,)


def _run(name, t, names=None):
    return _as_tuple(getattr(ops, name)(*(t[n] for n in (names or GRM_KERNELS[name][1]))))


def _check_kernel(name, t, out=None):
    """The kernel's outputs against the float64 oracle with the rule of tests/_tolerance.py."""
    fn, names = GRM_KERNELS[name]
    out = _run(name, t) if out is None else out
    oracle = _as_tuple(fn(*(t[n].double() for n in names)))
    plain = _as_tuple(fn(*(t[n] for n in names))) if t["x"].dtype in (torch.float16, torch.bfloat16) else None
    assert len(out) == len(oracle)
    for i, (o, r) in enumerate(zip(out, oracle)):
        assert o.dtype == _out_dtype(name, i, t["x"].dtype) and o.is_contiguous() and o.device == t["x"].device
        assert_close(o, r, None if plain is None else plain[i], name=f"{name}[{i}]")


@pytest.mark.parametrize("shape", GRM_SHAPES + [LARGE_P])
@pytest.mark.parametrize("name", list(GRM_KERNELS))
@pytest.mark.usefixtures("cpu_level")
def test_cpu_grm_kernels_fp64_tight(name, shape):
    t = _grm_inputs(*shape)
    fn, names = GRM_KERNELS[name]
    for o, r in zip(_run(name, t), _as_tuple(fn(*(t[n] for n in names)))):
        assert o.shape == r.shape and o.dtype == torch.float64 and o.is_contiguous()
        torch.testing.assert_close(o, r, rtol=1e-11, atol=1e-11 * max(1.0, r.abs().max().item()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", GRM_SHAPES + [LARGE_P])
@pytest.mark.parametrize("name", list(GRM_KERNELS))
@pytest.mark.usefixtures("cpu_level")
def test_cpu_grm_kernels_lower_precision(name, shape, dtype):
    _check_kernel(name, _grm_inputs(*shape, dtype=dtype))


# Outputs of 4 MiB and more are written with streaming stores (csrc/cpu/kernels/gemm.h, kStreamBytes): whole
# aligned rows straight from the last product into the map (P a multiple of 16), or through the tile buffer
# (rows not vector-aligned).
STREAMED_SHAPES = [(1, 64, 16400, 5), (2, 40, 16401, 7)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", STREAMED_SHAPES)
@pytest.mark.parametrize("name", list(GRM_KERNELS))
@pytest.mark.usefixtures("cpu_level")
def test_cpu_grm_kernels_streamed_outputs(name, shape, dtype):
    _check_kernel(name, _grm_inputs(*shape, dtype=dtype))


@pytest.mark.parametrize("name", list(GRM_KERNELS))
@pytest.mark.usefixtures("cpu_level")
def test_cpu_grm_kernels_empty_sizes(name):
    for shape in [(2, 4, 0, 3), (0, 4, 5, 3), (2, 0, 5, 3), (2, 4, 5, 0)]:
        t = _grm_inputs(*shape)
        fn, names = GRM_KERNELS[name]
        for o, r in zip(_run(name, t), _as_tuple(fn(*(t[n] for n in names)))):
            assert o.shape == r.shape
            torch.testing.assert_close(o, r)


def _strided_variants(t):
    """Non-contiguous versions of x / gy: transposed storage, channel stride 2 with an offset, channels-last
    maps seen as [B, C, P], batch stride 0; and non-contiguous w, b, q, v, gh, gm."""
    bsz, c, p = t["x"].shape

    def transposed(a):
        return a.transpose(1, 2).contiguous().transpose(1, 2)

    def sliced(a):
        big = torch.zeros(a.shape[0] + 2, 2 * c + 1, p + 4, dtype=a.dtype, device=a.device)
        big[1:-1, 1::2, 3:-1] = a
        return big[1:-1, 1::2, 3:-1]

    def channels_last(a):
        return a.reshape(bsz, c, p, 1).contiguous(memory_format=torch.channels_last).flatten(2)

    def nc(a):  # same values, every dim strided
        return torch.stack([a, a], dim=-1)[..., 0]

    out = []
    for f in (transposed, sliced, channels_last):
        out.append({**t, "x": f(t["x"]), "gy": f(t["gy"])})
    first = {**t, "x": t["x"][:1], "gy": t["gy"][:1]}
    out.append(
        {
            **{n: v[:1] if v.dim() and n != "w" and n != "b" else v for n, v in t.items()},
            "x": first["x"].expand(bsz, c, p),
            "gy": first["gy"].expand(bsz, c, p),
            "q": t["q"][:1].expand_as(t["q"]),
            "v": t["v"][:1].expand_as(t["v"]),
            "gh": t["gh"][:1].expand_as(t["gh"]),
            "gm": t["gm"][:1].expand_as(t["gm"]),
            "a_p": t["a_p"][:1].expand_as(t["a_p"]),
            "a_r": t["a_r"][:1].expand_as(t["a_r"]),
            "ge": t["ge"][:1].expand_as(t["ge"]),
        }
    )
    out.append({n: nc(v) for n, v in t.items()})
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(GRM_KERNELS))
@pytest.mark.usefixtures("cpu_level")
def test_cpu_grm_kernels_non_contiguous_and_channels_last(name, dtype):
    t = _grm_inputs(3, 59, 97, 21, dtype=dtype)
    variants = _strided_variants(t)
    assert variants[2]["x"].stride(1) == 1 and variants[2]["x"].stride(2) == 59  # channels-last derived
    for tv in variants:
        assert not tv["x"].is_contiguous()
        out = _run(name, tv)
        contiguous = {n: v.contiguous() for n, v in tv.items()}
        _check_kernel(name, contiguous, out)
        if dtype == torch.float64:  # strides change nothing but the rounding of the reductions
            for o, r in zip(out, _run(name, contiguous)):
                torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "name",
    ["grm_project_backward", "grm_reproject_backward", "grm_project_backward_kept", "grm_reproject_backward_kept",
     "grm_reproject_backward_kept_joint", "grm_project_backward_kept_joint"],
)
@pytest.mark.usefixtures("cpu_level")
def test_cpu_grm_backward_deterministic_across_thread_counts(name):
    t = _grm_inputs(2, 32, 5003, 21, dtype=torch.float32)  # large enough to run in parallel
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        first = _run(name, t)
        torch.set_num_threads(max(2, before))
        second, third = _run(name, t), _run(name, t)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) and torch.equal(b, c) for a, b, c in zip(first, second, third))


@pytest.mark.parametrize("name", list(GRM_KERNELS))
@pytest.mark.usefixtures("cpu_level")
def test_cpu_grm_kernels_do_not_depend_on_earlier_calls(name):
    """The kernels reuse their thread's scratch memory from call to call: a call after a larger one whose buffers
    held inf and NaN (left in that memory) gives bitwise the result it gave first."""
    t = _grm_inputs(2, 24, 301, 5, dtype=torch.float32)
    first = _run(name, t)
    poisoned = _grm_inputs(3, 70, 777, 9, dtype=torch.float32, seed=1)
    for key in ("x", "gy"):
        poisoned[key][:, ::3] = float("inf")
        poisoned[key][:, 1::3] = float("nan")
    _run(name, poisoned)
    assert all(torch.equal(a, b) for a, b in zip(first, _run(name, t)))


def _huge_page_advised(ptr: int, nbytes: int) -> bool:
    """Whether a mapping of this process that overlaps [ptr, ptr + nbytes) carries MADV_HUGEPAGE ("hg")."""
    overlaps = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:  # a mapping's first line: "start-end perms ..."
                lo, hi = (int(v, 16) for v in head.split("-"))
                overlaps = lo < ptr + nbytes and ptr < hi
            elif overlaps and line.startswith("VmFlags:") and "hg" in line.split()[1:]:
                return True
    return False


@pytest.mark.skipif(not os.path.isdir("/sys/kernel/mm/transparent_hugepage"), reason="Linux with huge pages only")
def test_cpu_large_outputs_are_advised_for_huge_pages():
    """Outputs of 4 MiB and more (the maps of grm_reproject / grm_project, the dense CRF's probabilities) are marked
    for transparent huge pages before their first write, so that they fault in 2 MiB at a time."""
    t = _grm_inputs(1, 64, 20000, 3, dtype=torch.float32)  # y: 5 MB
    y = ops.grm_reproject_keep_forward(t["x"], t["q"], t["v"])[0]
    assert _huge_page_advised(y.data_ptr(), y.numel() * 4)
    gx = ops.grm_project_backward(t["gh"], t["gm"], t["x"], t["w"], t["b"])[0]
    assert _huge_page_advised(gx.data_ptr(), gx.numel() * 4)
    unary = torch.rand(1, 21, 224, 224).softmax(1)  # the dense CRF's fp32 output: 4.2 MB
    image = torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8)
    q = ops.dense_crf_forward(unary, image, 1, 3.0, 3.0, 80.0, 13.0, 10.0)
    assert q.dtype == torch.float32 and _huge_page_advised(q.data_ptr(), q.numel() * 4)


@pytest.mark.parametrize("name", list(GRM_KERNELS))
def test_grm_kernels_meta_and_opcheck(name):
    t = _grm_inputs(3, 59, 97, 21, dtype=torch.float32)
    meta = _run(name, {n: v.to("meta") for n, v in t.items()})
    for m, o in zip(meta, _run(name, t)):
        assert m.device.type == "meta" and m.shape == o.shape and m.dtype == o.dtype
    small = _grm_inputs(2, 5, 7, 3, dtype=torch.float32)
    torch.library.opcheck(getattr(ops, name).default, tuple(small[n] for n in GRM_KERNELS[name][1]))


def test_gradcheck_through_op_layer_with_csrc():
    for kernel in ("grm_project_forward", "grm_project_backward", "grm_reproject_forward", "grm_reproject_backward"):
        assert grmseg.ops.selected(kernel, "cpu", "csrc") == "csrc"
    for shape in [(2, 5, 7, 3), (1, 3, 1, 1), (2, 4, 9, 1)]:
        t = _grm_inputs(*shape)
        x, w, b, q, v = (t[n].clone().requires_grad_() for n in ("x", "w", "b", "q", "v"))
        assert torch.autograd.gradcheck(lambda x, w, b: grmseg.ops.grm_project(x, w, b, backend="csrc"), (x, w, b))
        assert torch.autograd.gradcheck(lambda x, q, v: grmseg.ops.grm_reproject(x, q, v, backend="csrc"), (x, q, v))


@pytest.mark.usefixtures("cpu_level")
def test_op_layer_grads_match_reference_with_csrc():
    t = _grm_inputs(3, 59, 97, 21)
    leaves = [t[n].clone().requires_grad_() for n in ("x", "q", "v")]
    y = grmseg.ops.grm_reproject(*leaves, backend="csrc")
    y.backward(t["gy"])
    ref = [t[n].clone().requires_grad_() for n in ("x", "q", "v")]
    reference.grm_reproject(*ref).backward(t["gy"])
    torch.testing.assert_close(y.detach(), reference.grm_reproject(t["x"], t["q"], t["v"]))
    for got, want in zip(leaves, ref):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-10, atol=1e-10)


# grm_project_backward's optional gx_base: added to gx in the kernel's last product, read where it lies (fp32 /
# fp64, pixel-contiguous, whole vectors) or through the tile buffer (other dtypes, strides, a last partial tile).
GX_BASE_SHAPES = [(3, 59, 97, 21), (2, 5, 1, 3), (2, 7, 320, 2), LARGE_P, STREAMED_SHAPES[0]]


@pytest.mark.parametrize("layout", ["contiguous", "pixels-strided"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", GX_BASE_SHAPES)
@pytest.mark.usefixtures("cpu_level")
def test_cpu_project_backward_adds_gx_base(shape, dtype, layout):
    t = _grm_inputs(*shape, dtype=dtype)
    base = _grm_inputs(*shape, dtype=dtype, seed=1)["gy"]
    if layout == "pixels-strided":
        base = base.transpose(1, 2).contiguous().transpose(1, 2)
    args = tuple(t[n] for n in ("gh", "gm", "x", "w", "b"))
    gx, gw, gb = ops.grm_project_backward(*args, base)
    _, gw0, gb0 = ops.grm_project_backward(*args)
    assert torch.equal(gw, gw0) and torch.equal(gb, gb0)
    oracle = reference.grm_project_backward(*(a.double() for a in args), base.double())[0]
    plain = reference.grm_project_backward(*args, base)[0] if dtype == torch.bfloat16 else None
    assert gx.dtype == dtype and gx.is_contiguous()
    if dtype == torch.float64:
        torch.testing.assert_close(gx, oracle, rtol=1e-11, atol=1e-11 * oracle.abs().max().item())
    else:
        assert_close(gx, oracle, plain, name="gx with gx_base")


def test_project_backward_gx_base_empty_sizes_meta_and_opcheck():
    for shape in [(2, 4, 0, 3), (2, 4, 5, 0), (0, 4, 5, 3)]:
        t = _grm_inputs(*shape)
        base = torch.randn(t["x"].shape, dtype=torch.float64)
        gx, _, _ = ops.grm_project_backward(t["gh"], t["gm"], t["x"], t["w"], t["b"], base)
        torch.testing.assert_close(gx, base)  # nothing of grm_project's own when K or P is 0
    small = _grm_inputs(2, 5, 7, 3, dtype=torch.float32)
    args = tuple(small[n] for n in ("gh", "gm", "x", "w", "b")) + (small["gy"],)
    meta = ops.grm_project_backward(*(a.to("meta") for a in args))
    assert meta[0].device.type == "meta" and meta[0].shape == small["x"].shape
    torch.library.opcheck(ops.grm_project_backward.default, args)


@pytest.mark.parametrize(
    "base, match",
    [
        (torch.randn(2, 5, 6), r"gx_base must have the shape of x"),
        (torch.randn(2, 5, 7).double(), r"gx_base must have the dtype of x"),
    ],
)
def test_project_backward_bad_gx_base_raises_runtime_error(base, match):
    t = _grm_inputs(2, 5, 7, 3, dtype=torch.float32)
    with pytest.raises(RuntimeError, match=match):
        ops.grm_project_backward(t["gh"], t["gm"], t["x"], t["w"], t["b"], base)


def _bad(name, **changes):
    t = _grm_inputs(2, 5, 7, 3, dtype=torch.float32)
    t.update(changes)
    return name, tuple(t[n] for n in GRM_KERNELS[name][1])


@pytest.mark.parametrize(
    "case, match",
    [
        (_bad("grm_project_backward", gh=torch.randn(2, 3, 4)), r"gh must be \[B, K, C\] = \[2, 3, 5\]"),
        (_bad("grm_project_backward", gm=torch.randn(2, 4)), r"gm must be \[B, K\] = \[2, 3\]"),
        (_bad("grm_project_backward", gh=torch.randn(2, 3, 5).double()), r"dtype of x"),
        (_bad("grm_project_backward", w=torch.randn(3, 4)), r"w must be \[K, C\] with C = x.size\(1\) = 5"),
        (_bad("grm_reproject_forward", x=torch.randn(5, 7)), r"x must be \[B, C, P\]"),
        (_bad("grm_reproject_forward", q=torch.randn(2, 3, 4)), r"q must be \[B, K, C\] with B = 2, C = 5"),
        (_bad("grm_reproject_forward", v=torch.randn(2, 4, 5)), r"v must have the shape of q"),
        (_bad("grm_reproject_forward", q=torch.randn(2, 3, 5).double()), r"same dtype"),
        (_bad("grm_reproject_backward", gy=torch.randn(2, 5, 6)), r"gy must have the shape of x"),
        (_bad("grm_reproject_backward", gy=torch.randn(2, 5, 7).half()), r"gy must have the dtype of x"),
        (_bad("grm_project_backward_kept", a_p=torch.rand(2, 3, 6)), r"a must be \[B, K, P\] = \[2, 3, 7\]"),
        (_bad("grm_project_backward_kept", a_p=torch.rand(2, 3, 7).double()), r"accumulation dtype of x"),
        (_bad("grm_reproject_backward_kept", a_r=torch.rand(2, 4, 7)), r"a must be \[B, K, P\] = \[2, 3, 7\]"),
        (_bad("grm_reproject_backward_kept_joint", a_r=torch.rand(2, 4, 7)), r"a must be \[B, K, P\] = \[2, 3, 7\]"),
        (_bad("grm_project_backward_kept_joint", ge=torch.rand(2, 3, 6)), r"a must be \[B, K, P\] = \[2, 3, 7\]"),
        (_bad("grm_project_backward_kept_joint", q=torch.randn(2, 3, 4)), r"q must be \[B, K, C\] = \[2, 3, 5\]"),
        (_bad("grm_project_backward_kept_joint", q=torch.randn(2, 3, 5).double()), r"q must be .* dtype of x"),
        (_bad("grm_project_backward_kept_joint", gy=torch.randn(2, 5, 6)), r"gy must have the shape of x"),
        (
            _bad(
                "grm_reproject_forward",
                x=torch.ones(2, 5, 7, dtype=torch.int32),
                q=torch.ones(2, 3, 5, dtype=torch.int32),
                v=torch.ones(2, 3, 5, dtype=torch.int32),
            ),
            r"float16, bfloat16, float32 or float64",
        ),
    ],
)
def test_grm_kernels_bad_input_raises_runtime_error(case, match):
    name, args = case
    with pytest.raises(RuntimeError, match=match):
        getattr(ops, name)(*args)


# ----------------------------------------------------------------------------------------- backend plumbing
def test_backend_status_and_kernels():
    assert csrc.status("cpu") == (True, "")
    assert "grm_project_forward" in csrc.kernels("cpu")
    assert "grm_project_forward" not in csrc.kernels("tpu")
    ok, why = csrc.status("cuda")
    assert ok == (_ext.cuda_built() or cupy_nvrtc.active()[0])
    assert ok or "built without its CUDA part" in why
    assert ("grm_project_forward" in csrc.kernels("cuda")) == _ext.cuda_built()
    for name in csrc.kernels("cpu") | csrc.kernels("cuda"):
        assert callable(getattr(csrc, name))

    status = grmseg.backends()["csrc"]
    assert status.available["cpu"] and "grm_project_forward" in status.kernels["cpu"]
    if not torch.cuda.is_available():
        assert not status.available["cuda"] and status.reason["cuda"]
    else:
        assert status.available["cuda"] == _ext.cuda_built()
    assert _backends.selected("grm_project_forward", "cpu", "csrc") == "csrc"
    # preferred on the CPU once built, except where it is slower at x86-64's baseline level (csrc.NOT_AUTO)
    def preferred(name: str) -> str:
        return "reference" if name in csrc.NOT_AUTO.get("cpu", ()) else "csrc"

    assert _backends.selected("grm_project_forward", "cpu") == preferred("grm_project_forward")
    for name in ("grm_project_backward", "grm_reproject_forward", "grm_reproject_backward"):
        assert name in csrc.kernels("cpu") and _ext.has_kernel(name, "Meta")
        assert _backends.selected(name, "cpu", "csrc") == "csrc"
        assert _backends.selected(name, "cpu") == preferred(name)
    for name in ("graph_conv_forward", "graph_conv_backward"):
        assert _backends.selected(name, "cpu", "csrc") == "csrc"


def test_op_layer_forward_and_backward_through_fallback():
    x, w, b = _inputs(3, 59, 97, 21)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    h, m = grmseg.ops.grm_project(*leaves, backend="csrc")
    hr, mr = reference.grm_project(x, w, b)
    torch.testing.assert_close(h.detach(), hr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.detach(), mr, rtol=1e-12, atol=1e-12)
    gh, gm = torch.randn_like(h), torch.randn_like(m)
    torch.autograd.backward((h, m), (gh, gm))
    ref_leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    torch.autograd.backward(reference.grm_project(*ref_leaves), (gh, gm))
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-10, atol=1e-10)

    x32, w32, b32 = (t.float() for t in (x, w, b))
    _check_fp32(grmseg.ops.grm_project(x32, w32, b32, backend="csrc"), _ref64(x32, w32, b32))


def test_build_summary_mentions_versions_and_backends():
    text = grmseg.build_summary()
    assert grmseg.__version__ in text and torch.__version__ in text
    assert "grmseg._C: built with" in text
    assert ("with CUDA" in text) == _ext.cuda_built()
    for name in ("reference", "triton", "csrc"):
        assert name in text


# ------------------------------------------------------------ CUDA device code, emulated on the CPU (no GPU)
# The kernels of csrc/cuda/grm_fused_kernels.cuh compiled as host C++ and run one block after another with a
# single thread per block: checks the indexing, the math, the partial layout and the chunk reductions (not the
# races, which a one-thread block cannot have) on every machine. Launch parameters: cupy_nvrtc._plan, the mirror
# of the C++ host code.
_EMU_CPP = r"""
// Single-thread emulation of the CUDA kernels (blockDim = 1): checks indexing and math, not races.
#include <cmath>
#include <cstdint>
#include <algorithm>
struct Dim { unsigned x = 0; };
static Dim threadIdx, blockIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __restrict__
#define __shared__
#define __align__(n)
inline void __syncthreads() {}
namespace grmseg_kernels { alignas(16) unsigned char smem_raw[1 << 22]; }
#include "cuda/grm_fused_kernels.cuh"
using namespace grmseg_kernels;
template <class F> void run(int64_t blocks, F f) {
  blockDim.x = 1; threadIdx.x = 0; gridDim.x = blocks;
  for (int64_t b = 0; b < blocks; ++b) { blockIdx.x = b; f(); }
}
extern "C" {
void pb(const double* x, int64_t sb, int64_t sc, int64_t sp, const double* w, const double* bias, const double* gh,
        const double* gm, double* gx, double* pw, double* pbb, int64_t C, int64_t P, int K, int tile, int64_t chunk_px,
        int64_t chunks, int64_t blocks) {
  run(blocks, [&] { project_backward_kernel<double, double>(x, sb, sc, sp, w, bias, gh, gm, gx, pw, pbb, C, P, K, tile, chunk_px, chunks); });
}
void rf(const double* x, int64_t sb, int64_t sc, int64_t sp, const double* q, const double* v, double* y, int64_t C,
        int64_t P, int K, int tile, int64_t chunk_px, int64_t chunks, int64_t blocks) {
  run(blocks, [&] { reproject_forward_kernel<double, double>(x, sb, sc, sp, q, v, y, C, P, K, tile, chunk_px, chunks); });
}
void rb(const double* gy, int64_t gsb, int64_t gsc, int64_t gsp, const double* x, int64_t sb, int64_t sc, int64_t sp,
        const double* q, const double* v, double* gx, double* pq, double* pv, int64_t C, int64_t P, int K, int tile,
        int64_t chunk_px, int64_t chunks, int64_t blocks) {
  run(blocks, [&] { reproject_backward_kernel<double, double>(gy, gsb, gsc, gsp, x, sb, sc, sp, q, v, gx, pq, pv, C, P, K, tile, chunk_px, chunks); });
}
void red(const double* src, double* dst, int64_t groups, int64_t n, int64_t chunks) {
  run(1, [&] { reduce_chunks_kernel<double, double>(src, dst, groups, n, chunks); });
}
}
"""


@pytest.fixture(scope="module")
def cuda_emulator(tmp_path_factory):
    import ctypes
    import shutil
    import subprocess
    from pathlib import Path

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("emu")
    (d / "emu.cpp").write_text(_EMU_CPP)
    csrc_dir = Path(__file__).resolve().parents[1] / "csrc"
    cmd = [cxx, "-O1", "-std=c++17", "-shared", "-fPIC", f"-I{csrc_dir}", "-o", str(d / "emu.so"), str(d / "emu.cpp")]
    subprocess.run(cmd, check=True, capture_output=True)
    return ctypes.CDLL(str(d / "emu.so"))


def _emulated(lib, name, t):
    import ctypes

    i64, i32 = ctypes.c_int64, ctypes.c_int

    def ptr(a):
        return ctypes.c_void_p(a.data_ptr())

    def strides(a):
        return [i64(v) for v in a.stride()]

    f64 = {"dtype": torch.float64}
    x = t["x"]
    B, C, P = x.shape
    K = t["w"].shape[0]
    if name == "grm_project_backward":
        tile, _, chunks, cpx = cupy_nvrtc._plan(B, K, C, P, 2, 1, 8)
        blocks = B * chunks
        gx, pw, pb = torch.empty(B, C, P, **f64), torch.zeros(blocks, K, C, **f64), torch.empty(blocks, K, **f64)
        args = [ptr(t[n]) for n in ("w", "b", "gh", "gm")]
        lib.pb(ptr(x), *strides(x), *args, ptr(gx), ptr(pw), ptr(pb), i64(C), i64(P), i32(K), i32(tile), i64(cpx),
               i64(chunks), i64(blocks))  # fmt: skip
        gw, gb = torch.empty(K, C, **f64), torch.empty(K, **f64)
        lib.red(ptr(pw), ptr(gw), i64(1), i64(K * C), i64(blocks))
        lib.red(ptr(pb), ptr(gb), i64(1), i64(K), i64(blocks))
        return gx, gw, gb
    if name == "grm_reproject_forward":
        tile, _, chunks, cpx = cupy_nvrtc._plan(B, K, C, P, 1, 1, 8)
        y = torch.empty(B, C, P, **f64)
        lib.rf(ptr(x), *strides(x), ptr(t["q"]), ptr(t["v"]), ptr(y), i64(C), i64(P), i32(K), i32(tile), i64(cpx),
               i64(chunks), i64(B * chunks))  # fmt: skip
        return (y,)
    tile, _, chunks, cpx = cupy_nvrtc._plan(B, K, C, P, 2, 2, 8)
    blocks = B * chunks
    gy = t["gy"]
    gx, pq, pv = torch.empty(B, C, P, **f64), torch.zeros(blocks, K, C, **f64), torch.zeros(blocks, K, C, **f64)
    lib.rb(ptr(gy), *strides(gy), ptr(x), *strides(x), ptr(t["q"]), ptr(t["v"]), ptr(gx), ptr(pq), ptr(pv), i64(C),
           i64(P), i32(K), i32(tile), i64(cpx), i64(chunks), i64(blocks))  # fmt: skip
    gq, gv = torch.empty(B, K, C, **f64), torch.empty(B, K, C, **f64)
    lib.red(ptr(pq), ptr(gq), i64(B), i64(K * C), i64(chunks))
    lib.red(ptr(pv), ptr(gv), i64(B), i64(K * C), i64(chunks))
    return gx, gq, gv


@pytest.mark.parametrize("shape", [*GRM_SHAPES, LARGE_P, (2, 40, 300, 300)])
@pytest.mark.parametrize("name", list(CUDA_GRM_KERNELS))
def test_cuda_device_code_emulated_on_cpu(cuda_emulator, name, shape):
    t = _grm_inputs(*shape)
    t = {**t, "x": t["x"].transpose(1, 2).contiguous().transpose(1, 2)}  # strided x: P is not the inner dim
    fn, names = GRM_KERNELS[name]
    for o, r in zip(_emulated(cuda_emulator, name, t), _as_tuple(fn(*(t[n] for n in names)))):
        torch.testing.assert_close(o, r, rtol=1e-11, atol=1e-11 * max(1.0, r.abs().max().item()))


# ------------------------------------------------------------------------------------- CuPy NVRTC fallback
def test_cupy_nvrtc_source_loading(tmp_path, monkeypatch):
    src = cupy_nvrtc.load_source()
    assert "GRMSEG_NVRTC" in src and "namespace grmseg_kernels" in src and "ATen" not in src.split("#endif")[1]
    for kernel in ("project_backward_kernel", "reproject_forward_kernel", "reproject_backward_kernel"):
        assert f"{kernel}(" in src
    names = cupy_nvrtc.name_expressions()
    assert len(names) == 16 and "grmseg_kernels::reproject_forward_kernel<__nv_bfloat16, float>" in names
    assert set(cupy_nvrtc.KERNEL_NAMES) <= set(csrc.KERNEL_NAMES)
    monkeypatch.setenv(cupy_nvrtc.SOURCE_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="GRMSEG_CUDA_SOURCE_DIR"):
        cupy_nvrtc.load_source()


def test_cupy_nvrtc_fallback_decision(monkeypatch):
    if _ext.cuda_built():
        assert cupy_nvrtc.decision() == (False, "not needed: grmseg._C has its compiled CUDA kernels")
    monkeypatch.setattr(_ext, "cuda_built", lambda: False)
    monkeypatch.setitem(__import__("sys").modules, "cupy", None)  # CuPy missing
    ok, why = cupy_nvrtc.decision()
    assert not ok and "CuPy is not installed" in why
    monkeypatch.undo()
    monkeypatch.setattr(_ext, "cuda_built", lambda: False)
    cupy = pytest.importorskip("cupy")
    monkeypatch.setattr(cupy.cuda, "is_available", lambda: False)
    assert cupy_nvrtc.decision() == (False, "CuPy is installed but sees no CUDA device")
    monkeypatch.setattr(cupy.cuda, "is_available", lambda: True)
    assert cupy_nvrtc.decision() == (True, cupy_nvrtc.ACTIVE_REASON)
    monkeypatch.setenv(cupy_nvrtc.SOURCE_DIR_ENV, "/nonexistent")
    ok, why = cupy_nvrtc.decision()
    assert not ok and "sources are not found" in why


def test_cupy_nvrtc_wiring_in_csrc_backend(monkeypatch):
    monkeypatch.setattr(_ext, "cuda_built", lambda: False)
    monkeypatch.setattr(cupy_nvrtc, "active", lambda: (True, cupy_nvrtc.ACTIVE_REASON))
    assert csrc.status("cuda") == (True, cupy_nvrtc.ACTIVE_REASON)
    assert csrc.kernels("cuda") == frozenset(cupy_nvrtc.KERNEL_NAMES)
    monkeypatch.setattr(cupy_nvrtc, "active", lambda: (False, "CuPy is not installed"))
    ok, why = csrc.status("cuda")
    assert not ok and "built without its CUDA part" in why and "CuPy is not installed" in why
    assert csrc.kernels("cuda") == frozenset()
    # CPU tensors never take the NVRTC path
    t = _grm_inputs(2, 5, 7, 3)
    torch.testing.assert_close(
        csrc.grm_reproject_forward(t["x"], t["q"], t["v"]), reference.grm_reproject(t["x"], t["q"], t["v"])
    )


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_cupy_nvrtc_compiles_the_kernel_sources(arch):
    pytest.importorskip("cupy")
    pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    ptx = cupy_nvrtc.compile_ptx(arch)
    assert f".target sm_{arch[-2:]}" in ptx
    assert ptx.count(".entry") >= 16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", list(CUDA_GRM_KERNELS))
def test_cuda_cupy_nvrtc_kernels_match_reference(name, dtype):
    pytest.importorskip("cupy")
    t = _grm_inputs(3, 59, 97, 21, dtype=dtype, device="cuda")
    out = _as_tuple(getattr(cupy_nvrtc, name)(*(t[n] for n in GRM_KERNELS[name][1])))
    _check_kernel(name, t, out)


# ----------------------------------------------------------------------------------------------------- CUDA
CUDA_SHAPES = SHAPES + [LARGE_P, (2, 300, 1000, 21), (4, 64, 4097, 81), (1, 17, 70, 300)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_cuda_matches_reference(shape, dtype):
    assert _ext.cuda_built(), _ext.cuda_skip_reason()
    x, w, b = _inputs(*shape, dtype=dtype, device="cuda")
    out = ops.grm_project_forward(x, w, b)
    if dtype == torch.float64:
        for o, r in zip(out, reference.grm_project(x, w, b)):
            torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)
    elif dtype == torch.float32:
        _check_fp32(out, _ref64(x, w, b))
    else:
        _check_half(out, x, w, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_non_contiguous_deterministic_and_op_layer():
    bsz, c, p, k = 3, 59, 97, 21
    x = _inputs(bsz, p, c, k, dtype=torch.float32, device="cuda")[0].transpose(1, 2)
    _, w, b = _inputs(bsz, c, p, k, dtype=torch.float32, device="cuda")
    feat = x.reshape(bsz, c, p, 1).contiguous(memory_format=torch.channels_last).flatten(2)
    for xx in (x, feat, x[:, 1::2]):
        ww = w[:, : xx.shape[1]]
        _check_fp32(ops.grm_project_forward(xx, ww, b), _ref64(xx, ww, b))
    xl, wl, bl = _inputs(*LARGE_P, dtype=torch.float32, device="cuda")
    first = ops.grm_project_forward(xl, wl, bl)
    second = ops.grm_project_forward(xl, wl, bl)
    assert all(torch.equal(a, c) for a, c in zip(first, second))
    h, m = grmseg.ops.grm_project(x, w, b, backend="csrc")
    _check_fp32((h, m), _ref64(x, w, b))
    with pytest.raises(RuntimeError, match="same device"):
        ops.grm_project_forward(x, w.cpu(), b)
    with pytest.raises(RuntimeError, match="do not fit in shared memory"):
        ops.grm_project_forward(*_inputs(1, 4, 8, 7000, dtype=torch.float32, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", GRM_SHAPES + [LARGE_P, (2, 300, 1000, 21), (4, 64, 4097, 81)])
@pytest.mark.parametrize("name", list(CUDA_GRM_KERNELS))
def test_cuda_grm_kernels_match_reference(name, shape, dtype):
    assert _ext.cuda_built(), _ext.cuda_skip_reason()
    assert name in csrc.kernels("cuda")
    _check_kernel(name, _grm_inputs(*shape, dtype=dtype, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(CUDA_GRM_KERNELS))
def test_cuda_grm_kernels_non_contiguous_deterministic(name):
    t = _grm_inputs(3, 59, 97, 21, dtype=torch.float32, device="cuda")
    for tv in _strided_variants(t):
        assert not tv["x"].is_contiguous()
        _check_kernel(name, tv)
    tl = _grm_inputs(2, 13, 5003, 6, dtype=torch.float32, device="cuda")
    assert all(torch.equal(a, b) for a, b in zip(_run(name, tl), _run(name, tl)))
    bad = "gh" if name == "grm_project_backward" else "v"
    with pytest.raises(RuntimeError, match="same device|device of x"):
        _run(name, {**tl, bad: tl[bad].cpu()})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gradcheck_through_op_layer_with_csrc():
    for kernel in ("grm_project_backward", "grm_reproject_forward", "grm_reproject_backward"):
        assert grmseg.ops.selected(kernel, "cuda", "csrc") == "csrc"
    t = _grm_inputs(2, 5, 7, 3, device="cuda")
    x, w, b, q, v = (t[n].clone().requires_grad_() for n in ("x", "w", "b", "q", "v"))
    assert torch.autograd.gradcheck(lambda x, w, b: grmseg.ops.grm_project(x, w, b, backend="csrc"), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, q, v: grmseg.ops.grm_reproject(x, q, v, backend="csrc"), (x, q, v))
