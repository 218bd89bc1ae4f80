"""Public graph op: one GCN layer over the K class nodes."""

from __future__ import annotations

from torch import Tensor

from grmseg.ops import _library
from grmseg.ops import _validate as check
from grmseg.ops._backends import check_backend_name
from grmseg.reference import ACTIVATIONS


def graph_conv(
    z: Tensor,
    adj: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str = "leaky_relu",
    *,
    backend: str = "auto",
) -> Tensor:
    """One GCN layer ``act(adj (z weight) + bias)``, differentiable in every tensor argument.

    Args:
        z: ``[B, K, F]`` node features.
        adj: ``[K, K]`` adjacency, already normalised (see ``grmseg.knowledge``).
        weight: ``[F, D]``.  bias: ``[D]`` or None.
        activation: ``"leaky_relu"`` (slope 0.2, the default), ``"relu"`` or ``"none"``.
        backend: as for :func:`grmseg.ops.grm_project`.

    Returns:
        ``[B, K, D]`` in the dtype of ``z``.
    """
    op = "graph_conv"
    check.tensor(op, "z", z, 3, "[B, K, F]")
    check.tensor(op, "adj", adj, 2, "[K, K]")
    check.tensor(op, "weight", weight, 2, "[F, D]")
    if bias is not None:
        check.tensor(op, "bias", bias, 1, "[D]")
    check.non_empty(op, "z", z, "[B, K, F]")
    check.dim(op, "adj", adj, 0, z.shape[1], "K of z")
    check.dim(op, "adj", adj, 1, z.shape[1], "K of z")
    check.dim(op, "weight", weight, 0, z.shape[2], "F of z")
    if bias is not None:
        check.dim(op, "bias", bias, 0, weight.shape[1], "D of weight")
    check.same_dtype(op, "z", z, adj=adj, weight=weight, bias=bias)
    check.same_device(op, "z", z, adj=adj, weight=weight, bias=bias)
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: argument 'activation' must be one of {ACTIVATIONS}, got {activation!r}")
    check_backend_name(backend)
    return _library.graph_conv(z, adj, weight, bias, activation, backend)
