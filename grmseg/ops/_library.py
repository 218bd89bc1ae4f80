"""``torch.library`` registration of every op: custom ops, fake (shape) functions and autograd.

Each op is a ``torch.library.custom_op`` in the ``grmseg`` namespace whose body picks the backend kernel at
run time, so ``torch.compile(fullgraph=True)`` keeps it as one opaque node. The differentiable ops save only
their inputs (and, for graph_conv, the small output) and recompute the ``[B, K, P]`` assignment in backward;
the ``*_keep`` variants of grm_project and grm_reproject also save that assignment, computed by their forward,
and their backward reads it (see ``grmseg.ops.grm``, ``keep_assignment``).
The trailing ``backend`` string is ``"auto"`` or a backend name (see ``grmseg.ops._backends``).
"""

# ruff: noqa: UP045 - torch.library infers the schemas from these annotations: Optional[Tensor] on every torch
# No `from __future__ import annotations` here for the same reason: the annotations must be real types.
import weakref
from typing import Optional

import torch
from torch import Tensor

from grmseg.ops import _backends, _validate


def _run(kernel: str, device: torch.device, backend: str, *args):
    out = _backends.kernel(kernel, device, backend)(*args)
    if isinstance(out, tuple):
        return tuple(None if t is None else t.contiguous() for t in out)
    return out.contiguous()


# ---------------------------------------------------------------------------------------------- grm_project
@torch.library.custom_op("grmseg::grm_project", mutates_args=())
def grm_project(x: Tensor, w: Tensor, b: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    return _run("grm_project_forward", x.device, backend, x, w, b)


@grm_project.register_fake
def _(x, w, b, backend):
    bsz, c, _ = x.shape
    k = w.shape[0]
    return x.new_empty(bsz, k, c), x.new_empty(bsz, k)


@torch.library.custom_op("grmseg::grm_project_backward", mutates_args=())
def grm_project_backward(
    gh: Tensor, gm: Tensor, x: Tensor, w: Tensor, b: Tensor, gx_base: Optional[Tensor], backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    return _run("grm_project_backward", x.device, backend, gh, gm, x, w, b, gx_base)


@grm_project_backward.register_fake
def _(gh, gm, x, w, b, gx_base, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format), w.new_empty(w.shape), b.new_empty(b.shape)


def _project_setup(ctx, inputs, output):
    x, w, b, backend = inputs
    ctx.save_for_backward(x, w, b)
    ctx.backend = backend


def _project_grads(ctx, gh, gm, gx_base):
    """grm_project's gradients from the context saved by _project_setup (x, w, b; backend), gx_base added to gx."""
    x, w, b = ctx.saved_tensors
    base = None if gx_base is None else gx_base.to(x.dtype)
    gx, gw, gb = grm_project_backward(gh.to(x.dtype), gm.to(x.dtype), x, w, b, base, ctx.backend)
    return gx, gw, gb, None


def _project_bwd(ctx, gh, gm):
    return _project_grads(ctx, gh, gm, None)


grm_project.register_autograd(_project_bwd, setup_context=_project_setup)


def _assignment_like(x: Tensor, k: int) -> Tensor:
    """An empty ``[B, K, P]`` assignment for ``x [B, C, P]``, in the accumulation dtype (fake functions)."""
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    return x.new_empty(x.shape[0], k, x.shape[2], dtype=acc)


@torch.library.custom_op("grmseg::grm_project_keep", mutates_args=())
def grm_project_keep(x: Tensor, w: Tensor, b: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return _run("grm_project_keep_forward", x.device, backend, x, w, b)


@grm_project_keep.register_fake
def _(x, w, b, backend):
    bsz, c, _ = x.shape
    k = w.shape[0]
    return x.new_empty(bsz, k, c), x.new_empty(bsz, k), _assignment_like(x, k)


@torch.library.custom_op("grmseg::grm_project_backward_kept", mutates_args=())
def grm_project_backward_kept(
    gh: Tensor, gm: Tensor, x: Tensor, a: Tensor, w: Tensor, b: Tensor, gx_base: Optional[Tensor], backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    return _run("grm_project_backward_kept", x.device, backend, gh, gm, x, a, w, b, gx_base)


@grm_project_backward_kept.register_fake
def _(gh, gm, x, a, w, b, gx_base, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format), w.new_empty(w.shape), b.new_empty(b.shape)


def _project_keep_save(ctx, x, w, b, a, backend):
    ctx.save_for_backward(x, w, b, a)
    ctx.backend = backend


def _project_keep_setup(ctx, inputs, output):
    x, w, b, backend = inputs
    ctx.mark_non_differentiable(output[2])
    _project_keep_save(ctx, x, w, b, output[2], backend)


def _project_keep_grads(ctx, gh, gm, gx_base):
    """grm_project's gradients from the context saved by _project_keep_save (x, w, b, a), gx_base added to gx."""
    x, w, b, a = ctx.saved_tensors
    base = None if gx_base is None else gx_base.to(x.dtype)
    gx, gw, gb = grm_project_backward_kept(gh.to(x.dtype), gm.to(x.dtype), x, a, w, b, base, ctx.backend)
    return gx, gw, gb, None


def _project_keep_bwd(ctx, gh, gm, ga):
    return _project_keep_grads(ctx, gh, gm, None)


grm_project_keep.register_autograd(_project_keep_bwd, setup_context=_project_keep_setup)


class JointLink:
    """Joins the backward of a ``GrmProjectTee`` and of the ``GrmReprojectJoint`` of its ``x_tee`` (one per forward
    call): the reprojection's backward leaves ``(gy, ge, q)`` here instead of returning its ``gx``, and the
    projection's backward, which autograd runs after it in the same pass (``x_tee`` lies between them), takes them
    and computes the whole ``gx`` in one pass over the map (``grm_project_backward_kept_joint``). ``backend``: the
    backend that runs both ops and the joint pair (see ``_backends.joint_backend``); both calls given the link run
    in it when their own backend is auto."""

    __slots__ = ("_claimed", "_parts", "_tee", "backend")

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._parts: tuple[Tensor, Tensor, Tensor] | None = None
        self._tee: weakref.ref | None = None  # the x_tee the projection handed on (weak: no cycle through ctx)
        self._claimed = False

    def bind(self, x_tee: Tensor) -> None:
        """Record the ``x_tee`` of the projection this link serves (once)."""
        if self._tee is not None:
            raise ValueError("grm_project_tee: this link already serves another projection: one link per call")
        self._tee = weakref.ref(x_tee)

    def claim(self, x: Tensor) -> None:
        """Check that ``x`` is the bound ``x_tee`` and that no other reprojection took the link."""
        if self._tee is None or self._tee() is not x:
            raise ValueError("grm_reproject: argument 'link' belongs to another x: pass the x_tee that the "
                             "grm_project_tee given this link returned")
        if self._claimed:
            raise ValueError("grm_reproject: this link already serves another reprojection: one link per call")
        self._claimed = True

    def put(self, gy: Tensor, ge: Tensor, q: Tensor) -> None:
        self._parts = (gy, ge, q)

    def take(self) -> tuple[Tensor, Tensor, Tensor] | None:
        parts, self._parts = self._parts, None
        return parts


class GrmProjectTee(torch.autograd.Function):
    """``grm_project`` that also hands ``x`` on as a view, ``x_tee``: the gradient that reaches ``x`` through
    ``x_tee`` is added inside ``grm_project``'s backward (the CPU kernel adds it in its last product) instead of
    by autograd in a separate pass over the map. Forward: ``(x, w, b, backend, keep, link) -> (h, m, x_tee)``;
    with ``keep``, through ``grm_project_keep`` (the assignment saved for backward); with a ``JointLink`` (and
    ``keep``), the reprojection of ``x_tee`` hands its part of the gradient over the link instead."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor, backend: str, keep: bool,
                link: Optional[JointLink] = None) -> tuple[Tensor, Tensor, Tensor]:
        ctx.keep, ctx.link = keep, link
        if keep:
            h, m, a = grm_project_keep(x, w, b, backend)
            _project_keep_save(ctx, x, w, b, a, backend)
        else:
            h, m = grm_project(x, w, b, backend)
            _project_setup(ctx, (x, w, b, backend), (h, m))
        if link is not None:
            ctx.set_materialize_grads(False)  # no [B, C, P] of zeros for the x_tee gradient the link replaces
        return h, m, x.view_as(x)

    @staticmethod
    def backward(ctx, gh: Tensor, gm: Tensor, gx_tee: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None, None]:
        parts = ctx.link.take() if ctx.link is not None else None
        if parts is not None:
            grads = _project_joint_grads(ctx, gh, gm, *parts)
            if gx_tee is not None:  # x_tee also used elsewhere
                grads = (grads[0] + gx_tee, *grads[1:])
        elif ctx.link is not None:
            grads = _project_keep_grads(ctx, *_materialized(ctx, gh, gm), gx_tee)
        else:
            grads = _project_keep_grads(ctx, gh, gm, gx_tee) if ctx.keep else _project_grads(ctx, gh, gm, gx_tee)
        return (*grads, None, None)


def _materialized(ctx, gh: Optional[Tensor], gm: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """gh [B, K, C] and gm [B, K] of a GrmProjectTee whose gradients were not materialised: zeros for None."""
    x, w = ctx.saved_tensors[:2]
    shape = (x.shape[0], w.shape[0])
    return (x.new_zeros(*shape, x.shape[1]) if gh is None else gh, x.new_zeros(shape) if gm is None else gm)


def _project_joint_grads(ctx, gh, gm, gy, ge, q):
    """(gx, gw, gb, None) of a GrmProjectTee with a JointLink: its own and its reprojection's gradient of x in one
    pass."""
    x, w, b, a = ctx.saved_tensors
    gh, gm = _materialized(ctx, gh, gm)
    gx, gw, gb = _run("grm_project_backward_kept_joint", x.device, ctx.backend, gh.to(x.dtype), gm.to(x.dtype), x,
                      a, w, b, gy, ge, q)
    return gx, gw, gb, None


class GrmReprojectJoint(torch.autograd.Function):
    """``grm_reproject`` with the assignment kept whose backward leaves ``(gy, ge, q)`` on a ``JointLink`` for the
    ``GrmProjectTee`` that made its ``x`` and returns no gradient for ``x`` itself (see ``JointLink``). Forward:
    ``(x_tee, q, v, backend, link) -> y``."""

    @staticmethod
    def forward(ctx, x: Tensor, q: Tensor, v: Tensor, backend: str, link: JointLink) -> Tensor:
        y, a = _run("grm_reproject_keep_forward", x.device, backend, x, q, v)
        ctx.save_for_backward(x, a, q, v)
        ctx.backend, ctx.link = backend, link
        return y

    @staticmethod
    def backward(ctx, gy: Tensor) -> tuple[None, Tensor, Tensor, None, None]:
        x, a, q, v = ctx.saved_tensors
        gy = gy.to(x.dtype)
        ge, gq, gv = _run("grm_reproject_backward_kept_joint", x.device, ctx.backend, gy, x, a, q, v)
        ctx.link.put(gy, ge, q)
        return None, gq, gv, None, None


# -------------------------------------------------------------------------------------------- grm_reproject
@torch.library.custom_op("grmseg::grm_reproject", mutates_args=())
def grm_reproject(x: Tensor, q: Tensor, v: Tensor, backend: str) -> Tensor:
    return _run("grm_reproject_forward", x.device, backend, x, q, v)


@grm_reproject.register_fake
def _(x, q, v, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("grmseg::grm_reproject_backward", mutates_args=())
def grm_reproject_backward(gy: Tensor, x: Tensor, q: Tensor, v: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return _run("grm_reproject_backward", x.device, backend, gy, x, q, v)


@grm_reproject_backward.register_fake
def _(gy, x, q, v, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format), q.new_empty(q.shape), v.new_empty(v.shape)


def _reproject_setup(ctx, inputs, output):
    x, q, v, backend = inputs
    ctx.save_for_backward(x, q, v)
    ctx.backend = backend


def _reproject_bwd(ctx, gy):
    x, q, v = ctx.saved_tensors
    gx, gq, gv = grm_reproject_backward(gy.to(x.dtype), x, q, v, ctx.backend)
    return gx, gq, gv, None


grm_reproject.register_autograd(_reproject_bwd, setup_context=_reproject_setup)


@torch.library.custom_op("grmseg::grm_reproject_keep", mutates_args=())
def grm_reproject_keep(x: Tensor, q: Tensor, v: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    return _run("grm_reproject_keep_forward", x.device, backend, x, q, v)


@grm_reproject_keep.register_fake
def _(x, q, v, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format), _assignment_like(x, q.shape[1])


@torch.library.custom_op("grmseg::grm_reproject_backward_kept", mutates_args=())
def grm_reproject_backward_kept(
    gy: Tensor, x: Tensor, a: Tensor, q: Tensor, v: Tensor, backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    return _run("grm_reproject_backward_kept", x.device, backend, gy, x, a, q, v)


@grm_reproject_backward_kept.register_fake
def _(gy, x, a, q, v, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format), q.new_empty(q.shape), v.new_empty(v.shape)


def _reproject_keep_setup(ctx, inputs, output):
    x, q, v, backend = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, output[1], q, v)
    ctx.backend = backend


def _reproject_keep_bwd(ctx, gy, ga):
    x, a, q, v = ctx.saved_tensors
    gx, gq, gv = grm_reproject_backward_kept(gy.to(x.dtype), x, a, q, v, ctx.backend)
    return gx, gq, gv, None


grm_reproject_keep.register_autograd(_reproject_keep_bwd, setup_context=_reproject_keep_setup)


# ----------------------------------------------------------------------------------------------- graph_conv
@torch.library.custom_op("grmseg::graph_conv", mutates_args=())
def graph_conv(z: Tensor, adj: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str, backend: str) -> Tensor:
    return _run("graph_conv_forward", z.device, backend, z, adj, weight, bias, activation)


@graph_conv.register_fake
def _(z, adj, weight, bias, activation, backend):
    return z.new_empty(z.shape[0], z.shape[1], weight.shape[1])


@torch.library.custom_op("grmseg::graph_conv_backward", mutates_args=())
def graph_conv_backward(
    gout: Tensor, out: Tensor, z: Tensor, adj: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    gz, gadj, gweight, gbias = _run(
        "graph_conv_backward", z.device, backend, gout, out, z, adj, weight, bias, activation
    )
    if gbias is None:  # custom ops cannot return None; the autograd wrapper drops it again
        gbias = gout.new_zeros(0)
    return gz, gadj, gweight, gbias


@graph_conv_backward.register_fake
def _(gout, out, z, adj, weight, bias, activation, backend):
    gbias = bias.new_empty(bias.shape) if bias is not None else gout.new_empty(0)
    return z.new_empty(z.shape), adj.new_empty(adj.shape), weight.new_empty(weight.shape), gbias


def _graph_conv_setup(ctx, inputs, output):
    z, adj, weight, bias, activation, backend = inputs
    ctx.save_for_backward(output, z, adj, weight, bias)
    ctx.activation, ctx.backend = activation, backend


def _graph_conv_bwd(ctx, gout):
    out, z, adj, weight, bias = ctx.saved_tensors
    gz, gadj, gweight, gbias = graph_conv_backward(
        gout.to(z.dtype), out, z, adj, weight, bias, ctx.activation, ctx.backend
    )
    return gz, gadj, gweight, (gbias if bias is not None else None), None, None


graph_conv.register_autograd(_graph_conv_bwd, setup_context=_graph_conv_setup)


# ------------------------------------------------------------------------ inference ops (no autograd formula)
@torch.library.custom_op("grmseg::cam", mutates_args=())
def cam(feat: Tensor, weight: Tensor, labels: Optional[Tensor], backend: str) -> Tensor:
    return _run("cam_forward", feat.device, backend, feat, weight, labels)


@cam.register_fake
def _(feat, weight, labels, backend):
    return feat.new_empty(feat.shape[0], weight.shape[0], feat.shape[2], feat.shape[3])


@torch.library.custom_op("grmseg::local_affinity", mutates_args=())
def local_affinity(feat: Tensor, radius: int, num_offsets: int, backend: str) -> Tensor:
    return _run("local_affinity_forward", feat.device, backend, feat, radius)


@local_affinity.register_fake
def _(feat, radius, num_offsets, backend):
    return feat.new_empty(feat.shape[0], num_offsets, feat.shape[2], feat.shape[3])


@torch.library.custom_op("grmseg::boundary_affinity", mutates_args=())
def boundary_affinity(boundary: Tensor, radius: int, num_offsets: int, backend: str) -> Tensor:
    return _run("boundary_affinity_forward", boundary.device, backend, boundary, radius)


@boundary_affinity.register_fake
def _(boundary, radius, num_offsets, backend):
    return boundary.new_empty(boundary.shape[0], num_offsets, boundary.shape[2], boundary.shape[3])


@torch.library.custom_op("grmseg::random_walk", mutates_args=())
def random_walk(cam: Tensor, aff: Tensor, beta: float, steps: int, backend: str) -> Tensor:
    return _run("random_walk_forward", cam.device, backend, cam, aff, beta, steps)


@random_walk.register_fake
def _(cam, aff, beta, steps, backend):
    return torch.empty_like(cam, memory_format=torch.contiguous_format)


@torch.library.custom_op("grmseg::dense_crf", mutates_args=())
def dense_crf(
    unary: Tensor, image: Tensor, iterations: int, gaussian_sxy: float, gaussian_weight: float,
    bilateral_sxy: float, bilateral_srgb: float, bilateral_weight: float, backend: str,
) -> Tensor:
    # The value checks read the data, so they run here, at run time (opaque to torch.compile), for every backend.
    _validate.probabilities("dense_crf", "unary", unary)
    _validate.image_values("dense_crf", "image", image)
    return _run(
        "dense_crf_forward", unary.device, backend, unary, image, iterations, gaussian_sxy, gaussian_weight,
        bilateral_sxy, bilateral_srgb, bilateral_weight,
    )


@dense_crf.register_fake
def _(unary, image, iterations, gaussian_sxy, gaussian_weight, bilateral_sxy, bilateral_srgb, bilateral_weight,
      backend):
    return torch.empty_like(unary, memory_format=torch.contiguous_format)
