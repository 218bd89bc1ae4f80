"""``grmseg.nn.GraphConv`` and ``KnowledgeGCNHead``; GraphConv against torch_geometric's GCNConv."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from grmseg import knowledge, ops
from grmseg.nn.graph_conv import GraphConv
from grmseg.nn.knowledge_head import KnowledgeGCNHead

HAS_PYG = importlib.util.find_spec("torch_geometric") is not None


def _dense_gcn(z, adj, w, b, act):
    pre = adj @ (z @ w) + (0 if b is None else b)
    return {"none": pre, "relu": F.relu(pre), "leaky_relu": F.leaky_relu(pre, 0.2)}[act]


# ------------------------------------------------------------------------------------------------ GraphConv
@pytest.mark.parametrize("activation", ["leaky_relu", "relu", "none"])
@pytest.mark.parametrize("bias", [True, False])
def test_graph_conv_matches_formula(activation, bias):
    torch.manual_seed(0)
    layer = GraphConv(59, 37, bias=bias, activation=activation).double()
    if bias:
        torch.nn.init.normal_(layer.bias)
    z = torch.randn(3, 21, 59, dtype=torch.float64)
    adj = knowledge.default_adjacency("voc").double()
    out = layer(z, adj)
    assert out.shape == (3, 21, 37) and out.dtype == torch.float64
    assert torch.allclose(out, _dense_gcn(z, adj, layer.weight, layer.bias, activation), atol=1e-12)
    # unbatched input -> unbatched output, same numbers
    assert torch.allclose(layer(z[1], adj), out[1], atol=1e-12)


def test_graph_conv_gradients_and_init():
    torch.manual_seed(0)
    layer = GraphConv(384, 1024)
    bound = (6.0 / (384 + 1024)) ** 0.5
    assert layer.weight.shape == (384, 1024) and layer.weight.abs().max() <= bound
    assert torch.equal(layer.bias, torch.zeros(1024))
    z = torch.randn(21, 384, requires_grad=True)
    adj = knowledge.default_adjacency("voc").requires_grad_()
    layer(z, adj).square().sum().backward()
    for t in (z, adj, layer.weight, layer.bias):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_graph_conv_gradcheck():
    torch.manual_seed(0)
    layer = GraphConv(5, 4, activation="leaky_relu").double()
    z = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)
    adj = torch.rand(6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z, a: layer(z, a), (z, adj))


def test_graph_conv_autocast_and_dtypes():
    layer = GraphConv(16, 8)
    z = torch.randn(2, 5, 16)
    adj = torch.eye(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(z, adj)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), layer(z, adj), atol=5e-2, rtol=5e-2)
    with pytest.raises(TypeError, match="dtype"):
        layer(z.double(), adj.double())  # parameters are float32: no silent cast outside autocast


def test_graph_conv_errors():
    layer = GraphConv(4, 3)
    with pytest.raises(ValueError, match=r"\[B, K, F\] or \[K, F\]"):
        layer(torch.randn(4), torch.eye(1))
    with pytest.raises(ValueError, match="in_features = 4, got 5"):
        layer(torch.randn(2, 5), torch.eye(2))
    with pytest.raises(ValueError, match="adj"):
        layer(torch.randn(2, 4), torch.eye(3))
    with pytest.raises(ValueError, match="'activation'"):
        GraphConv(4, 3, activation="gelu")
    with pytest.raises(ValueError, match="'in_features'"):
        GraphConv(0, 3)
    assert "activation='leaky_relu'" in repr(layer)


# ---------------------------------------------------------------------------------- torch_geometric's GCNConv
def _random_graph(k: int, directed: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(k, k, generator=g) < 0.35
    mask.fill_diagonal_(False)
    if not directed:
        mask = mask | mask.T
    src, dst = mask.nonzero(as_tuple=True)
    w = torch.rand(len(src), generator=g, dtype=torch.float64) + 0.1
    if not directed:  # same weight both ways
        wm = torch.zeros(k, k, dtype=torch.float64)
        wm[src, dst] = w
        wm = torch.triu(wm) + torch.triu(wm).T
        w = wm[src, dst]
    return torch.stack([src, dst]), w


@pytest.mark.skipif(not HAS_PYG, reason="torch_geometric is not installed")
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch_geometric uses torch.jit.script at import
@pytest.mark.parametrize("directed", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_graph_conv_equals_torch_geometric_gcnconv(directed, weighted):
    from torch_geometric.nn import GCNConv

    torch.manual_seed(0)
    k, fin, fout = 21, 59, 37
    edge_index, w = _random_graph(k, directed, seed=1 + directed)
    if not weighted:
        w = torch.ones_like(w)
    conv = GCNConv(fin, fout).double()  # adds self loops and normalises by itself
    torch.nn.init.normal_(conv.bias)
    ours = GraphConv(fin, fout, activation="none").double()
    with torch.no_grad():
        ours.weight.copy_(conv.lin.weight.T)  # GCNConv: [out, in]; ours: [in, out]
        ours.bias.copy_(conv.bias)
    # the same edge set as a dense matrix: message src -> dst is aggregated by dst (row = dst)
    a = torch.zeros(k, k, dtype=torch.float64)
    a[edge_index[1], edge_index[0]] = w
    adj = knowledge.normalize_adjacency(a)
    x = torch.randn(k, fin, dtype=torch.float64)
    expect = conv(x, edge_index, w if weighted else None)
    got = ours(x, adj)
    assert torch.allclose(got, expect, atol=1e-10, rtol=1e-10)
    # float32 too, batched
    conv32, ours32 = conv.float(), ours.float()
    x32 = torch.randn(3, k, fin)
    got32 = ours32(x32, adj.float())
    for b in range(3):
        exp32 = conv32(x32[b], edge_index, w.float() if weighted else None)
        assert torch.allclose(got32[b], exp32, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------ KnowledgeGCNHead
def test_head_from_dataset_name():
    torch.manual_seed(0)
    head = KnowledgeGCNHead(64, "voc", hidden_dim=32)
    assert head.num_classes == 21
    assert torch.equal(head.embeddings, knowledge.class_embeddings("voc"))
    assert torch.equal(head.adjacency, knowledge.default_adjacency("voc"))
    assert (head.gc1.in_features, head.gc1.out_features, head.gc1.activation) == (384, 32, "leaky_relu")
    assert (head.gc2.in_features, head.gc2.out_features, head.gc2.activation) == (32, 64, "none")
    assert head.gc1.bias is None and head.gc2.bias is None  # as ML-GCN
    feats = torch.randn(4, 64)
    logits = head(feats)
    assert logits.shape == (4, 21)
    w = head.classifier_weights()
    assert w.shape == (21, 64)
    # the ML-GCN computation written out
    adj, emb = head.adjacency, head.embeddings
    h = F.leaky_relu(adj @ emb @ head.gc1.weight, 0.2)
    w_ref = adj @ h @ head.gc2.weight
    assert torch.allclose(w, w_ref, atol=1e-5)
    assert torch.allclose(logits, feats @ w_ref.T, atol=1e-4)
    # trained parameters are exactly the two GCN weights, and both get gradients
    assert [n for n, _ in head.named_parameters()] == ["gc1.weight", "gc2.weight"]
    F.multilabel_soft_margin_loss(logits, (torch.rand(4, 21) < 0.3).float()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_head_coco_and_tensors():
    head = KnowledgeGCNHead(16, "coco", hidden_dim=8)
    assert head(torch.randn(2, 16)).shape == (2, 81)
    glove_like = torch.randn(20, 300)
    adj = knowledge.normalize_adjacency(knowledge.knn_adjacency(glove_like, 2))
    h2 = KnowledgeGCNHead(2048, glove_like, adj)
    assert torch.equal(h2.adjacency, adj) and h2.gc1.in_features == 300 and h2.gc1.out_features == 1024
    assert h2(torch.randn(3, 2048)).shape == (3, 20)
    h3 = KnowledgeGCNHead(8, glove_like)  # no adjacency: normalised 3-NN graph of the given embeddings
    expect = knowledge.normalize_adjacency(knowledge.knn_adjacency(glove_like, 3, weighted=True))
    assert torch.equal(h3.adjacency, expect)
    h4 = KnowledgeGCNHead(8, knowledge.class_embeddings("voc"), "voc")
    assert torch.equal(h4.adjacency, knowledge.default_adjacency("voc"))
    directed = knowledge.cooccurrence_adjacency((torch.rand(30, 20) < 0.3).float())
    h5 = KnowledgeGCNHead(8, glove_like, knowledge.normalize_adjacency(directed, add_self_loops=False))
    assert h5(torch.randn(1, 8)).shape == (1, 20)


def test_head_feature_maps_and_cam():
    torch.manual_seed(0)
    head = KnowledgeGCNHead(32, "voc", hidden_dim=16)
    feat = torch.rand(2, 32, 5, 7)
    maps = head(feat)
    assert maps.shape == (2, 21, 5, 7)
    # as a 1x1 convolution: pooled scores equal the scores of the pooled features
    assert torch.allclose(maps.mean(dim=(2, 3)), head(feat.mean(dim=(2, 3))), atol=1e-5)
    w = head.classifier_weights().detach()
    assert torch.allclose(maps, F.conv2d(feat, w[:, :, None, None]), atol=1e-5)
    labels = torch.zeros(2, 21)
    labels[0, 8] = labels[1, 12] = 1
    cams = ops.cam(feat, w, labels)
    assert cams.shape == (2, 21, 5, 7)
    expect = F.relu(maps.detach())
    expect = expect / (expect.amax(dim=(2, 3), keepdim=True) + 1e-5) * labels[:, :, None, None]
    assert torch.allclose(cams, expect, atol=1e-5)


def test_head_beside_plain_classifier():
    """Both heads on one backbone feature (as in the paper's classification stage): losses add, both train."""
    torch.manual_seed(0)
    head = KnowledgeGCNHead(32, "voc", hidden_dim=16)
    plain = torch.nn.Conv2d(32, 21, 1, bias=False)
    feat = torch.rand(2, 32, 4, 4, requires_grad=True)
    pooled = feat.mean(dim=(2, 3))
    y = (torch.rand(2, 21) < 0.3).float()
    loss = F.multilabel_soft_margin_loss(plain(feat).mean(dim=(2, 3)), y) + F.multilabel_soft_margin_loss(
        head(pooled), y
    )
    loss.backward()
    assert plain.weight.grad is not None and head.gc1.weight.grad is not None and feat.grad is not None


def test_head_state_dict_dtype_autocast():
    head = KnowledgeGCNHead(16, "voc", hidden_dim=8)
    sd = head.state_dict()
    assert {"embeddings", "adjacency", "gc1.weight", "gc2.weight"} <= set(sd)
    other = KnowledgeGCNHead(16, "voc", hidden_dim=8)
    other.load_state_dict(sd)
    x = torch.randn(2, 16)
    assert torch.equal(other(x), head(x))
    assert head.double()(x.double()).dtype == torch.float64
    head.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(x).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="dtype of the head's parameters"):
        head(x.half())


def test_head_errors():
    with pytest.raises(ValueError, match="unknown dataset"):
        KnowledgeGCNHead(16, "ade")
    with pytest.raises(ValueError, match=r"\[K, E\]"):
        KnowledgeGCNHead(16, torch.randn(5))
    with pytest.raises(ValueError, match=r"\[K, K\] = \[5, 5\]"):
        KnowledgeGCNHead(16, torch.randn(5, 8), torch.eye(4))
    with pytest.raises(ValueError, match="non-negative"):
        KnowledgeGCNHead(16, torch.randn(2, 8), -torch.eye(2))
    with pytest.raises(TypeError, match="'embeddings'"):
        KnowledgeGCNHead(16, [[0.0]])
    with pytest.raises(ValueError, match="'feature_dim'"):
        KnowledgeGCNHead(0, "voc")
    head = KnowledgeGCNHead(16, "voc", hidden_dim=8)
    with pytest.raises(ValueError, match="feature_dim = 16, got 15"):
        head(torch.randn(2, 15))
    with pytest.raises(ValueError, match=r"\[B, D\] or \[B, D, h, w\]"):
        head(torch.randn(2, 16, 3))


def test_head_and_layer_compile_fullgraph():
    torch.manual_seed(0)
    head = KnowledgeGCNHead(32, "voc", hidden_dim=16)
    x = torch.randn(2, 32)
    compiled = torch.compile(head, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(x), head(x), atol=1e-5)
    layer = GraphConv(8, 4)
    z = torch.randn(3, 5, 8)
    assert torch.allclose(
        torch.compile(layer, fullgraph=True, backend="aot_eager")(z, torch.eye(5)), layer(z, torch.eye(5))
    )
