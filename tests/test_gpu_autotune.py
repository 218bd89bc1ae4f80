"""The autotuned launch path of the Triton GRM kernels on a GPU (the other CUDA tests may run with the fixed
choice, ``GRMSEG_TRITON_AUTOTUNE=0``, as ``make gpu-check-quick`` does): every config of each autotune list is
compiled, timed, and the winner's results match the reference. Skips without a GPU."""

from __future__ import annotations

import math

import pytest
import torch
from _tolerance import assert_close

from grmseg import ops
from grmseg import reference as ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(("dtype", "k"), [(torch.bfloat16, 21), (torch.float32, 81)], ids=["bf16-K21", "fp32-K81"])
def test_cuda_autotuned_grm_kernels_match_reference(monkeypatch, dtype, k):
    monkeypatch.setenv("GRMSEG_TRITON_AUTOTUNE", "1")
    gen = torch.Generator(device="cuda").manual_seed(k)
    bsz, c, p = 2, 300, 1000

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=gen) * scale).to(dtype).requires_grad_()

    x, w, b = rnd(bsz, c, p), rnd(k, c, scale=c**-0.5), rnd(k, scale=0.1)
    q, v = rnd(bsz, k, c, scale=c**-0.5), rnd(bsz, k, c, scale=0.1)
    z, adj = rnd(bsz, k, 256), (torch.rand(k, k, device="cuda", generator=gen) * 2 / k).to(dtype).requires_grad_()
    weight, bias = rnd(256, 192, scale=1 / math.sqrt(256)), rnd(192, scale=0.1)
    leaves = [x, w, b, q, v, z, adj, weight, bias]

    def layer(x, w, b, q, v, z, adj, weight, bias, fns):
        h, m = fns[0](x, w, b)
        y = fns[1](x, q, v)
        g = fns[2](z, adj, weight, bias, "leaky_relu")
        return h, m, y, g

    triton_fns = (lambda *a: ops.grm_project(*a, backend="triton"), lambda *a: ops.grm_reproject(*a, backend="triton"),
                  lambda *a: ops.graph_conv(*a, backend="triton"))
    outs = layer(*leaves, triton_fns)
    ups = [torch.randn_like(o) for o in outs]
    grads = torch.autograd.grad(outs, leaves, ups)
    l64 = [t.detach().double().requires_grad_() for t in leaves]
    o64 = layer(*l64, (ref.grm_project, ref.grm_reproject, ref.graph_conv))
    g64 = torch.autograd.grad(o64, l64, [u.double() for u in ups])
    plain = [None] * (len(outs) + len(leaves))
    if dtype == torch.bfloat16:
        lp = [t.detach().requires_grad_() for t in leaves]
        op = layer(*lp, (ref.grm_project, ref.grm_reproject, ref.graph_conv))
        plain = [*op, *torch.autograd.grad(op, lp, ups)]
    names = ["h", "m", "y", "g"] + [f"grad {n}" for n in ("x", "w", "b", "q", "v", "z", "adj", "weight", "bias")]
    for i, (got, want) in enumerate(zip([*outs, *grads], [*o64, *g64], strict=True)):
        assert_close(got, want, plain[i], name=names[i])
