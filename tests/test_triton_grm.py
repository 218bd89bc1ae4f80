"""The Triton backend of grm_project and grm_reproject against grmseg.reference, forward and backward.

On a machine without a GPU the kernels run in Triton's interpreter on CPU tensors (conftest sets
TRITON_INTERPRET=1); with a GPU the same tests run on CUDA tensors (``make gpu-check``). Gradients go through
the op layer (``grmseg.ops.*(..., backend="triton")`` and autograd) and are compared with autograd of the
reference in float64; half dtypes must stay within 2x the error of a plain same-dtype PyTorch computation.
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
# (B, C, P, K): the odd sizes of DESIGN.md; more than one channel block and pixel tile under the interpreter's
# fixed config (C > 256, P > 128); K padded to 128 with 81 nodes; single pixel and single node.
SHAPES = [(3, 59, 97, 21), (2, 300, 150, 33), (1, 130, 300, 81), (2, 5, 1, 1)]
SHAPE_IDS = ["C59-P97-K21", "C300-P150-K33", "C130-P300-K81", "P1-K1"]


def _need_triton(device: str) -> None:
    status = ops.backends()["triton"]
    if not status.available.get(device, False):
        pytest.skip(f"triton backend not available for {device}: {status.reason.get(device, '')}")


def _rand(shape, dtype, device, gen, scale=1.0, strided=False):
    """A random tensor in ``dtype``; ``strided`` gives a non-contiguous view (all strides permuted)."""
    if strided:
        base = torch.randn(*reversed(shape), generator=gen, dtype=torch.float64) * scale
        t = base.permute(*reversed(range(len(shape))))
    else:
        t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
    return t.to(device=device, dtype=dtype)


def _leaf(t):
    return t.detach().requires_grad_()


def _oracle(fn, inputs, upstream):
    """``fn`` and its input gradients in float64 (autograd of the reference)."""
    leaves = [t.detach().double().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out = out if isinstance(out, tuple) else (out,)
    grads = torch.autograd.grad(out, leaves, [g.double() for g in upstream])
    return out, grads


def _plain_project(x, w, b):
    a = (torch.einsum("kc,bcp->bkp", w, x) + b[None, :, None]).softmax(dim=1)
    return torch.einsum("bkp,bcp->bkc", a, x), a.sum(dim=-1)


def _plain_reproject(x, q, v):
    a = torch.einsum("bkc,bcp->bkp", q, x).softmax(dim=1)
    return x + torch.einsum("bkc,bkp->bcp", v, a)


def _check_all(names, got_out, got_grads, fn_plain, inputs, upstream, fn_ref, dtype):
    want_out, want_grads = _oracle(fn_ref, inputs, upstream)
    plain_out, plain_grads = (None,) * len(want_out), (None,) * len(want_grads)
    if dtype in (torch.float16, torch.bfloat16):
        leaves = [_leaf(t) for t in inputs]
        out = fn_plain(*leaves)
        plain_out = out if isinstance(out, tuple) else (out,)
        plain_grads = torch.autograd.grad(plain_out, leaves, upstream)
    got = list(got_out) + list(got_grads)
    want = list(want_out) + list(want_grads)
    plain = list(plain_out) + list(plain_grads)
    for name, g, w, p in zip(names, got, want, plain, strict=True):
        assert g.dtype == dtype, f"{name}: dtype {g.dtype}, expected {dtype}"
        assert_close(g, w, p, name=name)


def _project_inputs(shape, dtype, device, strided, seed=0):
    bsz, c, p, k = shape
    gen = torch.Generator().manual_seed(seed)
    x = _rand((bsz, c, p), dtype, device, gen, strided=strided)
    w = _rand((k, c), dtype, device, gen, scale=2.0 / math.sqrt(c), strided=strided)
    b = _rand((k,), dtype, device, gen, scale=0.5)
    gh = _rand((bsz, k, c), dtype, device, gen)
    gm = _rand((bsz, k), dtype, device, gen)
    return (x, w, b), (gh, gm)


def _reproject_inputs(shape, dtype, device, strided, seed=0):
    bsz, c, p, k = shape
    gen = torch.Generator().manual_seed(seed)
    x = _rand((bsz, c, p), dtype, device, gen, strided=strided)
    q = _rand((bsz, k, c), dtype, device, gen, scale=2.0 / math.sqrt(c), strided=strided)
    v = _rand((bsz, k, c), dtype, device, gen, strided=strided)
    gy = _rand((bsz, c, p), dtype, device, gen)
    return (x, q, v), (gy,)


def _run_project(shape, dtype, device, strided):
    inputs, upstream = _project_inputs(shape, dtype, device, strided)
    leaves = [_leaf(t) for t in inputs]
    h, m = ops.grm_project(*leaves, backend="triton")
    grads = torch.autograd.grad((h, m), leaves, upstream)
    _check_all(["h", "m", "gx", "gw", "gb"], (h, m), grads, _plain_project, inputs, upstream, ref.grm_project, dtype)


def _run_reproject(shape, dtype, device, strided):
    inputs, upstream = _reproject_inputs(shape, dtype, device, strided)
    leaves = [_leaf(t) for t in inputs]
    y = ops.grm_reproject(*leaves, backend="triton")
    grads = torch.autograd.grad((y,), leaves, upstream)
    _check_all(["y", "gx", "gq", "gv"], (y,), grads, _plain_reproject, inputs, upstream, ref.grm_reproject, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_grm_project(device, dtype, shape):
    _need_triton(device)
    _run_project(shape, dtype, device, strided=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_grm_reproject(device, dtype, shape):
    _need_triton(device)
    _run_reproject(shape, dtype, device, strided=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_inputs(device, dtype):
    """Every input a permuted view (x channels-last), plus x as a sliced view."""
    _need_triton(device)
    _run_project((3, 59, 97, 21), dtype, device, strided=True)
    _run_reproject((3, 59, 97, 21), dtype, device, strided=True)
    gen = torch.Generator().manual_seed(1)
    x = _rand((2, 37, 2 * 61), dtype, device, gen)[:, :, ::2]
    w = _rand((5, 37), dtype, device, gen, scale=0.3)
    b = _rand((5,), dtype, device, gen)
    h, m = ops.grm_project(x, w, b, backend="triton")
    want_h, want_m = ref.grm_project(x.double(), w.double(), b.double())
    plain_h, plain_m = _plain_project(x, w, b)
    assert_close(h, want_h, plain_h, name="h (sliced x)")
    assert_close(m, want_m, plain_m, name="m (sliced x)")


@pytest.mark.parametrize("device", DEVICES)
def test_expanded_upstream_gradients(device):
    """``.sum().backward()`` hands the backward kernels stride-0 (expanded) gradients."""
    _need_triton(device)
    (x, w, b), _ = _project_inputs((2, 33, 50, 7), torch.float32, device, strided=False)
    q = _rand((2, 7, 33), torch.float32, device, torch.Generator().manual_seed(2), 0.3)
    leaves = [_leaf(t) for t in (x, w, b, q)]
    h, m = ops.grm_project(*leaves[:3], backend="triton")
    (h.sum() + m.sum() + ops.grm_reproject(leaves[0], leaves[3], h, backend="triton").sum()).backward()
    leaves64 = [t.detach().double().requires_grad_() for t in (x, w, b, q)]
    h64, m64 = ref.grm_project(*leaves64[:3])
    (h64.sum() + m64.sum() + ref.grm_reproject(leaves64[0], leaves64[3], h64).sum()).backward()
    for name, got, want in zip(("gx", "gw", "gb", "gq"), leaves, leaves64, strict=True):
        assert_close(got.grad, want.grad, name=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_pixel_splits_and_int64_offsets(device, dtype, monkeypatch):
    """The split path (several pixel splits, partial sums reduced by the adapter, a ragged last split) and the
    int64 offset path, forced on small inputs."""
    _need_triton(device)
    monkeypatch.setattr(tri, "_splits", lambda batch, pixels, dev: (-(-pixels // 128), 128))
    monkeypatch.setattr(tri, "_needs_int64", lambda *tensors: True)
    _run_project((2, 70, 300, 21), dtype, device, strided=True)
    _run_reproject((2, 70, 300, 21), dtype, device, strided=False)
    # more channels than one block holds under the interpreter's fixed config: the unfused path
    _run_project((1, 300, 200, 21), dtype, device, strided=False)
    _run_reproject((1, 300, 200, 21), dtype, device, strided=True)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    """Two runs give bitwise identical results (no atomics)."""
    _need_triton(device)
    (x, w, b), (gh, gm) = _project_inputs((2, 70, 300, 21), torch.float32, device, strided=False)
    first = tri.grm_project_forward(x, w, b) + tri.grm_project_backward(gh, gm, x, w, b)
    second = tri.grm_project_forward(x, w, b) + tri.grm_project_backward(gh, gm, x, w, b)
    for a, c in zip(first, second, strict=True):
        assert torch.equal(a, c)


@pytest.mark.parametrize("device", DEVICES)
def test_fallbacks_float64_and_large_k(device):
    """float64 and K > 128 run the reference math (gradcheck in float64 goes through it)."""
    _need_triton(device)
    kw = {"dtype": torch.float64, "device": device, "requires_grad": True}
    x, w, b = torch.randn(2, 3, 5, **kw), torch.randn(4, 3, **kw), torch.randn(4, **kw)
    assert torch.autograd.gradcheck(lambda *a: ops.grm_project(*a, backend="triton"), (x, w, b))
    q, v = torch.randn(2, 4, 3, **kw), torch.randn(2, 4, 3, **kw)
    assert torch.autograd.gradcheck(lambda *a: ops.grm_reproject(*a, backend="triton"), (x, q, v))
    x32 = torch.randn(1, 8, 9, device=device)
    w32, b32 = torch.randn(tri.MAX_K + 2, 8, device=device), torch.randn(tri.MAX_K + 2, device=device)
    h, m = ops.grm_project(x32, w32, b32, backend="triton")
    want_h, want_m = ref.grm_project(x32, w32, b32)
    torch.testing.assert_close(h, want_h)
    torch.testing.assert_close(m, want_m)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_triton_backend(device):
    """Schema, fake tensors and autograd registration hold with the triton kernels behind the ops."""
    _need_triton(device)
    gen = torch.Generator().manual_seed(3)
    x = _rand((2, 19, 23), torch.float32, device, gen)
    w, b = _rand((5, 19), torch.float32, device, gen, 0.3), _rand((5,), torch.float32, device, gen)
    q, v = _rand((2, 5, 19), torch.float32, device, gen, 0.3), _rand((2, 5, 19), torch.float32, device, gen)
    opcheck(torch.ops.grmseg.grm_project.default, (x.requires_grad_(), w, b, "triton"))
    opcheck(torch.ops.grmseg.grm_reproject.default, (x, q.requires_grad_(), v, "triton"))


def test_backend_contract(monkeypatch):
    assert tri.NAME == "triton"
    names = {"grm_project", "grm_reproject", "graph_conv"}
    grm_kernels = {f"{n}_{d}" for n in names for d in ("forward", "backward")}
    assert tri.kernels("cuda") == tri.kernels("cpu") >= grm_kernels
    for kernel in tri.kernels("cpu"):
        assert callable(getattr(tri, kernel))
    if tri._load()[2]:
        pytest.skip("triton does not import here")
    assert tri.status("cuda") == (True, "")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert tri.status("cpu") == (True, "")
    monkeypatch.delenv("TRITON_INTERPRET")
    ok, why = tri.status("cpu")
    assert not ok and "TRITON_INTERPRET=1" in why


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a GPU: > 2**31 elements")
def test_int64_offsets_cuda():
    """B*C*P > 2**31 on a real GPU: x is zero except for its last pixels, so the result has a closed form."""
    bsz, c, p, k, tail = 1, 2**15, 2**16 + 3, 21, 5
    x = torch.zeros(bsz, c, p, device="cuda", dtype=torch.bfloat16)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x[:, :, -tail:] = torch.randn(bsz, c, tail, device="cuda", generator=gen).bfloat16()
    w = (torch.randn(k, c, device="cuda", generator=gen) / math.sqrt(c)).bfloat16()
    b = torch.randn(k, device="cuda", generator=gen).bfloat16()
    h, m = tri.grm_project_forward(x, w, b)
    h_tail, m_tail = ref.grm_project(x[:, :, -tail:].double(), w.double(), b.double())
    m_want = m_tail + (p - tail) * b.double().softmax(0)
    assert (h.double() - h_tail).abs().max().item() < 0.05
    assert ((m.double() - m_want).abs() / m_want).max().item() < 0.02
    q = (torch.randn(bsz, k, c, device="cuda", generator=gen) / math.sqrt(c)).bfloat16()
    v = torch.randn(bsz, k, c, device="cuda", generator=gen).bfloat16()
    y = tri.grm_reproject_forward(x, q, v)
    y_tail = ref.grm_reproject(x[:, :, -tail:].double(), q.double(), v.double())
    assert (y[:, :, -tail:].double() - y_tail).abs().max().item() < 0.05
    del y
    torch.cuda.empty_cache()


def test_torch_compile_fullgraph_keeps_the_kernels():
    """grm_project + grm_reproject under torch.compile(fullgraph=True): same forward and gradients as eager."""
    device = DEVICES[-1]
    _need_triton(device)

    def layer(x, w, b, v):
        h, m = ops.grm_project(x, w, b, backend="triton")
        q = h / (m[..., None] + 1.0)
        return ops.grm_reproject(x, q, v, backend="triton")

    gen = torch.Generator().manual_seed(5)
    x = _rand((2, 24, 40), torch.float32, device, gen)
    w, b = _rand((6, 24), torch.float32, device, gen, 0.3), _rand((6,), torch.float32, device, gen)
    v = _rand((2, 6, 24), torch.float32, device, gen)
    gy = _rand((2, 24, 40), torch.float32, device, gen)
    leaves_e = [_leaf(t) for t in (x, w, b, v)]
    leaves_c = [_leaf(t) for t in (x, w, b, v)]
    y_e = layer(*leaves_e)
    grads_e = torch.autograd.grad(y_e, leaves_e, gy)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    y_c = compiled(*leaves_c)
    grads_c = torch.autograd.grad(y_c, leaves_c, gy)
    torch.testing.assert_close(y_c, y_e, rtol=1e-5, atol=1e-5)
    for g_c, g_e in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(g_c, g_e, rtol=1e-5, atol=1e-5)
