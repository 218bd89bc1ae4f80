"""Adjacency builders, normalisation and validation on small hand-checkable graphs; the shipped defaults."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grmseg import knowledge
from grmseg.knowledge import (
    cooccurrence_adjacency,
    knn_adjacency,
    mlgcn_normalize,
    normalize_adjacency,
    random_walk_with_restart,
    semantic_consistency_adjacency,
    validate_adjacency,
)


# ------------------------------------------------------------------------------------------- normalisation
def test_normalize_two_nodes_by_hand():
    a = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    # A + I = ones, degree 2 -> every entry 1/2
    assert torch.allclose(normalize_adjacency(a), torch.full((2, 2), 0.5))
    # without self loops: degree 1 -> unchanged
    assert torch.allclose(normalize_adjacency(a, add_self_loops=False), a)


def test_normalize_path_and_isolated_node():
    # path 0 - 1 - 2 (weight 2 on 1-2) plus an isolated node 3
    a = torch.zeros(4, 4, dtype=torch.float64)
    a[0, 1] = a[1, 0] = 1.0
    a[1, 2] = a[2, 1] = 2.0
    n = normalize_adjacency(a)
    deg = torch.tensor([2.0, 4.0, 3.0, 1.0], dtype=torch.float64)  # rows of A + I
    expect = (a + torch.eye(4, dtype=torch.float64)) / torch.sqrt(deg[:, None] * deg[None, :])
    assert n.dtype == torch.float64 and torch.allclose(n, expect)
    assert n[1, 2] == pytest.approx(2.0 / math.sqrt(12.0)) and n[3, 3] == pytest.approx(1.0)
    # no self loops: the isolated node's row stays zero (no division by zero)
    n0 = normalize_adjacency(a, add_self_loops=False)
    assert torch.isfinite(n0).all() and n0[3].abs().sum() == 0


def test_normalize_keeps_dtype_and_rejects_bad_input():
    a = torch.rand(5, 5).half()
    assert normalize_adjacency(a).dtype == torch.float16
    with pytest.raises(ValueError, match="non-negative"):
        normalize_adjacency(-torch.eye(3))


# --------------------------------------------------------------------------------------------- validation
def test_validate_accepts_and_returns():
    a = knowledge.default_adjacency("voc")
    assert validate_adjacency(a, 21) is a


@pytest.mark.parametrize(
    "adj,kwargs,exc,msg",
    [
        ([[1.0]], {}, TypeError, "expected a torch.Tensor"),
        (torch.eye(3, dtype=torch.int64), {}, TypeError, "floating"),
        (torch.zeros(3, 4), {}, ValueError, r"square matrix \[K, K\], got shape \[3, 4\]"),
        (torch.zeros(3), {}, ValueError, "square matrix"),
        (torch.zeros(0, 0), {}, ValueError, "at least one node"),
        (torch.eye(3), {"num_nodes": 21}, ValueError, r"expected shape \[21, 21\].*got \[3, 3\]"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), {}, ValueError, r"finite.*first at \[0, 1\]"),
        (torch.tensor([[1.0, -0.5], [-0.5, 1.0]]), {}, ValueError, r"non-negative.*2 negative.*\[0, 1\] = -0.5"),
        (torch.tensor([[1.0, 0.5], [0.2, 1.0]]), {}, ValueError, r"symmetric.*\[0, 1\] = 0.5 and \[1, 0\] = 0.2"),
    ],
)
def test_validate_errors_name_the_problem(adj, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        validate_adjacency(adj, **kwargs)


def test_validate_symmetry_options():
    a = torch.tensor([[1.0, 0.5], [0.2, 1.0]])
    assert validate_adjacency(a, symmetric=False) is a
    assert validate_adjacency(a, atol=0.5) is a
    with pytest.raises(ValueError, match="^graph: expected"):
        validate_adjacency(a, name="graph")


# --------------------------------------------------------------------------------------- ML-GCN co-occurrence
LABELS = torch.tensor(
    [
        [1, 1, 0, 0],
        [1, 0, 0, 0],
        [1, 1, 1, 0],
        [0, 1, 0, 0],
    ]
)  # N = (3, 3, 1, 0); P(1|0) = 2/3, P(2|0) = 1/3, P(0|1) = 2/3, P(2|1) = 1/3, P(0|2) = P(1|2) = 1; class 3 never


def test_cooccurrence_paper_by_hand():
    a = cooccurrence_adjacency(LABELS, t=0.4, p=0.25)
    expect = torch.tensor(
        [
            [0.75, 0.25, 0.0, 0.0],
            [0.25, 0.75, 0.0, 0.0],
            [0.125, 0.125, 0.75, 0.0],
            [0.0, 0.0, 0.0, 1.0],  # never occurs: all mass on itself
        ]
    )
    assert a.dtype == torch.float32 and torch.allclose(a, expect)
    assert torch.allclose(a.sum(1), torch.ones(4))
    # t = 0.3 also keeps P = 1/3
    a3 = cooccurrence_adjacency(LABELS.bool(), t=0.3, p=0.2)
    assert torch.allclose(a3[0], torch.tensor([0.8, 0.1, 0.1, 0.0]))
    assert torch.allclose(a3[2], torch.tensor([0.1, 0.1, 0.8, 0.0]))


def _mlgcn_gen_a(labels: np.ndarray, t: float, p: float) -> np.ndarray:
    """ML-GCN's gen_A, transcribed: pairwise counts (zero diagonal) / class counts, binarise, re-weight, + I."""
    adj = labels.T @ labels
    nums = np.diag(adj).copy()
    np.fill_diagonal(adj, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        adj = adj / nums[:, np.newaxis]
    adj = np.nan_to_num(adj, nan=0.0, posinf=0.0)
    adj[adj < t] = 0
    adj[adj >= t] = 1
    adj = adj * p / (adj.sum(0, keepdims=True) + 1e-6)
    return adj + np.identity(labels.shape[1])


def test_cooccurrence_mlgcn_variant_matches_released_formula():
    rng = np.random.default_rng(0)
    labels = (rng.random((50, 7)) < 0.3).astype(np.float64)
    labels[:, 6] = 0  # a class that never occurs
    a = cooccurrence_adjacency(torch.from_numpy(labels), t=0.4, p=0.25, variant="mlgcn")
    assert np.allclose(a.numpy(), _mlgcn_gen_a(labels, 0.4, 0.25), atol=1e-6)
    # and ML-GCN's gen_adj: D^-1/2 A^T D^-1/2, D = row sums of A
    ref = _mlgcn_gen_a(labels, 0.4, 0.25)
    d = np.diag(ref.sum(1) ** -0.5)
    assert np.allclose(mlgcn_normalize(a).numpy(), (ref @ d).T @ d, atol=1e-6)


def test_cooccurrence_by_hand_mlgcn():
    a = cooccurrence_adjacency(LABELS, variant="mlgcn")
    # column sums of B: (2, 2, 0, 0)
    assert a[0, 1] == pytest.approx(0.125, rel=1e-5) and a[2, 0] == pytest.approx(0.125, rel=1e-5)
    assert torch.allclose(a.diagonal(), torch.ones(4)) and a[3].sum() == 1.0


def test_cooccurrence_errors():
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        cooccurrence_adjacency(torch.ones(3))
    with pytest.raises(ValueError, match="'t' must be in"):
        cooccurrence_adjacency(LABELS, t=1.5)
    with pytest.raises(ValueError, match="'p' must be in"):
        cooccurrence_adjacency(LABELS, p=-0.1)
    with pytest.raises(ValueError, match="'variant'"):
        cooccurrence_adjacency(LABELS, variant="x")
    with pytest.raises(TypeError, match="torch.Tensor"):
        cooccurrence_adjacency([[1, 0]])


# ----------------------------------------------------------------------------------- random walk with restart
def test_rwr_matches_closed_form_dense_and_sparse():
    torch.manual_seed(0)
    w = torch.rand(6, 6, dtype=torch.float64) * (torch.rand(6, 6) < 0.5)
    w[4] = 0.0  # node 4 has no out-edges: the walk stays there
    c = 0.15
    r = random_walk_with_restart(w, restart=c)
    deg = w.sum(1, keepdim=True)
    p = torch.where(deg > 0, w / deg.clamp_min(1e-300), torch.zeros_like(w)) + torch.diag((deg[:, 0] == 0).double())
    closed = c * torch.linalg.inv(torch.eye(6, dtype=torch.float64) - (1 - c) * p)  # row s = walks from s
    assert torch.allclose(r, closed, atol=1e-10)
    assert torch.allclose(r.sum(1), torch.ones(6, dtype=torch.float64))
    rs = random_walk_with_restart(w.to_sparse(), sources=[4, 1], restart=c)
    assert torch.allclose(rs, closed[[4, 1]], atol=1e-10)
    assert rs[0, 4] == pytest.approx(1.0)


def test_semantic_consistency_two_nodes_by_hand():
    # one edge: from node 0 the walk alternates; r_0 = (1, q) / (1 + q) with q = 1 - restart
    q = 0.85
    s = semantic_consistency_adjacency([("cat", "dog", 3.0)], ["cat", "dog"])
    expect = torch.tensor([[1.0, q], [q, 1.0]]) / (1 + q)
    assert torch.allclose(s, expect, atol=1e-6)
    s0 = semantic_consistency_adjacency(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), keep_diagonal=False)
    assert torch.allclose(s0, expect * (1 - torch.eye(2)), atol=1e-6)


def test_semantic_consistency_walks_through_other_concepts():
    # classes a, c joined only through the concept b; class e is isolated (no edges)
    edges = [("a", "b", 1.0), ("b", "c", 1.0), ("c", "d", 2.0)]
    s = semantic_consistency_adjacency(edges, ["a", "c", "e"])
    assert s.shape == (3, 3) and s.dtype == torch.float32
    assert torch.allclose(s, s.T) and (s >= 0).all()
    assert s[0, 1] > 0 and s[0, 2] == 0 and s[1, 2] == 0 and s[2, 2] == pytest.approx(1.0)
    # same graph as a dense matrix, nodes a b c d e = 0 1 2 3 4
    w = torch.zeros(5, 5)
    w[0, 1] = w[1, 2] = 1.0
    w[2, 3] = 2.0
    sd = semantic_consistency_adjacency(w, [0, 2, 4])
    assert torch.allclose(s, sd, atol=1e-6)
    # asymmetric walk probabilities, symmetrised as sqrt(s_ij * s_ji)
    wd = w + w.T
    r = random_walk_with_restart(wd, [0, 2])
    assert float(s[0, 1]) == pytest.approx(math.sqrt(float(r[0, 2] * r[1, 0])), rel=1e-5)
    assert float(r[0, 2]) != pytest.approx(float(r[1, 0]), rel=1e-3)


def test_semantic_consistency_directed_and_errors():
    s = semantic_consistency_adjacency([(0, 1, 1.0)], [0, 1], directed=True)
    assert s[0, 1] == 0  # 1 -> 0 is never walked, so the geometric mean is 0
    with pytest.raises(ValueError, match="'classes'.*required"):
        semantic_consistency_adjacency([(0, 1, 1.0)])
    with pytest.raises(ValueError, match="weight -1.0"):
        semantic_consistency_adjacency([(0, 1, -1.0)], [0, 1])
    with pytest.raises(ValueError, match=r"edge 0 must be \(u, v, weight\)"):
        semantic_consistency_adjacency([(0, 1)], [0, 1])
    with pytest.raises(ValueError, match="repeated id"):
        semantic_consistency_adjacency([(0, 1, 1.0)], [0, 0])
    with pytest.raises(ValueError, match="indices in"):
        semantic_consistency_adjacency(torch.ones(3, 3), [0, 5])
    with pytest.raises(ValueError, match="non-negative"):
        semantic_consistency_adjacency(torch.tensor([[0.0, -1.0], [2.0, 0.0]]))
    with pytest.raises(ValueError, match="'restart'"):
        random_walk_with_restart(torch.ones(2, 2), restart=0.0)


# ------------------------------------------------------------------------------------------------------ kNN
def test_knn_by_hand():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-0.5, 1.0]])
    # nearest: 0 -> 1, 1 -> 0, 2 -> 3 (cos .894 vs .0995), 3 -> 2
    a = knn_adjacency(e, 1, symmetric=False)
    expect = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.float32)
    assert torch.equal(a, expect)
    # k = 2: 0 -> {1, 2}, 1 -> {0, 2}, 2 -> {3, 1}, 3 -> {2, 1}; union is symmetric
    a2 = knn_adjacency(e, 2)
    expect2 = torch.tensor([[0, 1, 1, 0], [1, 0, 1, 1], [1, 1, 0, 1], [0, 1, 1, 0]], dtype=torch.float32)
    assert torch.equal(a2, expect2)
    w = knn_adjacency(e, 1, weighted=True)
    assert w[2, 3] == pytest.approx(1.0 / math.sqrt(1.25)) and w[0, 1] == pytest.approx(1.0 / math.sqrt(1.01))
    assert torch.equal(w, w.T) and w.diagonal().abs().sum() == 0


def test_knn_ties_and_errors():
    e = torch.ones(4, 3)  # all tied: the lower indices win
    a = knn_adjacency(e, 2, symmetric=False)
    assert a[0].tolist() == [0, 1, 1, 0] and a[3].tolist() == [1, 1, 0, 0]
    with pytest.raises(ValueError, match=r"'k' must be an int in \[1, K-1\] = \[1, 3\], got 4"):
        knn_adjacency(e, 4)
    with pytest.raises(ValueError, match="all-zero rows"):
        knn_adjacency(torch.zeros(3, 2), 1)
    with pytest.raises(ValueError, match=r"floating tensor \[K, E\]"):
        knn_adjacency(torch.ones(3), 1)


# ---------------------------------------------------------------------------------------------- the defaults
@pytest.mark.parametrize("dataset,k", [("voc", 21), ("coco", 81)])
def test_default_adjacency(dataset, k):
    a = knowledge.default_adjacency(dataset)
    assert a.shape == (k, k) and a.dtype == torch.float32
    validate_adjacency(a, k)
    raw = knn_adjacency(knowledge.class_embeddings(dataset), knowledge.DEFAULT_KNN[dataset], weighted=True)
    assert torch.equal(a, normalize_adjacency(raw))
    assert (raw > 0).sum(1).min() >= knowledge.DEFAULT_KNN[dataset]  # every class has its k neighbours
    a[0, 0] = 5.0  # a fresh tensor each call
    assert knowledge.default_adjacency(dataset)[0, 0] != 5.0


def test_default_voc_graph_is_semantic():
    names = knowledge.class_names("voc")
    a = knowledge.default_adjacency("voc")
    i = names.index
    assert a[i("cat"), i("dog")] > 0 and a[i("bicycle"), i("motorbike")] > 0 and a[i("cow"), i("sheep")] > 0
    assert a[i("cat"), i("bus")] == 0 and a[i("sofa"), i("horse")] == 0
