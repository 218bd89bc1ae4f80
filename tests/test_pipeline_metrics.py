"""mIoU and the confusion matrix, checked against independent implementations (torchmetrics, scikit-learn)."""

import numpy as np
import pytest
import torch

from grmseg.pipeline.metrics import SegmentationMeter, confusion_matrix, format_table, iou_from_confusion, mean_iou


def _random_maps(seed, k=7, shape=(3, 37, 29), ignore_frac=0.1):
    g = np.random.default_rng(seed)
    target = g.integers(0, k, size=shape)
    pred = np.where(g.random(shape) < 0.6, target, g.integers(0, k, size=shape))
    target[g.random(shape) < ignore_frac] = 255
    return pred.astype(np.uint8), target.astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_matches_torchmetrics(seed):
    tm = pytest.importorskip("torchmetrics.classification")
    k = 7
    pred, target = _random_maps(seed, k)
    meter = SegmentationMeter([f"c{i}" for i in range(k)])
    for p, t in zip(pred, target):  # accumulated image by image
        meter.update(p, t)
    ref = tm.MulticlassJaccardIndex(num_classes=k, average=None, ignore_index=255)
    ref.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(target.astype(np.int64)))
    expected = ref.compute().numpy()
    got = iou_from_confusion(meter.conf)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    macro = tm.MulticlassJaccardIndex(num_classes=k, average="macro", ignore_index=255)
    macro.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(target.astype(np.int64)))
    assert meter.summary()["miou"] == pytest.approx(macro.compute().item(), rel=1e-6)


def test_confusion_matches_torchmetrics():
    tm = pytest.importorskip("torchmetrics.classification")
    pred, target = _random_maps(5, 5)
    ref = tm.MulticlassConfusionMatrix(num_classes=5, ignore_index=255)
    ref.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(target.astype(np.int64)))
    np.testing.assert_array_equal(confusion_matrix(pred, target, 5), ref.compute().numpy())


def test_iou_matches_sklearn_and_absent_classes_are_skipped():
    sk = pytest.importorskip("sklearn.metrics")
    k = 6
    pred, target = _random_maps(3, k)
    pred[pred == 4] = 0
    target[target == 4] = 0  # class 4 absent everywhere: excluded from the mean
    keep = target != 255
    labels = [c for c in range(k) if c != 4]
    expected = sk.jaccard_score(target[keep], pred[keep], labels=labels, average=None)
    conf = confusion_matrix(pred, target, k)
    got = iou_from_confusion(conf)
    assert np.isnan(got[4])
    np.testing.assert_allclose(got[labels], expected, rtol=1e-9)
    assert mean_iou(conf) == pytest.approx(expected.mean())


def test_confusion_errors_and_table():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(np.zeros(3), np.array([0, 7, 1]), 3)
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(np.array([0, 9, 1]), np.zeros(3), 3)
    m = SegmentationMeter(["background", "cat"])
    m.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [255, 0]]))
    s = m.summary()
    assert s["iou"]["background"] == pytest.approx(0.5) and s["iou"]["cat"] == pytest.approx(0.5)
    assert "| x | **50.0** | 50.0 | 50.0 |" in format_table({"x": s}, m.class_names)
