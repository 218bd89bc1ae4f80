"""``grmseg.GRM``: the Graph Reasoning Mapping layer (project pixels to class nodes, reason, map back)."""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from grmseg import ops
from grmseg.ops._backends import check_backend_name
from grmseg.reference import ACTIVATIONS


def _knowledge_tensor(kind: str, value: Tensor | str | None, num_nodes: int) -> Tensor | None:
    """Resolve a dataset name ("voc", "coco") to the shipped class embeddings or adjacency."""
    if value is None or isinstance(value, Tensor):
        return value
    if isinstance(value, str):
        from grmseg import knowledge  # imported lazily: the layer does not need it otherwise

        tensor = knowledge.class_embeddings(value) if kind == "embeddings" else knowledge.default_adjacency(value)
        if tensor.shape[0] != num_nodes:
            raise ValueError(
                f"GRM: {kind}={value!r} has {tensor.shape[0]} classes but num_nodes={num_nodes}"
            )
        return tensor
    raise TypeError(f"GRM: argument '{kind}' must be a Tensor, a dataset name or None, got {type(value).__name__}")


class GRM(nn.Module):
    """Graph Reasoning Mapping: ``x [B, C, H, W] -> y [B, C, H, W]``, a drop-in residual block.

    Pixels vote over ``num_nodes`` class nodes (:func:`grmseg.ops.grm_project`); the vote-weighted class
    centres, concatenated with external class-name embeddings, are reasoned over with ``gcn_layers`` graph
    convolutions on the knowledge adjacency (:func:`grmseg.ops.graph_conv`); the nodes are mapped back to the
    pixels by attention with the residual fused (:func:`grmseg.ops.grm_reproject`). The value projection
    starts at zero, so a fresh layer is the identity map; every parameter receives gradient from the second
    optimiser step on.

    Args:
        in_channels: C, channels of the input feature map (e.g. 256 after a DeepLab ASPP head).
        num_nodes: K, number of class nodes (21 for VOC with background, 81 for COCO).
        node_dim: width of the node features and of the GCN.
        key_dim: width of the attention keys in the reprojection.
        embeddings: ``[K, E]`` class-name vectors, a dataset name (``"voc"``, ``"coco"``) for the shipped ones,
            or None for no external knowledge.
        adjacency: ``[K, K]`` normalised adjacency, a dataset name for the shipped graph, or None (identity,
            or the dataset's graph when ``embeddings`` is a dataset name).
        gcn_layers: number of graph convolutions (>= 1).
        activation: GCN activation, ``"leaky_relu"`` (slope 0.2), ``"relu"`` or ``"none"``.
        eps: added to the vote mass before normalising the class centres.
        backend: op backend, ``"auto"`` or a name from ``grmseg.ops.BACKEND_NAMES``. Under ``"auto"`` the
            projection, the reprojection and their joint backward are chosen as one group
            (``grmseg.ops.joint_backend``), which may differ from what ``auto`` picks for those ops called alone.
        keep_assignment: keep the two ``[B, K, P]`` assignments (pixel -> node votes, node -> pixel attention)
            from the forward for the backward where the backend can (the CPU kernels; see
            :mod:`grmseg.ops.grm`): two products over the map fewer per step for ``2 K / C`` of the input's
            memory (float32). False recomputes them in the backward.

    The layer computes in the dtype of its input: parameters are cast to it per call, so it runs in fp32,
    fp16 and bf16, under autocast, and with parameters kept in fp32 for mixed-precision training.
    """

    def __init__(
        self,
        in_channels: int,
        num_nodes: int,
        node_dim: int = 256,
        key_dim: int = 64,
        embeddings: Tensor | str | None = None,
        adjacency: Tensor | str | None = None,
        gcn_layers: int = 1,
        activation: str = "leaky_relu",
        eps: float = 1e-6,
        backend: str = "auto",
        keep_assignment: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_nodes", num_nodes), ("node_dim", node_dim),
                            ("key_dim", key_dim), ("gcn_layers", gcn_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GRM: argument '{name}' must be an int >= 1, got {value!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"GRM: argument 'activation' must be one of {ACTIVATIONS}, got {activation!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
            raise ValueError(f"GRM: argument 'eps' must be a finite number > 0, got {eps!r}")
        check_backend_name(backend)
        if not isinstance(keep_assignment, bool):
            raise TypeError(f"GRM: argument 'keep_assignment' must be a bool, got {keep_assignment!r}")
        if isinstance(embeddings, str) and adjacency is None:
            adjacency = embeddings
        emb = _knowledge_tensor("embeddings", embeddings, num_nodes)
        adj = _knowledge_tensor("adjacency", adjacency, num_nodes)
        if emb is not None and (emb.dim() != 2 or emb.shape[0] != num_nodes):
            raise ValueError(f"GRM: argument 'embeddings' must have shape [K={num_nodes}, E], got {list(emb.shape)}")
        if adj is None:
            adj = torch.eye(num_nodes)
        if adj.shape != (num_nodes, num_nodes):
            raise ValueError(f"GRM: argument 'adjacency' must have shape [{num_nodes}, {num_nodes}], "
                             f"got {list(adj.shape)}")

        self.in_channels, self.num_nodes = in_channels, num_nodes
        self.node_dim, self.key_dim = node_dim, key_dim
        self.activation, self.eps, self.backend = activation, float(eps), backend
        self.keep_assignment = keep_assignment

        self.vote_weight = nn.Parameter(torch.empty(num_nodes, in_channels))
        self.vote_bias = nn.Parameter(torch.zeros(num_nodes))
        self.node_proj = nn.Parameter(torch.empty(in_channels, node_dim))
        emb_dim = 0 if emb is None else emb.shape[1]
        dims = [node_dim + emb_dim] + [node_dim] * gcn_layers
        self.gcn_weights = nn.ParameterList(nn.Parameter(torch.empty(i, o)) for i, o in itertools.pairwise(dims))
        self.gcn_biases = nn.ParameterList(nn.Parameter(torch.zeros(o)) for o in dims[1:])
        self.key_proj = nn.Parameter(torch.empty(node_dim, key_dim))
        self.query_proj = nn.Parameter(torch.empty(key_dim, in_channels))
        self.value_proj = nn.Parameter(torch.zeros(node_dim, in_channels))
        self.register_buffer("embeddings", None if emb is None else emb.detach().float().clone())
        self.register_buffer("adjacency", adj.detach().float().clone())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier for the projections and GCN weights, zero biases, and zero values (identity at start)."""
        nn.init.normal_(self.vote_weight, std=1.0 / math.sqrt(self.in_channels))
        nn.init.zeros_(self.vote_bias)
        for p in (self.node_proj, self.key_proj, self.query_proj, *self.gcn_weights):
            nn.init.xavier_uniform_(p)
        for p in self.gcn_biases:
            nn.init.zeros_(p)
        nn.init.zeros_(self.value_proj)

    def extra_repr(self) -> str:
        emb = "none" if self.embeddings is None else f"{self.embeddings.shape[1]}-d"
        return (f"in_channels={self.in_channels}, num_nodes={self.num_nodes}, node_dim={self.node_dim}, "
                f"key_dim={self.key_dim}, gcn_layers={len(self.gcn_weights)}, embeddings={emb}, "
                f"backend={self.backend!r}")

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C, H, W] -> y [B, C, H, W]`` (same dtype; any memory format)."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"GRM: argument 'x' must have shape [B, {self.in_channels}, H, W], got {got}")
        if x.device != self.vote_weight.device:
            raise ValueError(f"GRM: argument 'x' must be on the device of the layer's parameters "
                             f"({self.vote_weight.device}), got {x.device}: move the layer or the input")
        bsz, c, h, w = x.shape
        dt = x.dtype
        flat = x.flatten(2)
        vote_w, vote_b = self.vote_weight.to(dt), self.vote_bias.to(dt)
        # flat_tee: flat for the reprojection, so that its gradient is added inside grm_project's backward; with a
        # link, both backwards write that gradient in one pass (the CPU kernels)
        link = ops.joint_link(flat, vote_w, vote_b, backend=self.backend, keep_assignment=self.keep_assignment)
        sums, mass, flat_tee = ops.grm_project_tee(flat, vote_w, vote_b, backend=self.backend,
                                                   keep_assignment=self.keep_assignment, link=link)
        centres = sums / (mass.unsqueeze(-1) + self.eps)
        z = torch.matmul(centres, self.node_proj.to(dt))
        if self.embeddings is not None:
            z = torch.cat([z, self.embeddings.to(dt).expand(bsz, -1, -1)], dim=-1)
        adj = self.adjacency.to(dt)
        for weight, bias in zip(self.gcn_weights, self.gcn_biases):
            z = ops.graph_conv(z, adj, weight.to(dt), bias.to(dt), self.activation, backend=self.backend)
        scale = 1.0 / math.sqrt(self.key_dim)
        q = torch.matmul(torch.matmul(z, self.key_proj.to(dt)), self.query_proj.to(dt) * scale)
        v = torch.matmul(z, self.value_proj.to(dt))
        y = ops.grm_reproject(flat_tee, q.to(dt), v.to(dt), backend=self.backend,
                              keep_assignment=self.keep_assignment, link=link)
        return y.view(bsz, c, h, w)
