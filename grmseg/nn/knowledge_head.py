"""``KnowledgeGCNHead``: ML-GCN's classifier head, per-class classifiers generated from class-name embeddings."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from grmseg import knowledge
from grmseg.nn.graph_conv import GraphConv


def _resolve(embeddings: Tensor | str, adjacency: Tensor | str | None) -> tuple[Tensor, Tensor]:
    """Dataset names -> shipped tensors; a missing adjacency -> the kNN graph of the embeddings, normalised."""
    fn = "KnowledgeGCNHead"
    if isinstance(embeddings, str):
        if adjacency is None:
            adjacency = embeddings
        emb = knowledge.class_embeddings(embeddings)
    elif isinstance(embeddings, Tensor):
        if embeddings.dim() != 2 or embeddings.numel() == 0 or not embeddings.is_floating_point():
            raise ValueError(f"{fn}: argument 'embeddings' must be a non-empty floating tensor [K, E], "
                             f"got {embeddings.dtype} {list(embeddings.shape)}")  # fmt: skip
        if not torch.isfinite(embeddings).all():
            raise ValueError(f"{fn}: argument 'embeddings' has non-finite entries")
        emb = embeddings.detach().float().cpu().clone()
    else:
        raise TypeError(f"{fn}: argument 'embeddings' must be a Tensor [K, E] or a dataset name, "
                        f"got {type(embeddings).__name__}")  # fmt: skip
    num = emb.shape[0]
    if adjacency is None:
        if num == 1:
            adj = torch.ones(1, 1)
        else:
            k = min(3, num - 1)
            adj = knowledge.normalize_adjacency(knowledge.knn_adjacency(emb, k, weighted=True))
    elif isinstance(adjacency, str):
        adj = knowledge.default_adjacency(adjacency)
    elif isinstance(adjacency, Tensor):
        knowledge.validate_adjacency(adjacency, symmetric=False, name=f"{fn}: argument 'adjacency'")
        adj = adjacency.detach().float().cpu().clone()
    else:
        raise TypeError(f"{fn}: argument 'adjacency' must be a Tensor [K, K], a dataset name or None, "
                        f"got {type(adjacency).__name__}")  # fmt: skip
    if adj.shape != (num, num):
        raise ValueError(f"{fn}: argument 'adjacency' must have shape [K, K] = [{num}, {num}] (K from the "
                         f"embeddings), got {list(adj.shape)}")  # fmt: skip
    return emb, adj


class KnowledgeGCNHead(nn.Module):
    """Multi-label classifier whose K per-class weight vectors come from a GCN over class-name embeddings.

    As ML-GCN (Chen et al., CVPR 2019) and the GRM paper's classification stage::

        W = GraphConv(hidden_dim -> feature_dim, no activation)(
                LeakyReLU_0.2(GraphConv(E -> hidden_dim)(embeddings, adj)), adj)     # [K, feature_dim]
        logits = features @ W^T                                                       # [B, K]

    The embeddings and the adjacency are buffers (fixed inputs); the two GCN layers are the trained
    parameters. :meth:`classifier_weights` gives ``W`` for CAMs (``grmseg.ops.cam(feat, head.classifier_weights(),
    labels)``), so the head stands in for, or beside, a plain 1x1 convolution classifier.

    Args:
        feature_dim: D, the channels of the image features (2048 for a ResNet-50).
        embeddings: ``[K, E]`` class-name vectors (GloVe 300-d, MiniLM 384-d, ...) or a dataset name
            (``"voc"``, ``"coco"``) for the shipped ones.
        adjacency: ``[K, K]`` normalised adjacency (used as given; see :mod:`grmseg.knowledge`), a dataset name
            for the shipped graph, or None: the dataset's graph when ``embeddings`` is a name, else the
            normalised 3-nearest-neighbour graph of the given embeddings.
        hidden_dim: width of the first GCN layer (ML-GCN: 1024).
        bias: GCN layer biases (ML-GCN: none).
        backend: forwarded to :func:`grmseg.ops.graph_conv`.

    Shapes:
        ``forward(features [B, D]) -> logits [B, K]``; ``forward(feature_map [B, D, h, w]) -> [B, K, h, w]``
        (the head as a 1x1 convolution).
    """

    embeddings: Tensor
    adjacency: Tensor

    def __init__(
        self,
        feature_dim: int,
        embeddings: Tensor | str = "voc",
        adjacency: Tensor | str | None = None,
        hidden_dim: int = 1024,
        *,
        bias: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        for name, value in (("feature_dim", feature_dim), ("hidden_dim", hidden_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"KnowledgeGCNHead: argument '{name}' must be an int >= 1, got {value!r}")
        emb, adj = _resolve(embeddings, adjacency)
        self.register_buffer("embeddings", emb)
        self.register_buffer("adjacency", adj)
        self.feature_dim = feature_dim
        self.gc1 = GraphConv(emb.shape[1], hidden_dim, bias=bias, activation="leaky_relu", backend=backend)
        self.gc2 = GraphConv(hidden_dim, feature_dim, bias=bias, activation="none", backend=backend)

    @property
    def num_classes(self) -> int:
        """K."""
        return self.embeddings.shape[0]

    def classifier_weights(self) -> Tensor:
        """The generated classifiers ``[K, feature_dim]`` (differentiable; in the autocast dtype under autocast).

        Usable wherever a 1x1 classifier's weight is, e.g. ``grmseg.ops.cam(feat, w.to(feat.dtype), labels)``.
        """
        dt = self.gc1.weight.dtype
        emb, adj = self.embeddings.to(dt), self.adjacency.to(dt)
        return self.gc2(self.gc1(emb, adj), adj)

    def forward(self, features: Tensor) -> Tensor:
        """``[B, D]`` pooled features -> ``[B, K]`` logits, or ``[B, D, h, w]`` -> ``[B, K, h, w]`` score maps."""
        fn = "KnowledgeGCNHead"
        if not isinstance(features, Tensor) or features.dim() not in (2, 4):
            got = list(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"{fn}: argument 'features' must have shape [B, D] or [B, D, h, w], got {got}")
        if features.shape[1] != self.feature_dim:
            raise ValueError(f"{fn}: argument 'features' has shape {list(features.shape)}; its dim 1 must equal "
                             f"feature_dim = {self.feature_dim}, got {features.shape[1]}")  # fmt: skip
        w = self.classifier_weights()
        if not torch.is_autocast_enabled(features.device.type) and features.dtype != w.dtype:
            raise TypeError(f"{fn}: argument 'features' must have the dtype of the head's parameters ({w.dtype}), "
                            f"got {features.dtype} (convert the module, or use autocast)")  # fmt: skip
        if features.dim() == 2:
            return features @ w.T
        return torch.einsum("bdhw,kd->bkhw", features, w)

    def extra_repr(self) -> str:
        emb_dim = self.embeddings.shape[1]
        return f"num_classes={self.num_classes}, embedding_dim={emb_dim}, feature_dim={self.feature_dim}"
