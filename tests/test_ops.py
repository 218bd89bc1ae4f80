"""The op layer: torch.library registration (opcheck), backend selection, and clear errors for bad input."""

import functools

import pytest
import torch
from torch.library import opcheck

from grmseg import ops, reference
from grmseg.ops import _backends

T = torch.randn


def _args():
    return {
        "grm_project": (T(2, 5, 7), T(3, 5), T(3)),
        "grm_reproject": (T(2, 5, 7), T(2, 3, 5), T(2, 3, 5)),
        "graph_conv": (T(2, 3, 5), torch.rand(3, 3), T(5, 4), T(4), "relu"),
        "cam": (T(2, 5, 4, 6), T(3, 5), torch.tensor([[1, 0, 1], [0, 1, 1]])),
        "local_affinity": (T(2, 5, 4, 6), 3, len(reference.affinity_offsets(3))),
        "boundary_affinity": (torch.rand(2, 1, 4, 6), 3, len(reference.affinity_offsets(3))),
        "random_walk": (torch.rand(2, 3, 4, 6), torch.rand(2, 4, 4, 6), 8.0, 3),
    }


@pytest.mark.parametrize("name", list(_args()))
def test_opcheck(name):
    """Schema, fake tensor, autograd registration and AOT dispatch of every registered op."""
    args = _args()[name] + ("reference",)
    opcheck(getattr(torch.ops.grmseg, name).default, args)


@pytest.mark.parametrize("name", ["grm_project", "grm_reproject", "graph_conv"])
def test_public_op_matches_reference_forward_and_backward(name):
    args = [a.double().requires_grad_() if isinstance(a, torch.Tensor) else a for a in _args()[name]]
    public, ref = getattr(ops, name), getattr(reference, name)
    out = public(*args)
    want = ref(*args)
    out, want = (out, want) if isinstance(out, tuple) else ((out,), (want,))
    grads_out = [torch.randn_like(o) for o in out]
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    got = torch.autograd.grad(out, tensors, grads_out)
    exp = torch.autograd.grad(want, tensors, grads_out)
    for a, b in zip(out + got, want + exp):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_gradcheck_through_the_op_layer():
    x, w, b = (torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((2, 3, 5), (4, 3), (4,)))
    assert torch.autograd.gradcheck(ops.grm_project, (x, w, b))
    q, v = (torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(ops.grm_reproject, (x, q, v))


def _tee_chain(x, w, b, v, tee, backend):
    """grm_project -> node keys -> grm_reproject of x, with x used twice: through grm_project_tee's x_tee, or
    plainly (autograd adds the two gradients of x)."""
    if tee:
        h, m, x_r = ops.grm_project_tee(x, w, b, backend=backend)
    else:
        (h, m), x_r = ops.grm_project(x, w, b, backend=backend), x
    q = h / (m[..., None] + 1.0)
    return ops.grm_reproject(x_r, q, v, backend=backend), m


@pytest.mark.parametrize("backend", ["reference", "csrc", "triton"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_grm_project_tee_matches_x_used_twice(backend, dtype):
    if _backends.selected("grm_project_backward", "cpu", backend) != backend:
        pytest.skip(f"{backend} does not run grm_project_backward on the CPU here")
    g = torch.Generator().manual_seed(3)
    x, w, b, v = (torch.randn(*s, generator=g, dtype=torch.float64).to(dtype) for s in
                  ((2, 6, 300), (4, 6), (4,), (2, 4, 6)))
    runs = []
    for tee in (True, False):
        leaves = [t.clone().requires_grad_() for t in (x, w, b, v)]
        y, m = _tee_chain(*leaves, tee, backend)
        grads = torch.autograd.grad((y, m), leaves, (torch.ones_like(y), torch.ones_like(m)))
        runs.append((y, m, *grads))
    # the tee rounds gx once (the kernel adds gx_base in fp32); x used twice rounds it twice (each gx, then the sum)
    tol = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    for got, want in zip(*runs, strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_grm_project_tee_hands_x_on_and_gradchecks():
    x, w, b = (torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((2, 3, 5), (4, 3), (4,)))
    h, m, x_tee = ops.grm_project_tee(x, w, b)
    assert torch.equal(x_tee, x) and x_tee.data_ptr() == x.data_ptr()
    h_plain, m_plain = ops.grm_project(x, w, b)
    assert torch.equal(h, h_plain) and torch.equal(m, m_plain)
    v = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b, v: _tee_chain(x, w, b, v, True, "auto"), (x, w, b, v))
    with pytest.raises(ValueError, match="'w'"):
        ops.grm_project_tee(x, torch.randn(4, 2, dtype=torch.float64), b)


def _saved_sizes(keep, backend="auto", bsz=2, c=12, p=1000, k=8):
    """The numel of every tensor the three GRM ops save for backward (K < C, so an assignment is told apart)."""
    x, w, b = T(bsz, c, p, requires_grad=True), T(k, c, requires_grad=True), T(k, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        ops.grm_project(x, w, b, backend=backend, keep_assignment=keep)
        ops.grm_project_tee(x, w, b, backend=backend, keep_assignment=keep)
        ops.grm_reproject(x, T(bsz, k, c), T(bsz, k, c), backend=backend, keep_assignment=keep)
    return saved, bsz * c * p, bsz * k * p


def test_nothing_of_size_bkp_is_saved_without_keep_assignment():
    """keep_assignment=False: only the inputs are kept between forward and backward."""
    saved, x_size, a_size = _saved_sizes(False)
    assert len(saved) == 9 and a_size not in saved and max(saved) == x_size


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_keep_assignment_saves_one_assignment_per_op(backend):
    """The default on the CPU: each op keeps its [B, K, P] assignment besides its inputs, and nothing when no
    input requires grad."""
    saved, x_size, a_size = _saved_sizes(True, backend)
    assert len(saved) == 12 and saved.count(a_size) == 3 and max(saved) == x_size
    kept = []
    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        ops.grm_project(T(2, 12, 50), T(8, 12), T(8))
    assert kept == []


def test_keep_assignment_follows_the_backend():
    """Kept only where the backend that runs the op has kernels that keep it: the Triton kernels recompute it."""
    assert _backends.keeps_assignment("grm_project", "cpu", "reference")
    assert _backends.keeps_assignment("grm_reproject", "cpu", "reference")
    assert not _backends.keeps_assignment("grm_project", "cuda", "auto") or not torch.cuda.is_available()
    if _backends.backends()["triton"].available.get("cpu"):
        assert not _backends.keeps_assignment("grm_project", "cpu", "triton")
        assert not _backends.keeps_assignment("grm_reproject", "cpu", "triton")
    with pytest.raises(TypeError, match="keep_assignment"):
        ops.grm_project(T(2, 5, 7), T(3, 5), T(3), keep_assignment="yes")


def _keep_chain(x, w, b, v, backend, keep):
    """grm_project_tee -> grm_reproject with keys from the class centres: every input gets a gradient."""
    h, m, xt = ops.grm_project_tee(x, w, b, backend=backend, keep_assignment=keep)
    q = h / (m.unsqueeze(-1) + 1.0)
    y = ops.grm_reproject(xt, q, v, backend=backend, keep_assignment=keep)
    return y, h, m


def test_keep_assignment_gives_the_gradients_of_recomputing():
    """The same values and gradients, kept or recomputed (float64, the reference and the CPU kernels)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 37, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    for backend in ("reference", "auto"):
        results = []
        for keep in (True, False):
            y, h, m = _keep_chain(x, w, b, v, backend, keep)
            loss = (y * y).sum() + (h * h).sum() + m.sum()
            results.append((y.detach(), *torch.autograd.grad(loss, (x, w, b, v))))
        for kept, recomputed in zip(*results):
            torch.testing.assert_close(kept, recomputed, rtol=1e-12, atol=1e-12)
        xs = x[:, :4, :9].detach().clone().requires_grad_()
        ws, bs = w[:, :4].detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        vs = v[:, :, :4].detach().clone().requires_grad_()
        chain = functools.partial(_keep_chain, backend=backend, keep=True)
        assert torch.autograd.gradcheck(chain, (xs, ws, bs, vs))


def test_non_contiguous_inputs():
    x = T(2, 7, 5).transpose(1, 2)  # [2, 5, 7], strided
    w, b = T(3, 5), T(3)
    h, m = ops.grm_project(x, w, b)
    h2, m2 = reference.grm_project(x.contiguous(), w, b)
    torch.testing.assert_close(h, h2)
    torch.testing.assert_close(m, m2)


# ------------------------------------------------------------------------------------------- backend choice
def test_backends_report_reference_everywhere_and_reasons_otherwise():
    report = ops.backends()
    assert set(report) == {"reference", "triton", "csrc"}
    assert report["reference"].available["cpu"]
    assert "grm_project_forward" in report["reference"].kernels["cpu"]
    for status in report.values():
        for dev, ok in status.available.items():
            assert ok or status.reason[dev], f"{status.name} on {dev} is unavailable without a reason"
        assert status.name in str(status)
    if not torch.cuda.is_available():
        assert not report["reference"].available["cuda"]


def test_forced_backend_and_environment_variable(monkeypatch):
    assert ops.selected("grm_project_forward", "cpu", "reference") == "reference"
    monkeypatch.setenv("GRMSEG_BACKEND", "reference")
    assert ops.selected("grm_project_forward", "cpu") == "reference"
    monkeypatch.setenv("GRMSEG_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="backend must be"):
        ops.grm_project(*_args()["grm_project"])


def test_auto_skips_kernels_a_backend_marks_slower(monkeypatch):
    """A backend's NOT_AUTO kernels are passed over by "auto" but still run when forced."""
    from grmseg.ops.impl import csrc

    assert "cam_forward" in ops.backends()["csrc"].kernels["cpu"]  # make test always builds the CPU part
    _backends._resolve.cache_clear()
    monkeypatch.setattr(csrc, "NOT_AUTO", {"cpu": frozenset({"cam_forward"})})
    try:
        assert ops.selected("cam_forward", "cpu") == "reference"
        assert ops.selected("cam_forward", "cpu", "csrc") == "csrc"
        _backends._resolve.cache_clear()
        monkeypatch.setattr(csrc, "NOT_AUTO", {})
        assert ops.selected("cam_forward", "cpu") == "csrc"
    finally:
        _backends._resolve.cache_clear()


def test_selected_rejects_unknown_kernel_names():
    with pytest.raises(ValueError, match="unknown kernel 'random_walk'"):
        ops.selected("random_walk", "cpu")


def test_unknown_backend_name_is_rejected_before_running():
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        ops.grm_project(*_args()["grm_project"], backend="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when no GPU is visible")
def test_unavailable_backend_says_why():
    _backends._resolve.cache_clear()
    with pytest.raises(RuntimeError, match="not available for cuda tensors"):
        _backends.kernel("grm_project_forward", torch.device("cuda"), "reference")


# ------------------------------------------------------------------------------------------------ bad input
M = torch.empty(3, 5, device="meta")
BAD_INPUT = [
    # (call, exception, words the message must hold)
    (lambda: ops.grm_project(T(2, 5), T(3, 5), T(3)), ValueError, ["'x'", "[B, C, P]", "[2, 5]"]),
    (lambda: ops.grm_project(T(2, 5, 7), T(3, 6), T(3)), ValueError, ["'w'", "C of x", "5", "6"]),
    (lambda: ops.grm_project(T(2, 5, 7), T(3, 5), T(4)), ValueError, ["'b'", "K of w", "3", "4"]),
    (lambda: ops.grm_project(T(2, 5, 7), T(3, 5).double(), T(3)), TypeError, ["'w'", "float32", "float64"]),
    (lambda: ops.grm_project(T(2, 5, 7), M, T(3)), ValueError, ["'w'", "device", "meta"]),
    (lambda: ops.grm_project(T(0, 5, 7), T(3, 5), T(3)), ValueError, ["'x'", "empty", "[0, 5, 7]"]),
    (lambda: ops.grm_project(T(2, 5, 7).long(), T(3, 5), T(3)), TypeError, ["'x'", "floating", "int64"]),
    (lambda: ops.grm_project([1.0], T(3, 5), T(3)), TypeError, ["'x'", "torch.Tensor", "list"]),
    (lambda: ops.grm_reproject(T(2, 5, 7), T(2, 3, 6), T(2, 3, 5)), ValueError, ["'q'", "C of x"]),
    (lambda: ops.grm_reproject(T(2, 5, 7), T(2, 3, 5), T(2, 4, 5)), ValueError, ["'v'", "K of q", "3", "4"]),
    (lambda: ops.grm_reproject(T(2, 5, 7), T(1, 3, 5), T(1, 3, 5)), ValueError, ["'q'", "B of x"]),
    (lambda: ops.grm_reproject(T(2, 5, 7), T(2, 3, 5).half(), T(2, 3, 5)), TypeError, ["'q'", "float16"]),
    (lambda: ops.grm_reproject(T(0, 5, 7), T(0, 3, 5), T(0, 3, 5)), ValueError, ["'x'", "empty"]),
    (lambda: ops.grm_reproject(T(2, 5, 7), T(2, 3, 5), T(2, 3, 5, 1)), ValueError, ["'v'", "rank 3"]),
    (lambda: ops.graph_conv(T(2, 3, 5), T(4, 4), T(5, 2)), ValueError, ["'adj'", "K of z", "3", "4"]),
    (lambda: ops.graph_conv(T(2, 3, 5), T(3, 3), T(6, 2)), ValueError, ["'weight'", "F of z", "5", "6"]),
    (lambda: ops.graph_conv(T(2, 3, 5), T(3, 3), T(5, 2), T(3)), ValueError, ["'bias'", "D of weight"]),
    (lambda: ops.graph_conv(T(2, 3, 5), T(3, 3), T(5, 2), None, "gelu"), ValueError, ["'activation'", "gelu"]),
    (lambda: ops.graph_conv(T(0, 3, 5), T(3, 3), T(5, 2)), ValueError, ["'z'", "empty"]),
    (lambda: ops.graph_conv(T(2, 3, 5), T(3, 3).bfloat16(), T(5, 2)), TypeError, ["'adj'", "bfloat16"]),
    (lambda: ops.cam(T(2, 5, 4), T(3, 5)), ValueError, ["'feat'", "[B, C, h, w]"]),
    (lambda: ops.cam(T(2, 5, 4, 4), T(3, 4)), ValueError, ["'weight'", "C of feat"]),
    (lambda: ops.cam(T(2, 5, 4, 4), T(3, 5), torch.ones(2, 4)), ValueError, ["'labels'", "K of weight"]),
    (lambda: ops.cam(T(2, 5, 4, 4), T(3, 5), torch.ones(6)), ValueError, ["'labels'", "[B, K]"]),
    (lambda: ops.cam(T(0, 5, 4, 4), T(3, 5)), ValueError, ["'feat'", "empty"]),
    (lambda: ops.local_affinity(T(2, 5, 4, 4), 0), ValueError, ["'radius'", "in [1, 64]", "0"]),
    (lambda: ops.local_affinity(T(2, 5, 4), 3), ValueError, ["'feat'", "rank 4"]),
    (lambda: ops.local_affinity(T(0, 5, 4, 4), 3), ValueError, ["'feat'", "empty"]),
    (lambda: ops.boundary_affinity(T(2, 2, 4, 4), 3), ValueError, ["'boundary'", "one boundary channel"]),
    (lambda: ops.boundary_affinity(T(2, 1, 4, 4), 2.5), TypeError, ["'radius'", "2.5"]),
    (lambda: ops.random_walk(T(2, 3, 4, 4), T(2, 5, 4, 4)), ValueError, ["'aff'", "5 offsets"]),
    (lambda: ops.random_walk(T(2, 3, 4, 4), T(2, 4, 4, 5)), ValueError, ["'aff'", "w of cam"]),
    (lambda: ops.random_walk(T(2, 3, 4, 4), T(1, 4, 4, 4)), ValueError, ["'aff'", "B of cam"]),
    (lambda: ops.random_walk(T(2, 3, 4, 4), T(2, 4, 4, 4), beta=0), ValueError, ["'beta'", "> 0"]),
    (lambda: ops.random_walk(T(2, 3, 4, 4), T(2, 4, 4, 4), steps=-1), ValueError, ["'steps'", "-1"]),
    (lambda: ops.random_walk(T(2, 3, 4, 4), T(2, 4, 4, 4).double()), TypeError, ["'aff'", "float64"]),
    (lambda: ops.random_walk(T(0, 3, 4, 4), T(0, 4, 4, 4)), ValueError, ["'cam'", "empty"]),
]


@pytest.mark.parametrize("call,exc,words", BAD_INPUT)
def test_bad_input_is_rejected_with_a_clear_message(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"


def test_reference_backend_implements_every_kernel_of_the_contract():
    from grmseg.ops.impl import reference as ref_impl

    for name in _backends.KERNEL_NAMES:
        assert callable(getattr(ref_impl, name)), name
