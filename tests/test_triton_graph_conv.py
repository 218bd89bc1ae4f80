"""The Triton backend of graph_conv against grmseg.reference, forward and backward.

Runs in Triton's interpreter on CPU tensors when no GPU is visible, on CUDA tensors in ``make gpu-check``.
Gradients go through the op layer and autograd and are compared with autograd of the reference in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from _tolerance import assert_close
from conftest import DEVICES
from torch.library import opcheck

from grmseg import ops
from grmseg import reference as ref
from grmseg.ops.impl import triton as tri

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, K, F, D): odd sizes; several F chunks and D blocks under the interpreter's fixed config (64); K = 128
# (the largest block); a single node and a single output feature.
SHAPES = [(3, 21, 59, 37), (2, 81, 130, 70), (2, 128, 150, 140), (2, 1, 5, 1)]
SHAPE_IDS = ["K21-F59-D37", "K81-F130-D70", "K128-F150-D140", "K1-D1"]
ACTIVATIONS = ["leaky_relu", "relu", "none"]


def _need_triton(device: str) -> None:
    status = ops.backends()["triton"]
    if not status.available.get(device, False):
        pytest.skip(f"triton backend not available for {device}: {status.reason.get(device, '')}")


def _rand(shape, dtype, device, gen, scale=1.0, strided=False, uniform=False):
    dims = tuple(reversed(shape)) if strided else tuple(shape)
    base = torch.rand(*dims, generator=gen, dtype=torch.float64) if uniform else torch.randn(
        *dims, generator=gen, dtype=torch.float64
    )
    base = base * scale
    t = base.permute(*reversed(range(len(shape)))) if strided else base
    return t.to(device=device, dtype=dtype)


def _plain(z, adj, weight, bias, activation):
    pre = torch.matmul(adj, torch.matmul(z, weight))
    if bias is not None:
        pre = pre + bias
    if activation == "relu":
        return torch.relu(pre)
    if activation == "leaky_relu":
        return torch.nn.functional.leaky_relu(pre, 0.2)
    return pre


def _inputs(shape, dtype, device, strided, with_bias, seed=0):
    bsz, k, f, d = shape
    gen = torch.Generator().manual_seed(seed)
    z = _rand((bsz, k, f), dtype, device, gen, strided=strided)
    adj = _rand((k, k), dtype, device, gen, scale=2.0 / k, strided=strided, uniform=True)
    weight = _rand((f, d), dtype, device, gen, scale=1.0 / math.sqrt(f), strided=strided)
    bias = _rand((d,), dtype, device, gen, scale=0.1) if with_bias else None
    gout = _rand((bsz, k, d), dtype, device, gen)
    return (z, adj, weight, bias), gout


def _run(shape, dtype, device, activation, with_bias=True, strided=False):
    inputs, gout = _inputs(shape, dtype, device, strided, with_bias)
    tensors = [t for t in inputs if t is not None]
    names = ["out", "gz", "gadj", "gweight"] + (["gbias"] * with_bias)

    def call(fn, ts):
        z, adj, weight, *rest = ts
        return fn(z, adj, weight, rest[0] if rest else None, activation)

    leaves = [t.detach().requires_grad_() for t in tensors]
    out = call(lambda *a: ops.graph_conv(*a, backend="triton"), leaves)
    got = [out, *torch.autograd.grad(out, leaves, gout)]

    leaves64 = [t.detach().double().requires_grad_() for t in tensors]
    out64 = call(ref.graph_conv, leaves64)
    want = [out64, *torch.autograd.grad(out64, leaves64, gout.double())]

    plain = [None] * len(want)
    if dtype in (torch.float16, torch.bfloat16):
        leaves_p = [t.detach().requires_grad_() for t in tensors]
        out_p = call(_plain, leaves_p)
        plain = [out_p, *torch.autograd.grad(out_p, leaves_p, gout)]
    for name, g, w, p in zip(names, got, want, plain, strict=True):
        assert g.dtype == dtype, f"{name}: dtype {g.dtype}, expected {dtype}"
        assert_close(g, w, p, name=f"{name} ({activation})")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_graph_conv(device, dtype, shape):
    _need_triton(device)
    _run(shape, dtype, device, "leaky_relu")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ["relu", "none"])
def test_graph_conv_activations_without_bias(device, dtype, activation):
    _need_triton(device)
    _run((3, 21, 59, 37), dtype, device, activation, with_bias=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_graph_conv_non_contiguous(device, dtype):
    _need_triton(device)
    _run((3, 21, 59, 37), dtype, device, "relu", strided=True)


@pytest.mark.parametrize("device", DEVICES)
def test_graph_conv_fallbacks(device):
    """float64 (gradcheck through the reference math) and K > 128 run the reference."""
    _need_triton(device)
    kw = {"dtype": torch.float64, "device": device, "requires_grad": True}
    args = (torch.randn(2, 3, 4, **kw), torch.rand(3, 3, **kw), torch.randn(4, 5, **kw), torch.randn(5, **kw))
    assert torch.autograd.gradcheck(lambda *a: ops.graph_conv(*a, "leaky_relu", backend="triton"), args)
    k = tri.MAX_K + 1
    z, adj, w = torch.randn(1, k, 6, device=device), torch.rand(k, k, device=device), torch.randn(6, 4, device=device)
    torch.testing.assert_close(ops.graph_conv(z, adj, w, None, "relu", backend="triton"),
                               ref.graph_conv(z, adj, w, None, "relu"))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_graph_conv_triton(device):
    _need_triton(device)
    (z, adj, weight, bias), _ = _inputs((2, 5, 7, 6), torch.float32, device, False, True)
    opcheck(torch.ops.grmseg.graph_conv.default, (z.requires_grad_(), adj, weight, bias, "relu", "triton"))
    opcheck(torch.ops.grmseg.graph_conv.default, (z, adj, weight.requires_grad_(), None, "none", "triton"))
