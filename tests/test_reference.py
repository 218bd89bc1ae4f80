"""grmseg.reference against direct loops (float64, tiny shapes), its explicit backward formulas against
autograd, and torch.autograd.gradcheck on every op."""

import loops
import pytest
import torch

from grmseg import reference as ref

gen = torch.Generator().manual_seed(0)


def rand(*shape, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


def close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("bsz,c,p,k", [(2, 3, 5, 4), (1, 1, 1, 1), (3, 2, 7, 1)])
def test_grm_project_matches_loops(bsz, c, p, k):
    x, w, b = rand(bsz, c, p), rand(k, c), rand(k)
    h, m = ref.grm_project(x, w, b)
    h2, m2 = loops.grm_project(x, w, b)
    close(h, h2)
    close(m, m2)
    close(m.sum(-1), torch.full((bsz,), float(p), dtype=torch.float64))  # each pixel casts one vote in total


@pytest.mark.parametrize("bsz,c,p,k", [(2, 3, 5, 4), (1, 1, 1, 1)])
def test_grm_reproject_matches_loops(bsz, c, p, k):
    x, q, v = rand(bsz, c, p), rand(bsz, k, c), rand(bsz, k, c)
    close(ref.grm_reproject(x, q, v), loops.grm_reproject(x, q, v))


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "none"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_graph_conv_matches_loops(activation, with_bias):
    z, adj, weight = rand(2, 4, 3), rand(4, 4).abs(), rand(3, 5)
    bias = rand(5) if with_bias else None
    close(ref.graph_conv(z, adj, weight, bias, activation), loops.graph_conv(z, adj, weight, bias, activation))


def test_graph_conv_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        ref.graph_conv(rand(1, 2, 2), rand(2, 2), rand(2, 2), None, "gelu")


@pytest.mark.parametrize("with_labels", [True, False])
def test_cam_matches_loops(with_labels):
    feat, weight = rand(2, 3, 4, 5), rand(4, 3)
    labels = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]]) if with_labels else None
    out = ref.cam(feat, weight, labels)
    close(out, loops.cam(feat, weight, labels))
    assert out.min() >= 0 and out.max() < 1


def test_offsets_match_psa_counts():
    assert [len(ref.affinity_offsets(r)) for r in (1, 2, 3, 5)] == [0, 4, 12, 34]
    for r in (1, 2, 3, 5, 7):
        assert ref.affinity_offsets(r) == loops.offsets(r)
        assert ref.radius_from_offsets(len(loops.offsets(r))) == r
    with pytest.raises(ValueError, match="no radius"):
        ref.radius_from_offsets(5)
    with pytest.raises(ValueError, match="radius"):
        ref.affinity_offsets(0)


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_local_affinity_matches_loops(radius):
    feat = rand(2, 3, 4, 5)
    close(ref.local_affinity(feat, radius), loops.local_affinity(feat, radius))


@pytest.mark.parametrize("radius", [1, 2, 4])
def test_boundary_affinity_matches_loops(radius):
    boundary = torch.rand(2, 1, 5, 6, generator=gen, dtype=torch.float64)
    close(ref.boundary_affinity(boundary, radius), loops.boundary_affinity(boundary, radius))


def test_path_sets_are_irn_paths():
    for (dy, dx), pts in loops.HAND_PATHS.items():
        path = ref.path_offsets(dy, dx)
        assert set(path) == pts and len(path) == len(pts), (dy, dx)
        assert path[0] == (0, 0) and path[-1] == (dy, dx), (dy, dx)
    for r in (2, 3, 5, 7, 10):
        for dy, dx in ref.affinity_offsets(r):
            assert set(ref.path_offsets(dy, dx)) == loops.segment(dy, dx), (dy, dx)
    assert sum(len(ref.path_offsets(dy, dx)) for dy, dx in ref.affinity_offsets(5)) == 242  # a thin line: 130


@pytest.mark.parametrize("radius,beta,steps", [(2, 1.0, 1), (3, 8.0, 3), (2, 10.0, 0)])
def test_random_walk_dense_matches_local_loops(radius, beta, steps):
    feat = rand(1, 2, 4, 5)
    aff = ref.local_affinity(feat, radius)
    cam = torch.rand(1, 3, 4, 5, generator=gen, dtype=torch.float64)
    close(ref.random_walk(cam, aff, beta, steps), loops.random_walk(cam, aff, beta, steps, radius), tol=1e-9)


def test_transition_matrix_is_column_stochastic_and_nan_free_with_zero_affinity():
    aff = torch.zeros(1, len(ref.affinity_offsets(3)), 4, 4, dtype=torch.float64)
    t = ref.transition_matrix(aff, 8.0)
    assert torch.isfinite(t).all()
    close(t[0], torch.eye(16, dtype=torch.float64))  # no affinity: every pixel keeps its own score
    aff = torch.rand(1, 12, 4, 4, generator=gen, dtype=torch.float64)
    close(ref.transition_matrix(aff, 2.0).sum(dim=1), torch.ones(1, 16, dtype=torch.float64))


def test_random_walk_keeps_constant_maps():
    """Column-stochastic T: a constant score map is a fixed point of every step."""
    aff = torch.rand(2, 4, 5, 5, generator=gen, dtype=torch.float64)
    cam = torch.ones(2, 3, 1, 1, dtype=torch.float64) * torch.rand(2, 3, 1, 1, generator=gen, dtype=torch.float64)
    cam = cam.expand(2, 3, 5, 5).contiguous()
    close(ref.random_walk(cam, aff, 2.0, 5), cam, tol=1e-9)


# ------------------------------------------------------------------------------- backward formulas + gradcheck
def test_grm_project_backward_formula_matches_autograd():
    x, w, b = rand(2, 3, 7).requires_grad_(), rand(4, 3).requires_grad_(), rand(4).requires_grad_()
    gh, gm = rand(2, 4, 3), rand(2, 4)
    h, m = ref.grm_project(x, w, b)
    auto = torch.autograd.grad((h, m), (x, w, b), (gh, gm))
    for got, want in zip(ref.grm_project_backward(gh, gm, x, w, b), auto):
        close(got, want)


def test_grm_reproject_backward_formula_matches_autograd():
    x, q, v = rand(2, 3, 7).requires_grad_(), rand(2, 4, 3).requires_grad_(), rand(2, 4, 3).requires_grad_()
    gy = rand(2, 3, 7)
    auto = torch.autograd.grad(ref.grm_reproject(x, q, v), (x, q, v), gy)
    for got, want in zip(ref.grm_reproject_backward(gy, x, q, v), auto):
        close(got, want)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "none"])
def test_graph_conv_backward_formula_matches_autograd(activation):
    z, adj = rand(2, 4, 3).requires_grad_(), rand(4, 4).requires_grad_()
    weight, bias = rand(3, 5).requires_grad_(), rand(5).requires_grad_()
    out = ref.graph_conv(z, adj, weight, bias, activation)
    gout = rand(*out.shape)
    auto = torch.autograd.grad(out, (z, adj, weight, bias), gout)
    got = ref.graph_conv_backward(gout, out.detach(), z, adj, weight, bias, activation)
    for g, a in zip(got, auto):
        close(g, a)
    assert ref.graph_conv_backward(gout, out.detach(), z, adj, weight, None, activation)[3] is None


def _gradcheck(fn, *inputs):
    assert torch.autograd.gradcheck(fn, tuple(t.requires_grad_() for t in inputs), eps=1e-6, atol=1e-5)


def test_gradcheck_grm_project():
    _gradcheck(ref.grm_project, rand(2, 3, 5), rand(4, 3), rand(4))


def test_gradcheck_grm_reproject():
    _gradcheck(ref.grm_reproject, rand(2, 3, 5), rand(2, 4, 3), rand(2, 4, 3))


def test_gradcheck_graph_conv():
    _gradcheck(lambda *a: ref.graph_conv(*a, "leaky_relu"), rand(2, 3, 2), rand(3, 3), rand(2, 4), rand(4))


def test_gradcheck_cam():
    labels = torch.tensor([[1, 1, 0], [0, 1, 1]])
    _gradcheck(lambda f, w: ref.cam(f, w, labels), rand(2, 2, 3, 3), rand(3, 2))


def test_gradcheck_local_affinity():
    _gradcheck(lambda f: ref.local_affinity(f, 2), rand(1, 2, 3, 4))


def test_gradcheck_boundary_affinity():
    _gradcheck(lambda bd: ref.boundary_affinity(bd, 3), torch.rand(1, 1, 4, 4, generator=gen, dtype=torch.float64))


def test_gradcheck_random_walk():
    aff = torch.rand(1, 4, 3, 3, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    _gradcheck(lambda c, a: ref.random_walk(c, a, 2.0, 3), torch.rand(1, 2, 3, 3, generator=gen,
                                                                      dtype=torch.float64), aff)


def test_half_inputs_accumulate_in_fp32_and_return_input_dtype():
    x, w, b = rand(2, 8, 33), rand(5, 8), rand(5)
    want_h, _ = ref.grm_project(x, w, b)
    for dt in (torch.float16, torch.bfloat16):
        h, m = ref.grm_project(x.to(dt), w.to(dt), b.to(dt))
        assert h.dtype == dt and m.dtype == dt
        torch.testing.assert_close(h.double(), want_h, rtol=0.05, atol=0.05)
