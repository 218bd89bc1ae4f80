"""IRN's boundary net and loss, ReCAM's head and the focal GCN loss of the classification stage."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from grmseg.geometry import cell_centres, strided_size
from grmseg.models.irn import BoundaryNet
from grmseg.models.wsss import MultiLabelClassifier, ReCAMHead
from grmseg.nn import multilabel_focal_loss
from grmseg.pipeline.affinity_net import pair_loss, pair_masks
from grmseg.pipeline.common import to_tensor
from grmseg.pipeline.datasets.synthetic import make_sample
from grmseg.pipeline.stages.train_irn import boundary_loss


@pytest.mark.parametrize("name", ["tiny", "resnet18"])
def test_boundary_net_shapes_and_frozen_backbone(name):
    net = BoundaryNet(name, 4).train()
    assert not net.backbone.training  # frozen BatchNorm statistics, as IRN
    x = torch.randn(2, 3, 37, 45)
    logits = net(x)
    assert logits.shape == (2, 1, *strided_size((37, 45), 4))
    logits.sum().backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert all(p.grad is not None for n, p in net.named_parameters() if not n.startswith("backbone."))
    b = net.eval().boundary(x)
    assert b.shape == logits.shape and 0 <= b.min() and b.max() <= 1
    unfrozen = BoundaryNet(name, 4, freeze_backbone=False).train()
    assert unfrozen.backbone.training
    unfrozen(x).sum().backward()
    assert all(p.grad is not None for p in unfrozen.backbone.parameters())


def test_pair_masks_by_hand():
    labels = torch.tensor([[[0, 0, 3], [255, 3, 3]]])  # [1, 2, 3]
    bg_pos, fg_pos, neg = pair_masks(labels, 2)  # offsets (0, 1), (1, -1), (1, 0), (1, 1)
    # from (0, 0): right (0, 1) both bg; down-right (1, 1) bg-3 -> neg; down (1, 0) ignored
    assert bg_pos[0, :, 0, 0].tolist() == [True, False, False, False]
    assert neg[0, :, 0, 0].tolist() == [False, False, False, True]
    # from (0, 2): down (1, 2) 3-3 -> fg_pos; down-left (1, 1) 3-3 -> fg_pos; right leaves the map
    assert fg_pos[0, :, 0, 2].tolist() == [False, True, True, False]
    # sources on the last row: only the offset (0, 1) stays in the map; (1, 0) -> (1, 1) is ignored (255)
    assert not (bg_pos | fg_pos | neg)[0, 1:, 1].any() and fg_pos[0, 0, 1].tolist() == [False, True, False]
    aff = torch.full((1, 4, 2, 3), 0.5, requires_grad=True)
    loss, counts = pair_loss(aff, labels, 2)
    # every term is -log(0.5 (+1e-5)): (bg/2 + fg/2 + neg) / 2 = log 2
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-4)
    assert counts == {"bg_pos": 1.0, "fg_pos": 3.0, "neg": 4.0}  # (0,1) meets 3 on its right and below
    loss.backward()
    assert aff.grad.abs().sum() > 0


def test_boundary_net_learns_object_edges():
    """Trained with IRN's loss from region labels (here the true masks of the synthetic scenes, on the stride-4
    grid), the boundary map is higher on cells that hold an object edge than inside regions."""
    torch.manual_seed(0)
    net = BoundaryNet("tiny", 8)
    train = [make_sample(0, "train", i, 48) for i in range(64)]
    x = torch.stack([to_tensor(s["image"]) for s in train])
    y = cell_centres(torch.stack([torch.from_numpy(s["mask"]).long() for s in train]), 4)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    loss_fn = boundary_loss(4)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        idx = torch.randint(0, 64, (16,), generator=g)
        loss = loss_fn(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    val = [make_sample(0, "val", i, 48) for i in range(32)]
    b = net.eval().boundary(torch.stack([to_tensor(s["image"]) for s in val]))[:, 0]
    blocks = torch.stack([torch.from_numpy(s["mask"]).long() for s in val]).reshape(32, 12, 4, 12, 4)
    edge = blocks.amax((2, 4)) != blocks.amin((2, 4))
    assert b[edge].mean() > b[~edge].mean() + 0.08, (b[edge].mean(), b[~edge].mean())


def test_recam_head_and_cam_weights():
    torch.manual_seed(0)
    model = MultiLabelClassifier(4, "tiny", 4, recam=True)
    x = torch.randn(3, 3, 33, 29)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
    assert model(x)["recam_logits"] is None and torch.equal(model.cam_weights(), model.classifier.weight.flatten(1))
    model.use_recam = True
    out = model(x)
    assert out["recam_logits"].shape == (3, 4, 4)
    torch.testing.assert_close(model.cam_weights(), model.recam.classifier.weight.flatten(1) *
                               model.classifier.weight.flatten(1))
    # by hand: class k's CAM-weighted mean feature, classified; CE on the present classes, mean per image / B
    feat = out["features"]
    cams = torch.relu(torch.einsum("kc,bchw->bkhw", model.classifier.weight.flatten(1), feat))
    cams = cams / (cams.amax(dim=(2, 3), keepdim=True) + 1e-5)
    weighted = (cams[:, :, None] * feat[:, None]).mean(dim=(3, 4))
    torch.testing.assert_close(out["recam_logits"], weighted @ model.recam.classifier.weight.flatten(1).T)
    expected = (F.cross_entropy(out["recam_logits"][0, [0, 2]], torch.tensor([0, 2]))
                + F.cross_entropy(out["recam_logits"][2, [1]], torch.tensor([1]))) / 3
    torch.testing.assert_close(ReCAMHead.loss(out["recam_logits"], labels), expected)


def test_multilabel_focal_loss():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.sigmoid(logits)
    p_t = torch.where(targets > 0, p, 1 - p)
    torch.testing.assert_close(multilabel_focal_loss(logits, targets, 2.0), (-(1 - p_t) ** 2 * p_t.log()).mean())
    torch.testing.assert_close(multilabel_focal_loss(logits, targets, 0.0),
                               F.binary_cross_entropy_with_logits(logits, targets))
    with pytest.raises(ValueError, match="shape"):
        multilabel_focal_loss(logits, targets[:1])


def test_classifier_loss_averages_over_the_classes_the_data_has():
    import numpy as np

    from grmseg.pipeline.config import PipelineConfig
    from grmseg.pipeline.stages.train_cls import classifier_loss

    torch.manual_seed(0)
    logits, gcn = torch.randn(4, 20), torch.randn(4, 20)
    y = torch.zeros(4, 20)
    y[:, [1, 6, 14]] = (torch.rand(4, 3) > 0.5).float()
    seen = np.zeros(20, bool)
    seen[[1, 6, 14]] = True
    cfg = PipelineConfig(gcn_loss="soft_margin", gcn_loss_weight=0.5)
    out = {"logits": logits, "gcn_logits": gcn}
    got = classifier_loss(cfg, seen)(out, y)
    cols = [1, 6, 14]
    expected = (F.multilabel_soft_margin_loss(logits[:, cols], y[:, cols])
                + 0.5 * F.multilabel_soft_margin_loss(gcn[:, cols], y[:, cols]))
    torch.testing.assert_close(got, expected)
    # every class seen (VOC, COCO): the usual loss over all of them
    full = classifier_loss(cfg, np.ones(20, bool))(out, y)
    torch.testing.assert_close(full, F.multilabel_soft_margin_loss(logits, y) + 0.5 *
                               F.multilabel_soft_margin_loss(gcn, y))
