"""Inter-class graphs: builders, normalisation, validation and the shipped VOC/COCO defaults.

Convention: ``adj[i, j]`` is the weight with which node ``i`` aggregates node ``j`` (a GCN layer computes
``out_i = sum_j adj[i, j] (z W)_j``). The builders return raw (un-normalised) non-negative float32 ``[K, K]``
matrices; :func:`normalize_adjacency` turns one into the ``D^-1/2 (A + I) D^-1/2`` that
:func:`grmseg.ops.graph_conv` expects. Every builder is deterministic.

Builders:
  * :func:`cooccurrence_adjacency` -- ML-GCN: label co-occurrence, binarised at ``t``, re-weighted with ``p``.
  * :func:`semantic_consistency_adjacency` -- the GRM paper's ConceptNet construction: random walk with
    restart (0.15) over any weighted knowledge graph, symmetrised ``sqrt(s_ij * s_ji)``.
  * :func:`knn_adjacency` -- k nearest neighbours by cosine similarity of class-name embeddings.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Hashable, Iterable, Sequence

import torch
from torch import Tensor

from grmseg.knowledge.classes import check_dataset
from grmseg.knowledge.embeddings import class_embeddings

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Neighbours per class of the shipped default graphs (kNN over the shipped MiniLM embeddings, cosine-weighted).
DEFAULT_KNN = {"voc": 3, "coco": 5}


# ------------------------------------------------------------------------------------ validation, normalising
def validate_adjacency(
    adj: object,
    num_nodes: int | None = None,
    *,
    symmetric: bool = True,
    atol: float = 1e-5,
    name: str = "adj",
) -> Tensor:
    """Check an adjacency matrix; return it unchanged.

    Checks: a floating ``torch.Tensor`` of shape ``[K, K]`` (``K == num_nodes`` when given), non-empty, all
    finite, non-negative and, when ``symmetric``, ``|adj - adj^T| <= atol`` everywhere (ML-GCN co-occurrence
    graphs are directed: pass ``symmetric=False`` for those).

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: the message names ``name``, what was expected and what was found (shape, the first
            non-finite or negative entry, the largest asymmetry and where).
    """
    if not isinstance(adj, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor [K, K], got {type(adj).__name__}")
    if adj.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating tensor (fp16/bf16/fp32/fp64), got {adj.dtype}")
    if adj.dim() != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"{name}: expected a square matrix [K, K], got shape {list(adj.shape)}")
    if adj.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one node, got shape {list(adj.shape)}")
    if num_nodes is not None and adj.shape[0] != num_nodes:
        raise ValueError(f"{name}: expected shape [{num_nodes}, {num_nodes}] (num_nodes={num_nodes}), "
                         f"got {list(adj.shape)}")  # fmt: skip
    a = adj.detach().to(torch.float64)
    bad = ~torch.isfinite(a)
    if bad.any():
        i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"{name}: expected finite entries, found {int(bad.sum())} non-finite, "
                         f"the first at [{i}, {j}] = {a[i, j].item()}")  # fmt: skip
    neg = a < 0
    if neg.any():
        i, j = (int(v) for v in neg.nonzero()[0])
        raise ValueError(f"{name}: expected non-negative entries, found {int(neg.sum())} negative, "
                         f"the first at [{i}, {j}] = {a[i, j].item():.6g}")  # fmt: skip
    if symmetric:
        diff = (a - a.T).abs()
        worst = float(diff.max())
        if worst > atol:
            i, j = divmod(int(diff.argmax()), a.shape[1])
            raise ValueError(f"{name}: expected a symmetric matrix (atol={atol:g}), but [{i}, {j}] = "
                             f"{a[i, j].item():.6g} and [{j}, {i}] = {a[j, i].item():.6g} differ by {worst:.3g} "
                             "(pass symmetric=False for a directed graph)")  # fmt: skip
    return adj


def normalize_adjacency(adj: Tensor, add_self_loops: bool = True) -> Tensor:
    """The GCN normalisation ``D^-1/2 (A + I) D^-1/2`` (Kipf & Welling), ``D`` the row sums of ``A + I``.

    Args:
        adj: ``[K, K]`` non-negative weights (need not be symmetric; for a directed graph the row sums, i.e. the
            in-degrees of the aggregating nodes, are used, as torch_geometric's ``gcn_norm`` does).
        add_self_loops: add ``I`` first (always, also where ``A`` has a diagonal). Without it, rows of zeros
            stay zero instead of dividing by zero.

    Returns:
        ``[K, K]`` in the dtype and on the device of ``adj`` (computed in float64).
    """
    validate_adjacency(adj, symmetric=False)
    a = adj.to(torch.float64)
    if add_self_loops:
        a = a + torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    deg = a.sum(dim=1)
    dinv = torch.where(deg > 0, deg.clamp_min(1e-300).rsqrt(), torch.zeros_like(deg))
    return (dinv[:, None] * a * dinv[None, :]).to(adj.dtype)


# ------------------------------------------------------------------------------------- ML-GCN co-occurrence
def cooccurrence_adjacency(labels: Tensor, t: float = 0.4, p: float = 0.25, *, variant: str = "paper") -> Tensor:
    """ML-GCN's label co-occurrence graph (Chen et al., CVPR 2019, eqs. 6-8).

    With ``M_ij`` the number of images holding both ``i`` and ``j`` and ``N_i`` those holding ``i``:
    ``P_ij = P(j | i) = M_ij / N_i`` (0 for a class that never occurs), diagonal dropped;
    ``B_ij = [P_ij >= t]``; then

    * ``variant="paper"`` (eq. 8): ``A_ij = p * B_ij / sum_j' B_ij'`` for ``i != j`` and ``A_ii = 1 - p``, so
      every row sums to 1. A row without neighbours (e.g. a class that never occurs) gets ``A_ii = 1``.
    * ``variant="mlgcn"``: the released code's ``gen_A`` exactly: ``A = B * p / (B.sum(0) + 1e-6) + I``
      (column sums, identity weight 1). Pair it with :func:`mlgcn_normalize` to reproduce ``gen_adj``.

    The result is directed (``P(j|i) != P(i|j)``): validate it with ``symmetric=False``. For the GCN, use
    ``normalize_adjacency(A, add_self_loops=False)`` (the identity is already in).

    Args:
        labels: ``[N, K]`` multi-hot image labels (bool, int or float; non-zero means present).
        t: binarisation threshold in ``[0, 1]`` (ML-GCN: 0.4).
        p: off-diagonal mass in ``[0, 1]`` (ML-GCN: 0.2 or 0.25).

    Returns:
        ``[K, K]`` float32 on the device of ``labels``.
    """
    fn = "cooccurrence_adjacency"
    if not isinstance(labels, Tensor):
        raise TypeError(f"{fn}: argument 'labels' must be a torch.Tensor [N, K], got {type(labels).__name__}")
    if labels.dim() != 2 or labels.shape[0] == 0 or labels.shape[1] == 0:
        raise ValueError(f"{fn}: argument 'labels' must have shape [N, K] with N, K >= 1, got {list(labels.shape)}")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"{fn}: argument 't' must be in [0, 1], got {t!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{fn}: argument 'p' must be in [0, 1], got {p!r}")
    if variant not in ("paper", "mlgcn"):
        raise ValueError(f"{fn}: argument 'variant' must be 'paper' or 'mlgcn', got {variant!r}")
    y = (labels != 0).to(torch.float64)
    m = y.T @ y  # [K, K] co-occurrence counts, diagonal = N_i
    n = m.diagonal().clone()
    cond = torch.where(n[:, None] > 0, m / n.clamp_min(1)[:, None], torch.zeros_like(m))
    cond.fill_diagonal_(0.0)
    b = (cond >= t).to(torch.float64)
    b.fill_diagonal_(0.0)
    eye = torch.eye(b.shape[0], dtype=b.dtype, device=b.device)
    if variant == "mlgcn":
        a = b * p / (b.sum(dim=0, keepdim=True) + 1e-6) + eye
    else:
        rows = b.sum(dim=1, keepdim=True)
        has = rows > 0
        a = torch.where(has, p * b / rows.clamp_min(1), torch.zeros_like(b))
        a = a + eye * torch.where(has, 1.0 - p, 1.0)
    return a.to(torch.float32)


def mlgcn_normalize(adj: Tensor) -> Tensor:
    """ML-GCN's released ``gen_adj``: ``D^-1/2 A^T D^-1/2`` with ``D`` the row sums of ``A`` (its exact quirk).

    Args:
        adj: ``[K, K]`` from ``cooccurrence_adjacency(..., variant="mlgcn")``.

    Returns:
        ``[K, K]`` in the dtype of ``adj``.
    """
    validate_adjacency(adj, symmetric=False)
    a = adj.to(torch.float64)
    dinv = a.sum(dim=1).pow(-0.5)
    return (dinv[:, None] * a.T * dinv[None, :]).to(adj.dtype)


# ---------------------------------------------------------------------- random walk with restart (ConceptNet)
def random_walk_with_restart(
    weights: Tensor,
    sources: Sequence[int] | None = None,
    restart: float = 0.15,
    *,
    tol: float = 1e-12,
    max_iter: int = 10_000,
) -> Tensor:
    """Stationary distributions of random walks with restart (dense or sparse weighted graph).

    From node ``i`` the walker moves to ``j`` with probability ``w_ij / sum_j' w_ij'`` (a node without
    out-edges stays put) and, with probability ``restart``, jumps back to its source ``s``:
    ``r_s = (1 - restart) r_s P + restart e_s``. Solved by fixed-point iteration (contraction
    ``1 - restart``) in float64, so large sparse knowledge graphs (ConceptNet subgraphs) are fine.

    Args:
        weights: ``[N, N]`` non-negative edge weights ``w_ij`` of ``i -> j`` (dense or sparse COO).
        sources: the source nodes (default: all N).
        restart: restart probability in ``(0, 1]`` (the paper: 0.15).

    Returns:
        ``[S, N]`` float64: row ``s`` is the visiting distribution of walks from ``sources[s]`` (sums to 1).
    """
    fn = "random_walk_with_restart"
    if not isinstance(weights, Tensor) or weights.dim() != 2 or weights.shape[0] != weights.shape[1]:
        got = list(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"{fn}: argument 'weights' must be a square tensor [N, N], got {got}")
    if not 0.0 < restart <= 1.0:
        raise ValueError(f"{fn}: argument 'restart' must be in (0, 1], got {restart!r}")
    n = weights.shape[0]
    src = list(range(n)) if sources is None else [int(s) for s in sources]
    if not src or any(not 0 <= s < n for s in src):
        raise ValueError(f"{fn}: argument 'sources' must be non-empty indices in [0, {n}), got {src}")
    w = weights.coalesce() if weights.is_sparse else weights
    vals = w.values() if w.is_sparse else w
    if not torch.isfinite(vals).all() or (vals < 0).any():
        raise ValueError(f"{fn}: argument 'weights' must be finite and non-negative")
    dev = weights.device
    if w.is_sparse:
        idx, val = w.indices(), w.values().to(torch.float64)
        out_deg = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, idx[0], val)
        keep = val > 0
        idx, val = idx[:, keep], val[keep]
        prob = val / out_deg[idx[0]]
        dangling = (out_deg <= 0).nonzero().flatten()
        rows = torch.cat([idx[1], dangling])  # transposed: P^T[j, i] = P[i, j]
        cols = torch.cat([idx[0], dangling])
        data = torch.cat([prob, torch.ones(len(dangling), dtype=torch.float64, device=dev)])
        pt = torch.sparse_coo_tensor(torch.stack([rows, cols]), data, (n, n), check_invariants=True).coalesce()
        with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR @ dense is ~1.6x faster than COO
            warnings.simplefilter("ignore", UserWarning)
            pt = pt.to_sparse_csr()

        def step(r: Tensor) -> Tensor:  # r: [N, S] (columns = walks)
            return pt @ r
    else:
        wd = w.to(torch.float64)
        out_deg = wd.sum(dim=1, keepdim=True)
        trans = torch.where(out_deg > 0, wd / out_deg.clamp_min(1e-300), torch.zeros_like(wd))
        trans = trans + torch.diag((out_deg.squeeze(1) <= 0).to(torch.float64))
        pt = trans.T.contiguous()

        def step(r: Tensor) -> Tensor:
            return pt @ r

    e = torch.zeros(n, len(src), dtype=torch.float64, device=dev)
    e[torch.tensor(src, device=dev), torch.arange(len(src), device=dev)] = 1.0
    r = e
    for _ in range(max_iter):
        nxt = (1.0 - restart) * step(r) + restart * e
        done = float((nxt - r).abs().max()) <= tol
        r = nxt
        if done:
            break
    return r.T.contiguous()


def semantic_consistency_adjacency(
    graph: Tensor | Iterable[tuple[Hashable, Hashable, float]],
    classes: Sequence[Hashable] | None = None,
    *,
    restart: float = 0.15,
    directed: bool = False,
    keep_diagonal: bool = True,
    tol: float = 1e-12,
    max_iter: int = 10_000,
) -> Tensor:
    """The GRM paper's semantic-consistency graph over a knowledge graph (ConceptNet in the paper).

    ``s_ij`` is the probability that a random walk with restart (``restart`` = 0.15) from class ``i`` visits
    class ``j`` (see :func:`random_walk_with_restart`; intermediate concepts of the graph carry the walk), and
    the result is symmetrised ``s'_ij = sqrt(s_ij * s_ji)``.

    Args:
        graph: either a dense ``[N, N]`` weight tensor (``w_ij`` = weight of ``i -> j``) or an iterable of
            ``(u, v, weight)`` edges whose ends are any hashable ids (ConceptNet concept names, ints, ...);
            repeated edges add up.
        classes: the K class nodes, in output order: ids for an edge list (required; classes without edges are
            allowed and end up isolated), indices for a dense tensor (default: all N nodes).
        directed: treat edges as directed; by default each edge also counts in the reverse direction.
        keep_diagonal: keep ``s_ii`` (>= restart); False zeroes it.

    Returns:
        ``[K, K]`` float32, symmetric, non-negative, not normalised (use :func:`normalize_adjacency`).
    """
    fn = "semantic_consistency_adjacency"
    if isinstance(graph, Tensor):
        if graph.dim() != 2 or graph.shape[0] != graph.shape[1] or graph.shape[0] == 0:
            raise ValueError(f"{fn}: argument 'graph' must be a square tensor [N, N], got {list(graph.shape)}")
        weights = graph.to_dense() if graph.is_sparse else graph
        weights = weights.to(torch.float64)
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError(f"{fn}: argument 'graph' must hold finite, non-negative weights")
        if not directed:
            weights = weights + weights.T
        n = weights.shape[0]
        idx = list(range(n)) if classes is None else [int(c) for c in classes]
        if any(not 0 <= c < n for c in idx):
            raise ValueError(f"{fn}: argument 'classes' must be indices in [0, {n}) for a dense graph, got {idx}")
    else:
        if classes is None:
            raise ValueError(f"{fn}: argument 'classes' (the K class node ids) is required for an edge list")
        weights, idx = _edges_to_sparse(fn, graph, classes, directed)
    if not idx:
        raise ValueError(f"{fn}: argument 'classes' must not be empty")
    r = random_walk_with_restart(weights, idx, restart, tol=tol, max_iter=max_iter)
    s = r[:, idx]  # [K, K]: s[i, j] = visits of class j from class i
    out = (s * s.T).clamp_min(0).sqrt()
    if not keep_diagonal:
        out.fill_diagonal_(0.0)
    return out.to(torch.float32)


def _edges_to_sparse(
    fn: str, edges: Iterable[tuple[Hashable, Hashable, float]], classes: Sequence[Hashable], directed: bool
) -> tuple[Tensor, list[int]]:
    ids: dict[Hashable, int] = {}
    for c in classes:
        if c in ids:
            raise ValueError(f"{fn}: argument 'classes' has a repeated id {c!r}")
        ids[c] = len(ids)
    src, dst, val = [], [], []
    for k, edge in enumerate(edges):
        try:
            u, v, w = edge
            w = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"{fn}: edge {k} must be (u, v, weight), got {edge!r}") from None
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"{fn}: edge {k} ({u!r}, {v!r}) has weight {w!r}; weights must be finite and >= 0")
        iu = ids.setdefault(u, len(ids))
        iv = ids.setdefault(v, len(ids))
        src.append(iu)
        dst.append(iv)
        val.append(w)
        if not directed:
            src.append(iv)
            dst.append(iu)
            val.append(w)
    n = len(ids)
    if src:
        ind = torch.tensor([src, dst], dtype=torch.long)
    else:
        ind = torch.zeros(2, 0, dtype=torch.long)
    vals = torch.tensor(val, dtype=torch.float64)
    weights = torch.sparse_coo_tensor(ind, vals, (n, n), check_invariants=True).coalesce()
    return weights, list(range(len(classes)))


# ------------------------------------------------------------------------------------------ k nearest neighbours
def knn_adjacency(embeddings: Tensor, k: int, *, weighted: bool = False, symmetric: bool = True) -> Tensor:
    """k-nearest-neighbour graph by cosine similarity of the rows of ``embeddings``.

    Row ``i`` links to its ``k`` most similar other rows (ties: the lower index first). ``symmetric`` takes the
    union ``max(A, A^T)``. Weights are 1, or ``max(cos, 0)`` when ``weighted``. No self loops (the
    normalisation adds them).

    Args:
        embeddings: ``[K, E]`` floating, no all-zero row.
        k: neighbours per node, ``1 <= k < K``.

    Returns:
        ``[K, K]`` float32 on the device of ``embeddings``.
    """
    fn = "knn_adjacency"
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 2 or embeddings.dtype not in FLOAT_DTYPES:
        got = f"{embeddings.dtype} {list(embeddings.shape)}" if isinstance(embeddings, Tensor) else type(embeddings)
        raise ValueError(f"{fn}: argument 'embeddings' must be a floating tensor [K, E], got {got}")
    num = embeddings.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < num:
        raise ValueError(f"{fn}: argument 'k' must be an int in [1, K-1] = [1, {num - 1}], got {k!r}")
    e = embeddings.detach().to(torch.float64)
    if not torch.isfinite(e).all():
        raise ValueError(f"{fn}: argument 'embeddings' has non-finite entries")
    norms = e.norm(dim=1)
    if (norms == 0).any():
        raise ValueError(f"{fn}: argument 'embeddings' has all-zero rows {norms.eq(0).nonzero().flatten().tolist()}")
    e = e / norms[:, None]
    sim = e @ e.T
    order = torch.sort(-sim.fill_diagonal_(-math.inf), dim=1, stable=True).indices[:, :k]
    sim.fill_diagonal_(0.0)
    a = torch.zeros_like(sim)
    vals = sim.gather(1, order).clamp_min(0.0) if weighted else torch.ones_like(order, dtype=sim.dtype)
    a.scatter_(1, order, vals)
    if symmetric:
        a = torch.maximum(a, a.T)
    return a.to(torch.float32)


# ------------------------------------------------------------------------------------------- shipped defaults
@functools.cache
def _default_adjacency(dataset: str) -> Tensor:
    raw = knn_adjacency(class_embeddings(dataset), DEFAULT_KNN[dataset], weighted=True, symmetric=True)
    return normalize_adjacency(raw)


def default_adjacency(dataset: str) -> Tensor:
    """The default graph of ``dataset`` (``"voc"``: 21 nodes, ``"coco"``: 81), normalised, ready for the GCN.

    ``normalize_adjacency(knn_adjacency(class_embeddings(dataset), k, weighted=True))`` with ``k`` from
    ``DEFAULT_KNN`` (VOC 3, COCO 5): deterministic, computed from the shipped embeddings.

    Returns:
        ``[K, K]`` float32 on the CPU, symmetric, non-negative. A fresh tensor per call.
    """
    return _default_adjacency(check_dataset(dataset)).clone()
