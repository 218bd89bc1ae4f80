"""The compiled backend (grmseg._C, torch.ops.grmseg_C.*): grm_project_forward on CPU and CUDA, the backend
plumbing (status, kernels, fallback to the reference) and the build report.

These tests fail, never skip, when grmseg._C is missing: `make build` builds it.
"""

from __future__ import annotations

import pytest
import torch

import grmseg
from grmseg import _ext, reference
from grmseg.ops import _backends
from grmseg.ops.impl import csrc

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
    "grm_project_backward": "(Tensor gh, Tensor gm, Tensor x, Tensor w, Tensor b) -> (Tensor, Tensor, Tensor)",
    "grm_reproject_forward": "(Tensor x, Tensor q, Tensor v) -> Tensor",
    "grm_reproject_backward": "(Tensor gy, Tensor x, Tensor q, Tensor v) -> (Tensor, Tensor, Tensor)",
    "graph_conv_forward": "(Tensor z, Tensor adj, Tensor weight, Tensor? bias, str activation) -> Tensor",
    "graph_conv_backward": "(Tensor gout, Tensor out, Tensor z, Tensor adj, Tensor weight, Tensor? bias, "
    "str activation) -> (Tensor, Tensor, Tensor, Tensor)",
    "cam_forward": "(Tensor feat, Tensor weight, Tensor? labels) -> Tensor",
    "local_affinity_forward": "(Tensor feat, int radius) -> Tensor",
    "boundary_affinity_forward": "(Tensor boundary, int radius) -> Tensor",
    "random_walk_forward": "(Tensor cam, Tensor aff, float beta, int steps) -> Tensor",
}


def test_all_schemas_are_registered():
    assert set(SCHEMAS) == set(csrc.KERNEL_NAMES)
    for name, signature in SCHEMAS.items():
        assert str(getattr(ops, name).default._schema) == f"grmseg_C::{name}{signature}"


# ------------------------------------------------------------------------------------------------------ CPU
@pytest.mark.parametrize("shape", SHAPES + [LARGE_P])
def test_cpu_fp64_matches_reference(shape):
    x, w, b = _inputs(*shape)
    h, m = ops.grm_project_forward(x, w, b)
    hr, mr = reference.grm_project(x, w, b)
    assert h.shape == hr.shape and m.shape == mr.shape
    assert h.dtype == m.dtype == torch.float64 and h.is_contiguous() and m.is_contiguous()
    torch.testing.assert_close(h, hr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m, mr, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES + [LARGE_P])
def test_cpu_fp32_matches_fp64_reference(shape):
    x, w, b = _inputs(*shape, dtype=torch.float32)
    _check_fp32(ops.grm_project_forward(x, w, b), _ref64(x, w, b))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES + [LARGE_P])
def test_cpu_half_error_within_twice_reference(shape, dtype):
    x, w, b = _inputs(*shape, dtype=dtype)
    _check_half(ops.grm_project_forward(x, w, b), x, w, b)


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


def test_cpu_deterministic_across_thread_counts():
    x, w, b = _inputs(*LARGE_P, dtype=torch.float32)
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


# ----------------------------------------------------------------------------------------- backend plumbing
def test_backend_status_and_kernels():
    assert csrc.status("cpu") == (True, "")
    assert "grm_project_forward" in csrc.kernels("cpu")
    assert "grm_project_forward" not in csrc.kernels("tpu")
    ok, why = csrc.status("cuda")
    assert ok == _ext.cuda_built()
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
    assert _backends.selected("grm_project_forward", "cpu") == "csrc"  # preferred on the CPU once built
    assert _backends.selected("grm_project_backward", "cpu", "csrc") == "reference"  # not written yet: fallback


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
