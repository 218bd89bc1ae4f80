"""``GraphConv``: one GCN layer as an ``nn.Module`` over :func:`grmseg.ops.graph_conv`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from grmseg.ops import graph_conv
from grmseg.reference import ACTIVATIONS


class GraphConv(nn.Module):
    """One graph convolution ``act(adj (z W) + b)`` over K nodes (Kipf & Welling; the layer of ML-GCN and GRM).

    The adjacency is an argument of ``forward``, already normalised (e.g.
    :func:`grmseg.knowledge.normalize_adjacency` or :func:`grmseg.knowledge.default_adjacency`): one module can
    run on several graphs. ``W`` is Glorot-uniform and ``b`` zero at init, as torch_geometric's ``GCNConv``;
    with ``activation="none"`` the layer equals ``GCNConv`` on the same graph and weights
    (``GCNConv.lin.weight`` is ``W^T``).

    Under autocast the inputs and parameters are cast to the autocast dtype; otherwise ``z``, ``adj`` and the
    parameters must share a dtype (the op raises a TypeError naming the argument).

    Args:
        in_features: F.  out_features: D.
        bias: learn ``b [D]``.
        activation: ``"leaky_relu"`` (slope 0.2), ``"relu"`` or ``"none"``.
        backend: forwarded to the op (``"auto"`` picks per device).

    Shapes:
        ``forward(z [B, K, F] or [K, F], adj [K, K]) -> [B, K, D] or [K, D]``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "leaky_relu",
        *,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GraphConv: argument '{name}' must be an int >= 1, got {value!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"GraphConv: argument 'activation' must be one of {ACTIVATIONS}, got {activation!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(in_features, out_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform weight, zero bias (as ``torch_geometric.nn.GCNConv``)."""
        nn.init.xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, z: Tensor, adj: Tensor) -> Tensor:
        """``z [B, K, F]`` or ``[K, F]``, ``adj [K, K]`` -> ``[B, K, D]`` or ``[K, D]``."""
        if not isinstance(z, Tensor) or z.dim() not in (2, 3):
            got = list(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"GraphConv: argument 'z' must have shape [B, K, F] or [K, F], got {got}")
        if z.shape[-1] != self.in_features:
            raise ValueError(f"GraphConv: argument 'z' has shape {list(z.shape)}; its last dim must equal "
                             f"in_features = {self.in_features}, got {z.shape[-1]}")  # fmt: skip
        unbatched = z.dim() == 2
        if unbatched:
            z = z.unsqueeze(0)
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled(z.device.type):
            dt = torch.get_autocast_dtype(z.device.type)
            z, adj, weight = z.to(dt), adj.to(dt), weight.to(dt)
            bias = None if bias is None else bias.to(dt)
        out = graph_conv(z, adj, weight, bias, self.activation, backend=self.backend)
        return out.squeeze(0) if unbatched else out

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, "
                f"activation={self.activation!r}")  # fmt: skip
