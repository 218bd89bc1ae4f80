"""The CUDA kernels of graph_conv in grmseg._C (csrc/cuda/graph_conv_cuda.cu) against grmseg.reference.

Forward and backward on odd sizes, every dtype (fp32 vs float64; fp16/bf16 within 2x of a plain same-dtype
PyTorch computation), every activation, with and without bias, non-contiguous inputs, bad input. They need a
GPU and a build with the CUDA part (``make gpu-check``); without a GPU they skip, and the source is compiled by
tests/test_gpu_compile.py (nvcc -Xptxas -v) on every run instead.
"""

from __future__ import annotations

import math

import pytest
import torch
from _tolerance import assert_close

from grmseg import _ext
from grmseg import reference as ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(3, 21, 59, 37), (2, 81, 130, 70), (2, 128, 150, 140), (2, 1, 5, 1), (1, 300, 17, 9)]
ACTIVATIONS = ["leaky_relu", "relu", "none"]


def _ops():
    assert _ext.cuda_built(), f"grmseg._C has no CUDA part: {_ext.cuda_skip_reason()}"
    return torch.ops.grmseg_C


def _inputs(shape, dtype, with_bias=True, strided=False, seed=0):
    bsz, k, f, d = shape
    g = torch.Generator().manual_seed(seed)

    def rnd(*s, scale=1.0, uniform=False):
        dims = tuple(reversed(s)) if strided else s
        t = (torch.rand if uniform else torch.randn)(*dims, generator=g, dtype=torch.float64) * scale
        t = t.permute(*reversed(range(len(s)))) if strided else t
        return t.to(device="cuda", dtype=dtype)

    z = rnd(bsz, k, f)
    adj = rnd(k, k, scale=2.0 / k, uniform=True)
    weight = rnd(f, d, scale=1.0 / math.sqrt(f))
    bias = rnd(d, scale=0.1) if with_bias else None
    gout = rnd(bsz, k, d)
    return z, adj, weight, bias, gout


def _plain(z, adj, weight, bias, activation):
    """The layer in plain PyTorch in the inputs' own dtype (the half-precision yardstick)."""
    pre = torch.matmul(adj, torch.matmul(z, weight))
    if bias is not None:
        pre = pre + bias
    if activation == "relu":
        return torch.relu(pre)
    if activation == "leaky_relu":
        return torch.nn.functional.leaky_relu(pre, ref.LEAKY_SLOPE)
    return pre


def _check(shape, dtype, activation, with_bias=True, strided=False):
    ops = _ops()
    z, adj, weight, bias, gout = _inputs(shape, dtype, with_bias, strided)
    out = ops.graph_conv_forward(z, adj, weight, bias, activation)
    grads = ops.graph_conv_backward(gout, out, z, adj, weight, bias, activation)
    leaves = [t for t in (z, adj, weight, bias) if t is not None]
    l64 = [t.detach().double().requires_grad_() for t in leaves]
    args64 = l64 + ([None] if bias is None else [])
    out64 = ref.graph_conv(*args64, activation)
    want = torch.autograd.grad(out64, l64, gout.double())
    plain = [None] * (1 + len(leaves))
    if dtype in (torch.float16, torch.bfloat16):
        lp = [t.detach().requires_grad_() for t in leaves]
        outp = _plain(*(lp + ([None] if bias is None else [])), activation)
        plain = [outp, *torch.autograd.grad(outp, lp, gout)]
    assert out.dtype == dtype and out.is_contiguous() and out.shape == out64.shape
    assert_close(out, out64, plain[0], name=f"out ({activation})")
    names = ["gz", "gadj", "gweight", "gbias"][: len(leaves)]
    for i, name in enumerate(names):
        assert grads[i].dtype == dtype and grads[i].is_contiguous()
        assert_close(grads[i], want[i], plain[1 + i], name=f"{name} ({activation})")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_graph_conv_cuda_matches_reference(shape, dtype):
    _check(shape, dtype, "leaky_relu")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_graph_conv_cuda_activations_bias_and_strides(activation, dtype):
    _check((2, 33, 40, 24), dtype, activation, with_bias=False)
    _check((2, 33, 40, 24), dtype, activation, with_bias=True, strided=True)


def test_graph_conv_cuda_empty_and_deterministic():
    ops = _ops()
    z, adj, weight, bias, gout = _inputs((2, 21, 0, 8), torch.float32)
    out = ops.graph_conv_forward(z, adj, weight, bias, "relu")
    torch.testing.assert_close(out, torch.relu(bias).expand(2, 21, 8))
    gz, gadj, gw, gb = ops.graph_conv_backward(gout, out, z, adj, weight, bias, "relu")
    assert gz.shape == (2, 21, 0) and gw.shape == (0, 8) and not gadj.abs().sum() and gb.shape == (8,)
    z, adj, weight, bias, gout = _inputs((4, 81, 256, 256), torch.float32, seed=3)
    first = ops.graph_conv_backward(gout, ops.graph_conv_forward(z, adj, weight, bias, "leaky_relu"), z, adj,
                                    weight, bias, "leaky_relu")
    second = ops.graph_conv_backward(gout, ops.graph_conv_forward(z, adj, weight, bias, "leaky_relu"), z, adj,
                                     weight, bias, "leaky_relu")
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_graph_conv_cuda_bad_input():
    ops = _ops()
    z, adj, weight, bias, _ = _inputs((2, 5, 4, 3), torch.float32)
    with pytest.raises(RuntimeError, match="activation must be 'leaky_relu', 'relu' or 'none'"):
        ops.graph_conv_forward(z, adj, weight, bias, "gelu")
    with pytest.raises(RuntimeError, match=r"adj must be \[K, K\]"):
        ops.graph_conv_forward(z, adj[:4], weight, bias, "relu")
    with pytest.raises(RuntimeError, match="same dtype"):
        ops.graph_conv_forward(z, adj.double(), weight, bias, "relu")
    with pytest.raises(RuntimeError, match="same device"):
        ops.graph_conv_forward(z, adj, weight.cpu(), bias, "relu")
    with pytest.raises(RuntimeError, match=r"gout and out must be \[B, K, D\]"):
        ops.graph_conv_backward(z, z, z, adj, weight, bias, "relu")


def test_graph_conv_op_layer_uses_the_cuda_kernels():
    """Through grmseg.ops with backend="csrc": forward and autograd match the reference."""
    import grmseg

    _ops()
    z, adj, weight, bias, gout = _inputs((2, 21, 30, 16), torch.float32)
    leaves = [t.detach().requires_grad_() for t in (z, adj, weight, bias)]
    out = grmseg.ops.graph_conv(*leaves, "leaky_relu", backend="csrc")
    got = [out, *torch.autograd.grad(out, leaves, gout)]
    l64 = [t.detach().double().requires_grad_() for t in (z, adj, weight, bias)]
    out64 = ref.graph_conv(*l64, "leaky_relu")
    want = [out64, *torch.autograd.grad(out64, l64, gout.double())]
    for name, g, w in zip(["out", "gz", "gadj", "gweight", "gbias"], got, want, strict=True):
        assert_close(g, w, name=name)
