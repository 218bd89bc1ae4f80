"""The WSSS networks: classifier (+ knowledge GCN head) and segmentation net (GRM on / off)."""

import pytest
import torch

from grmseg import GRM, ops
from grmseg.models import MultiLabelClassifier, ResNetBackbone, SegmentationNet, TinyBackbone
from grmseg.pipeline.common import class_name_embeddings, knowledge_graph

NAMES = ["background", "person", "bicycle", "horse", "car", "dog", "sofa"]


def test_classifier_shapes_and_cam_weights():
    torch.manual_seed(0)
    emb = class_name_embeddings(NAMES[1:])
    labels = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1], [1, 0, 1, 0, 0, 0]]).numpy()
    adj = knowledge_graph("cooccurrence", emb, labels)
    assert adj.shape == (6, 6)
    x = torch.randn(2, 3, 33, 41)
    for source in ("classifier", "gcn", "both"):
        m = MultiLabelClassifier(6, width=4, embeddings=emb, adjacency=adj, gcn_hidden=8, cam_source=source)
        out = m(x)
        assert out["logits"].shape == (2, 6) and out["gcn_logits"].shape == (2, 6)
        assert out["features"].shape == (2, 16, 9, 11)
        cam = ops.cam(out["features"], m.cam_weights().detach(), None)
        assert cam.shape == (2, 6, 9, 11)
    plain = MultiLabelClassifier(6, width=4)
    assert plain(x)["gcn_logits"] is None and plain.gcn_head is None
    with pytest.raises(ValueError, match="cam_source"):
        MultiLabelClassifier(6, width=4, cam_source="gcn")


def test_classifier_gcn_head_gets_gradient():
    emb = class_name_embeddings(NAMES[1:])
    m = MultiLabelClassifier(6, width=4, embeddings=emb, gcn_hidden=8)
    out = m(torch.randn(2, 3, 32, 32))
    (out["logits"].sum() + out["gcn_logits"].sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.gcn_head.parameters())


def test_segmentation_net_with_and_without_grm():
    emb = class_name_embeddings(NAMES)
    x = torch.randn(2, 3, 35, 30)
    with_grm = SegmentationNet(7, width=4, aspp_channels=8, aspp_rates=(1, 2), embeddings=emb, grm_node_dim=8,
                               grm_key_dim=4)
    assert any(isinstance(mod, GRM) for mod in with_grm.modules())
    y = with_grm(x)
    assert y.shape == (2, 7, 35, 30)
    y.sum().backward()
    without = SegmentationNet(7, width=4, aspp_channels=8, aspp_rates=(1, 2), use_grm=False)
    assert not any(isinstance(mod, GRM) for mod in without.modules())
    assert without(x).shape == (2, 7, 35, 30)


def test_resnet_backbone_from_weights_path(tmp_path):
    pytest.importorskip("torchvision", reason="torchvision is not installed (the GPU machine has none)")
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    bb = ResNetBackbone("resnet18", path, output_stride=16)
    torch.testing.assert_close(bb.stem[0].weight, ref.conv1.weight)
    assert bb(torch.randn(1, 3, 64, 64)).shape == (1, 512, 4, 4)
    assert ResNetBackbone("resnet18", output_stride=32)(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    with pytest.raises(FileNotFoundError):
        ResNetBackbone("resnet18", tmp_path / "missing.pth")
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit resnet18"):
        ResNetBackbone("resnet18", path)
    assert TinyBackbone(4)(torch.randn(1, 3, 16, 16)).shape == (1, 16, 4, 4)
