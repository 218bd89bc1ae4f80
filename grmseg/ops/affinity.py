"""Public affinity ops (PSA, IRN) and the random walk that propagates CAMs along them."""

from __future__ import annotations

from torch import Tensor

from grmseg.ops import _library
from grmseg.ops import _validate as check
from grmseg.ops._backends import check_backend_name
from grmseg.reference import MAX_RADIUS, affinity_offsets, radius_from_offsets

MAX_STEPS = 65536
"""The most random-walk steps one call takes (each step is one pass over the map)."""


def local_affinity(feat: Tensor, radius: int = 5, *, backend: str = "auto") -> Tensor:
    """PSA affinity ``exp(-mean_c |f(p) - f(p + o_d)|)`` for the offsets of ``affinity_offsets(radius)``.

    Args:
        feat: ``[B, C, h, w]`` features.  radius: neighbourhood radius in ``[1, 64]`` (5 in PSA: D = 34 offsets).
        backend: as for :func:`grmseg.ops.grm_project`.

    Returns:
        ``[B, D, h, w]`` in ``(0, 1]``; 0 where ``p + o_d`` falls outside the map.
    """
    op = "local_affinity"
    check.tensor(op, "feat", feat, 4, "[B, C, h, w]")
    check.non_empty(op, "feat", feat, "[B, C, h, w]")
    check.positive_int(op, "radius", radius, maximum=MAX_RADIUS)
    check_backend_name(backend)
    return _library.local_affinity(feat, radius, len(affinity_offsets(radius)), backend)


def boundary_affinity(boundary: Tensor, radius: int = 5, *, backend: str = "auto") -> Tensor:
    """IRN affinity ``1 - max`` of the boundary map along the segment from ``p`` to ``p + o_d``.

    Args:
        boundary: ``[B, 1, h, w]`` boundary probabilities in ``[0, 1]``.  radius: in ``[1, 64]``.
        backend: as for :func:`grmseg.ops.grm_project`.

    Returns:
        ``[B, D, h, w]``; 0 where ``p + o_d`` falls outside the map.
    """
    op = "boundary_affinity"
    check.tensor(op, "boundary", boundary, 4, "[B, 1, h, w]")
    check.non_empty(op, "boundary", boundary, "[B, 1, h, w]")
    check.dim(op, "boundary", boundary, 1, 1, "one boundary channel")
    check.positive_int(op, "radius", radius, maximum=MAX_RADIUS)
    check_backend_name(backend)
    return _library.boundary_affinity(boundary, radius, len(affinity_offsets(radius)), backend)


def random_walk(cam: Tensor, aff: Tensor, beta: float = 8.0, steps: int = 256, *, backend: str = "auto") -> Tensor:
    """Propagate scores along affinities: ``cam_vec @ T^steps``, ``T`` the column-normalised ``A^beta``.

    Args:
        cam: ``[B, K, h, w]`` scores (e.g. CAMs with a background channel).
        aff: ``[B, D, h, w]`` affinities from :func:`local_affinity` or :func:`boundary_affinity`.
        beta: power applied to the affinities (finite, > 0; PSA 8, IRN 10).
        steps: number of steps in ``[0, 65536]`` (PSA/IRN: 256; the walk has converged long before the bound).
        backend: as for :func:`grmseg.ops.grm_project`.

    Returns:
        ``[B, K, h, w]`` in the dtype of ``cam``. Inference op: no autograd formula.
    """
    op = "random_walk"
    check.tensor(op, "cam", cam, 4, "[B, K, h, w]")
    check.tensor(op, "aff", aff, 4, "[B, D, h, w]")
    check.non_empty(op, "cam", cam, "[B, K, h, w]")
    check.dim(op, "aff", aff, 0, cam.shape[0], "B of cam")
    check.dim(op, "aff", aff, 2, cam.shape[2], "h of cam")
    check.dim(op, "aff", aff, 3, cam.shape[3], "w of cam")
    try:
        radius_from_offsets(aff.shape[1])
    except ValueError as exc:
        raise ValueError(f"{op}: argument 'aff': {exc}") from None
    check.same_dtype(op, "cam", cam, aff=aff)
    check.same_device(op, "cam", cam, aff=aff)
    beta = check.number(op, "beta", beta, positive=True)
    check.positive_int(op, "steps", steps, minimum=0, maximum=MAX_STEPS)
    check_backend_name(backend)
    return _library.random_walk(cam, aff, float(beta), steps, backend)
