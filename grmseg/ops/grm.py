"""Public GRM ops: pixel-to-node projection and node-to-pixel reprojection.

Both compute a ``[B, K, P]`` assignment (a softmax over the K nodes per pixel) that their backward needs again.
With ``keep_assignment=True`` (the default) the forward keeps it for the backward, which then reads it instead
of recomputing it: one product over the map and one softmax fewer per op, for ``K / C`` of ``x``'s memory in the
accumulation dtype (float32 for half inputs) while the graph lives. It is kept where the backend that runs the op
has kernels that keep it: the CPU kernels (whose time the products bound) and the reference. The Triton and CUDA
kernels always recompute it, as flash attention does (memory traffic bounds them), and nothing is kept when no
input requires grad. ``keep_assignment=False`` recomputes everywhere (the least memory).
"""

from __future__ import annotations

import torch
from torch import Tensor

from grmseg.ops import _backends, _library
from grmseg.ops import _validate as check
from grmseg.ops._backends import check_backend_name


def _keeps(op: str, keep_assignment: bool, backend: str, x: Tensor, *others: Tensor) -> bool:
    """Whether this call of ``op`` keeps its assignment for backward (see the module docstring)."""
    if not isinstance(keep_assignment, bool):
        raise TypeError(f"{op}: argument 'keep_assignment' must be a bool, got {type(keep_assignment).__name__}")
    if not keep_assignment or not torch.is_grad_enabled():
        return False
    if not (x.requires_grad or any(t.requires_grad for t in others)):
        return False
    return _backends.keeps_assignment(op, x.device.type, backend)


def grm_project(
    x: Tensor, w: Tensor, b: Tensor, *, backend: str = "auto", keep_assignment: bool = True
) -> tuple[Tensor, Tensor]:
    """Pixel-to-node voting: ``a = softmax_K(w x + b)``, ``h = a x^T``, ``m = sum_p a``.

    Args:
        x: ``[B, C, P]`` pixel features (any strides).
        w: ``[K, C]`` voting weights.  b: ``[K]`` voting bias.  Same dtype and device as ``x``.
        backend: ``"auto"`` (``$GRMSEG_BACKEND`` or the fastest available), ``"reference"``, ``"triton"``
            or ``"csrc"``.
        keep_assignment: keep ``a [B, K, P]`` for the backward where the backend can (CPU kernels, reference)
            instead of recomputing it (see :mod:`grmseg.ops.grm`).

    Returns:
        ``h [B, K, C]`` (vote-weighted feature sums) and ``m [B, K]`` (vote mass), in the dtype of ``x``.
        Accumulation is fp32 for half inputs.
    """
    _check_project("grm_project", x, w, b, backend)
    if _keeps("grm_project", keep_assignment, backend, x, w, b):
        h, m, _ = _library.grm_project_keep(x, w, b, backend)
        return h, m
    return _library.grm_project(x, w, b, backend)


def joint_link(
    x: Tensor, w: Tensor, b: Tensor, *, backend: str = "auto", keep_assignment: bool = True
) -> _library.JointLink | None:
    """A link that joins the backward of ``grm_project_tee(x, w, b)`` and of ``grm_reproject(x_tee, q, v)`` into
    one pass over the gradient of ``x``, or None where it does not apply.

    Pass the same link to both calls (``link=``). The reprojection's backward then hands the gradient of its logits
    (``[B, K, P]``) to the projection's, whose product that writes ``gx`` also adds ``gy + q^T ge``: one
    ``[B, C, P]`` map written and read fewer per step (``grmseg.GRM`` does this). It applies where both ops keep their
    assignment (``keep_assignment`` and a backend that keeps it) and one backend other than the reference runs the
    joint kernels (the CPU kernels), in eager mode (not while ``torch.compile`` traces). Under ``backend="auto"``
    the backend is chosen for the pair as a whole (``_backends.joint_backend``); both ops given the link run in
    ``link.backend`` when their own ``backend`` is ``"auto"``.

    Args:
        x, w, b, backend, keep_assignment: as for :func:`grm_project_tee`.

    Returns:
        A fresh link for one forward call (``link.backend`` names the backend that serves it), or None (then call
        both ops without it).
    """
    if torch.compiler.is_compiling():
        return None
    chosen = _backends.joint_backend(x.device.type, backend)
    # _keeps first: it checks keep_assignment whichever backend serves the pair
    if not _keeps("grm_project", keep_assignment, chosen or backend, x, w, b) or chosen is None:
        return None
    return _library.JointLink(chosen)


def grm_project_tee(
    x: Tensor, w: Tensor, b: Tensor, *, backend: str = "auto", keep_assignment: bool = True,
    link: _library.JointLink | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`grm_project` that also hands ``x`` on: ``(h, m, x_tee)``, ``x_tee`` a view of ``x``.

    Use ``x_tee`` wherever ``x`` is used again (``grmseg.GRM`` reprojects it): the gradient reaching ``x``
    through ``x_tee`` is then added to ``grm_project``'s own gradient of ``x`` inside its backward kernel (by the
    CPU kernel in the product that writes it), instead of by autograd in a separate pass that reads both
    ``[B, C, P]`` gradients and writes their sum. Values and gradients are those of ``grm_project`` with ``x``
    used twice.

    Args:
        x, w, b, backend, keep_assignment: as for :func:`grm_project`.
        link: from :func:`joint_link` (the same one for the :func:`grm_reproject` of ``x_tee``), or None.

    Returns:
        ``h [B, K, C]``, ``m [B, K]`` as :func:`grm_project`, and ``x_tee [B, C, P]`` (``x`` itself, as a view).
    """
    _check_project("grm_project_tee", x, w, b, backend)
    backend = _linked_backend("grm_project_tee", link, backend)
    keep = _keeps("grm_project", keep_assignment, backend, x, w, b)
    if link is not None and not keep:
        raise ValueError("grm_project_tee: argument 'link' needs the assignment kept (see joint_link)")
    h, m, x_tee = _library.GrmProjectTee.apply(x, w, b, backend, keep, link)
    if link is not None:
        link.bind(x_tee)
    return h, m, x_tee


def _linked_backend(op: str, link: object, backend: str) -> str:
    """Check ``link``; the backend of a call given it: the link's (chosen for the pair) when ``backend`` is auto."""
    if link is None:
        return backend
    if not isinstance(link, _library.JointLink):
        raise TypeError(f"{op}: argument 'link' must come from grmseg.ops.joint_link or be None, "
                        f"got {type(link).__name__}")
    return link.backend if backend == "auto" else backend


def _check_project(op: str, x: Tensor, w: Tensor, b: Tensor, backend: str) -> None:
    check.tensor(op, "x", x, 3, "[B, C, P]")
    check.tensor(op, "w", w, 2, "[K, C]")
    check.tensor(op, "b", b, 1, "[K]")
    check.non_empty(op, "x", x, "[B, C, P]")
    check.non_empty(op, "w", w, "[K, C]")
    check.dim(op, "w", w, 1, x.shape[1], "C of x")
    check.dim(op, "b", b, 0, w.shape[0], "K of w")
    check.same_dtype(op, "x", x, w=w, b=b)
    check.same_device(op, "x", x, w=w, b=b)
    check_backend_name(backend)


def grm_reproject(
    x: Tensor, q: Tensor, v: Tensor, *, backend: str = "auto", keep_assignment: bool = True,
    link: _library.JointLink | None = None,
) -> Tensor:
    """Node-to-pixel mapping with the residual fused: ``y = x + v^T softmax_K(q x)``.

    Args:
        x: ``[B, C, P]`` pixel features.
        q: ``[B, K, C]`` node keys (scale already folded in).  v: ``[B, K, C]`` node values.
        backend: as for :func:`grm_project`.
        keep_assignment: keep ``softmax_K(q x) [B, K, P]`` for the backward where the backend can (see
            :mod:`grmseg.ops.grm`).
        link: the :func:`joint_link` given to the :func:`grm_project_tee` that made ``x`` (its ``x_tee``), or None.
            With it the gradient of ``x`` from this op is added inside that op's backward.

    Returns:
        ``y [B, C, P]`` in the dtype of ``x``.
    """
    op = "grm_reproject"
    check.tensor(op, "x", x, 3, "[B, C, P]")
    check.tensor(op, "q", q, 3, "[B, K, C]")
    check.tensor(op, "v", v, 3, "[B, K, C]")
    check.non_empty(op, "x", x, "[B, C, P]")
    check.non_empty(op, "q", q, "[B, K, C]")
    check.dim(op, "q", q, 0, x.shape[0], "B of x")
    check.dim(op, "q", q, 2, x.shape[1], "C of x")
    check.dim(op, "v", v, 0, q.shape[0], "B of q")
    check.dim(op, "v", v, 1, q.shape[1], "K of q")
    check.dim(op, "v", v, 2, x.shape[1], "C of x")
    check.same_dtype(op, "x", x, q=q, v=v)
    check.same_device(op, "x", x, q=q, v=v)
    check_backend_name(backend)
    backend = _linked_backend(op, link, backend)
    if link is not None:
        if not keep_assignment:
            raise ValueError("grm_reproject: argument 'link' needs keep_assignment=True (see joint_link)")
        link.claim(x)
        if torch.is_grad_enabled():
            return _library.GrmReprojectJoint.apply(x, q, v, backend, link)
    if _keeps(op, keep_assignment, backend, x, q, v):
        return _library.grm_reproject_keep(x, q, v, backend)[0]
    return _library.grm_reproject(x, q, v, backend)
