"""The C++ CPU kernels of graph_conv (csrc/cpu/graph_conv_cpu.cpp, csrc/cpu/kernels/graph_conv_kernel.cpp)
against grmseg.reference, forward and backward, at every instruction-set level of the CPU kernels.

These tests fail, never skip, when grmseg._C is missing: `make build` builds it.
"""

from __future__ import annotations

import pytest
import torch
from _tolerance import assert_close

import grmseg
from grmseg import reference
from grmseg.ops.impl import csrc as csrc_backend

ops = torch.ops.grmseg_C
SHAPES = [(3, 21, 59, 37), (2, 21, 2048, 256), (1, 21, 300, 1024), (2, 1, 5, 1), (1, 7, 16, 8), (2, 81, 33, 70)]
ACTIVATIONS = ["leaky_relu", "relu", "none"]


def _inputs(bsz, k, f, d, dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(bsz, k, f, generator=g, dtype=torch.float64)
    a = (torch.rand(k, k, generator=g, dtype=torch.float64) > 0.6).double() + torch.eye(k, dtype=torch.float64)
    deg = a.sum(1).rsqrt()
    adj = deg[:, None] * a * deg[None, :]
    w = torch.randn(f, d, generator=g, dtype=torch.float64) / f**0.5
    b = torch.randn(d, generator=g, dtype=torch.float64) if bias else None
    gout = torch.randn(bsz, k, d, generator=g, dtype=torch.float64)
    return [None if t is None else t.to(dtype) for t in (z, adj, w, b, gout)]


def _both(z, adj, w, b, gout, act):
    out = ops.graph_conv_forward(z, adj, w, b, act)
    grads = ops.graph_conv_backward(gout, out, z, adj, w, b, act)
    return out, grads


def _oracle(z, adj, w, b, gout, act):
    d = [None if t is None else t.double() for t in (z, adj, w, b, gout)]
    out = reference.graph_conv(*d[:4], act)
    return out, reference.graph_conv_backward(d[4], out, *d[:4], act)


@pytest.mark.usefixtures("cpu_level")
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_fp64_matches_reference(shape, act):
    for bias in (True, False):
        t = _inputs(*shape, bias=bias)
        out, grads = _both(*t, act)
        ref_out, ref_grads = _oracle(*t, act)
        torch.testing.assert_close(out, ref_out, rtol=1e-11, atol=1e-11)
        for g, r in zip(grads, ref_grads):
            if r is None:
                assert g.numel() == 0
            else:
                assert g.dtype == torch.float64 and g.is_contiguous() and g.shape == r.shape
                torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10 * max(1.0, r.abs().max().item()))


@pytest.mark.usefixtures("cpu_level")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES[:4])
def test_lower_precision(shape, dtype):
    t = _inputs(*shape, dtype=dtype)
    out, grads = _both(*t, "leaky_relu")
    ref_out, ref_grads = _oracle(*t, "leaky_relu")
    half = dtype in (torch.float16, torch.bfloat16)
    plain_out = reference.graph_conv(*t[:4], "leaky_relu") if half else None
    plain_grads = reference.graph_conv_backward(t[4], plain_out, *t[:4], "leaky_relu") if half else [None] * 4
    assert out.dtype == dtype
    assert_close(out, ref_out, plain_out, name="out")
    for i, (g, r, p) in enumerate(zip(grads, ref_grads, plain_grads)):
        assert g.dtype == dtype
        assert_close(g, r, p, name=f"grad[{i}]")


@pytest.mark.usefixtures("cpu_level")
def test_non_contiguous_inputs():
    z, adj, w, b, gout = _inputs(3, 21, 59, 37)
    zt = z.transpose(1, 2).contiguous().transpose(1, 2)
    adjt, wt = adj.t().contiguous().t(), w.t().contiguous().t()
    bs = torch.stack([b, b], 1)[:, 0]
    gt = gout.transpose(0, 2).contiguous().transpose(0, 2)
    assert not (zt.is_contiguous() or wt.is_contiguous() or bs.is_contiguous() or gt.is_contiguous())
    out, grads = _both(zt, adjt, wt, bs, gt, "relu")
    ref_out, ref_grads = _both(z, adj, w, b, gout, "relu")
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.usefixtures("cpu_level")
def test_deterministic_across_thread_counts():
    t = _inputs(2, 21, 2048, 256, dtype=torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        first = _both(*t, "leaky_relu")
        torch.set_num_threads(max(2, before))
        second, third = _both(*t, "leaky_relu"), _both(*t, "leaky_relu")
    finally:
        torch.set_num_threads(before)
    for run in (second, third):
        assert torch.equal(run[0], first[0])
        assert all(torch.equal(a, b) for a, b in zip(run[1], first[1]))


def test_empty_sizes():
    for shape in [(0, 3, 4, 5), (2, 0, 4, 5)]:
        z, adj, w, b, gout = _inputs(*shape)
        out, grads = _both(z, adj, w, b, gout, "leaky_relu")
        assert out.shape == (shape[0], shape[1], shape[3])
        ref_grads = _oracle(z, adj, w, b, gout, "leaky_relu")[1]
        for g, r in zip(grads, ref_grads):
            assert g.shape == r.shape and g.abs().sum() == 0


def test_meta_and_opcheck():
    z, adj, w, b, gout = _inputs(2, 5, 7, 3, dtype=torch.float32)
    meta = ops.graph_conv_forward(z.to("meta"), adj.to("meta"), w.to("meta"), b.to("meta"), "relu")
    assert meta.device.type == "meta" and meta.shape == (2, 5, 3)
    out = ops.graph_conv_forward(z, adj, w, b, "relu")
    torch.library.opcheck(ops.graph_conv_forward.default, (z, adj, w, b, "relu"))
    torch.library.opcheck(ops.graph_conv_backward.default, (gout, out, z, adj, w, b, "relu"))
    torch.library.opcheck(ops.graph_conv_backward.default, (gout, out, z, adj, w, None, "none"))


def test_op_layer_picks_csrc_and_gradcheck():
    for kernel in ("graph_conv_forward", "graph_conv_backward"):
        assert grmseg.ops.selected(kernel, "cpu", "csrc") == "csrc"
        slower = kernel in csrc_backend.NOT_AUTO.get("cpu", ())  # everywhere on the CPU, or at the baseline level
        assert grmseg.ops.selected(kernel, "cpu") == ("reference" if slower else "csrc")
    z, adj, w, b, _ = _inputs(2, 4, 5, 3)
    leaves = [t.clone().requires_grad_() for t in (z, adj, w, b)]
    for act in ACTIVATIONS:
        assert torch.autograd.gradcheck(
            lambda z, a, w, b, act=act: grmseg.ops.graph_conv(z, a, w, b, act, backend="csrc"), leaves
        )


@pytest.mark.parametrize(
    "change, match",
    [
        ({"z": torch.randn(2, 5)}, r"z must be \[B, K, F\]"),
        ({"adj": torch.randn(4, 5)}, r"adj must be \[K, K\] = \[5, 5\]"),
        ({"w": torch.randn(6, 3)}, r"weight must be \[F, D\] with F = 7"),
        ({"b": torch.randn(4)}, r"bias must be \[D\] with D = 3"),
        ({"w": torch.randn(7, 3).double()}, r"same dtype"),
        ({"act": "tanh"}, r"activation must be 'leaky_relu', 'relu' or 'none', got 'tanh'"),
    ],
)
def test_bad_input_raises_runtime_error(change, match):
    z, adj, w, b, _ = _inputs(2, 5, 7, 3, dtype=torch.float32)
    args = {"z": z, "adj": adj, "w": w, "b": b, "act": "relu", **change}
    with pytest.raises(RuntimeError, match=match):
        ops.graph_conv_forward(args["z"], args["adj"], args["w"], args["b"], args["act"])
