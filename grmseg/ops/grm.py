"""Public GRM ops: pixel-to-node projection and node-to-pixel reprojection."""

from __future__ import annotations

from torch import Tensor

from grmseg.ops import _library
from grmseg.ops import _validate as check
from grmseg.ops._backends import check_backend_name


def grm_project(x: Tensor, w: Tensor, b: Tensor, *, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Pixel-to-node voting: ``a = softmax_K(w x + b)``, ``h = a x^T``, ``m = sum_p a``.

    Args:
        x: ``[B, C, P]`` pixel features (any strides).
        w: ``[K, C]`` voting weights.  b: ``[K]`` voting bias.  Same dtype and device as ``x``.
        backend: ``"auto"`` (``$GRMSEG_BACKEND`` or the fastest available), ``"reference"``, ``"triton"``
            or ``"csrc"``.

    Returns:
        ``h [B, K, C]`` (vote-weighted feature sums) and ``m [B, K]`` (vote mass), in the dtype of ``x``.
        Accumulation is fp32 for half inputs; nothing of size ``[B, K, P]`` is kept for backward.
    """
    _check_project("grm_project", x, w, b, backend)
    return _library.grm_project(x, w, b, backend)


def grm_project_tee(x: Tensor, w: Tensor, b: Tensor, *, backend: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """:func:`grm_project` that also hands ``x`` on: ``(h, m, x_tee)``, ``x_tee`` a view of ``x``.

    Use ``x_tee`` wherever ``x`` is used again (``grmseg.GRM`` reprojects it): the gradient reaching ``x``
    through ``x_tee`` is then added to ``grm_project``'s own gradient of ``x`` inside its backward kernel (by the
    CPU kernel in the product that writes it), instead of by autograd in a separate pass that reads both
    ``[B, C, P]`` gradients and writes their sum. Values and gradients are those of ``grm_project`` with ``x``
    used twice.

    Args:
        x, w, b, backend: as for :func:`grm_project`.

    Returns:
        ``h [B, K, C]``, ``m [B, K]`` as :func:`grm_project`, and ``x_tee [B, C, P]`` (``x`` itself, as a view).
    """
    _check_project("grm_project_tee", x, w, b, backend)
    return _library.GrmProjectTee.apply(x, w, b, backend)


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


def grm_reproject(x: Tensor, q: Tensor, v: Tensor, *, backend: str = "auto") -> Tensor:
    """Node-to-pixel mapping with the residual fused: ``y = x + v^T softmax_K(q x)``.

    Args:
        x: ``[B, C, P]`` pixel features.
        q: ``[B, K, C]`` node keys (scale already folded in).  v: ``[B, K, C]`` node values.
        backend: as for :func:`grm_project`.

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
    return _library.grm_reproject(x, q, v, backend)
