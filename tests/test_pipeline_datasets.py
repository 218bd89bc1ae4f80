"""Datasets: the synthetic one (deterministic, co-occurrence, exact masks) and VOC / COCO on tiny fake folders."""

import numpy as np
import pytest

pytest.importorskip("PIL", reason="Pillow is not installed (the GPU machine has none)")
from PIL import Image

from grmseg.pipeline.datasets import (
    SYNTHETIC_CLASSES,
    COCOSegmentation,
    SyntheticShapes,
    VOCSegmentation,
    build_dataset,
    labels_from_mask,
    save_png_atomic,
    voc_palette,
)


def test_synthetic_is_deterministic_and_consistent():
    a, b = SyntheticShapes("train", 12, 48, seed=3), SyntheticShapes("train", 12, 48, seed=3)
    c = SyntheticShapes("train", 12, 48, seed=4)
    for i in range(12):
        sa, sb = a[i], b[i]
        assert sa["image"].shape == (48, 48, 3) and sa["image"].dtype == np.uint8
        assert sa["mask"].shape == (48, 48)
        np.testing.assert_array_equal(sa["image"], sb["image"])
        np.testing.assert_array_equal(sa["mask"], sb["mask"])
        np.testing.assert_array_equal(sa["labels"], labels_from_mask(sa["mask"], len(SYNTHETIC_CLASSES)))
        assert sa["labels"].sum() >= 1
    assert any(not np.array_equal(a[i]["image"], c[i]["image"]) for i in range(12))
    assert a.ids[0] != SyntheticShapes("val", 1, 48, seed=3).ids[0]


def test_synthetic_classes_cooccur_realistically():
    labels = SyntheticShapes("train", 300, 32, seed=0).image_labels()
    names = list(SYNTHETIC_CLASSES[1:])
    co = labels.T @ labels
    p = co / np.diag(co)[:, None]  # P(column | row)
    i = names.index
    assert p[i("bicycle"), i("person")] > 0.5  # people ride bicycles
    assert p[i("sofa"), i("dog")] > 0.3  # dogs lie on sofas
    assert p[i("sofa"), i("car")] < 0.15  # sofas are not in the street
    assert labels.sum(1).mean() > 1.3  # several objects per image


def test_synthetic_rejects_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        SyntheticShapes("nope")
    with pytest.raises(IndexError):
        SyntheticShapes("val", 2)[2]


def _jpeg(path, size=(20, 16), colour=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _mask(path, arr):
    save_png_atomic(path, np.asarray(arr, np.uint8), voc_palette())


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOC2012"
    ids = ["2007_000032", "2007_000039"]
    for k, i in enumerate(ids):
        _jpeg(root / "JPEGImages" / f"{i}.jpg")
        m = np.zeros((16, 20), np.uint8)
        m[2:8, 3:9] = 1 + k * 14  # aeroplane, then person
        m[0, 0] = 255
        _mask(root / "SegmentationClassAug" / f"{i}.png", m)
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train_aug.txt").write_text("\n".join(ids) + "\n")
    (sets / "val.txt").write_text(f"/JPEGImages/{ids[0]}.jpg /SegmentationClassAug/{ids[0]}.png\n")
    return root


def test_voc_layout_and_labels_from_masks(voc_root):
    ds = VOCSegmentation(voc_root, "train_aug")
    assert len(ds) == 2 and ds.num_classes == 21
    s = ds[1]
    assert s["image"].shape == (16, 20, 3) and s["mask"].shape == (16, 20)
    assert np.flatnonzero(s["labels"]).tolist() == [14]  # person (index 15) -> object slot 14
    assert VOCSegmentation(voc_root, "val").ids == ["2007_000032"]
    assert build_dataset("voc", "val", str(voc_root)).ids == ["2007_000032"]


def test_voc_irn_cls_labels_npy(voc_root, tmp_path):
    vec = np.zeros(20, np.float32)
    vec[[6, 11]] = 1  # car, dog
    path = tmp_path / "cls_labels.npy"
    np.save(path, {2007000032: vec, 2007000039: vec})  # IRN's integer keys
    ds = VOCSegmentation(voc_root, "train_aug", cls_labels=path)
    assert np.flatnonzero(ds[0]["labels"]).tolist() == [6, 11]


def test_voc_text_label_list_and_unknown_class(voc_root, tmp_path):
    good = tmp_path / "labels.txt"
    good.write_text("2007_000032 person dog\n2007_000039 15\n")
    ds = VOCSegmentation(voc_root, "train_aug", cls_labels=good)
    assert np.flatnonzero(ds[0]["labels"]).tolist() == [11, 14]
    bad = tmp_path / "bad.txt"
    bad.write_text("2007_000032 unicorn\n")
    with pytest.raises(ValueError, match="unknown class 'unicorn'"):
        VOCSegmentation(voc_root, "train_aug", cls_labels=bad)


def test_voc_missing_folder_and_split(tmp_path, voc_root):
    with pytest.raises(FileNotFoundError, match="VOC root"):
        VOCSegmentation(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="split 'test'"):
        VOCSegmentation(voc_root, "test")


def test_voc_corrupt_image(voc_root):
    (voc_root / "JPEGImages" / "2007_000039.jpg").write_bytes(b"not a jpeg at all")
    ds = VOCSegmentation(voc_root, "train_aug")
    with pytest.raises(ValueError, match="corrupt or unreadable image .*2007_000039.jpg"):
        ds[1]


def test_voc_unknown_class_in_mask(voc_root):
    m = np.zeros((16, 20), np.uint8)
    m[3, 3] = 42
    _mask(voc_root / "SegmentationClassAug" / "2007_000032.png", m)
    with pytest.raises(ValueError, match=r"unknown class indices \[42\]"):
        VOCSegmentation(voc_root, "train_aug")[0]


def test_coco_layout(tmp_path):
    root = tmp_path / "coco"
    ids = ["COCO_train2014_000000000009", "COCO_train2014_000000000025"]
    for k, i in enumerate(ids):
        _jpeg(root / "JPEGImages" / "train2014" / f"{i}.jpg", (12, 10))
        m = np.zeros((10, 12), np.uint8)
        m[1:4, 1:4] = 80 if k else 1  # toothbrush / person
        _mask(root / "SegmentationClass" / "train2014" / f"{i}.png", m)
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("\n".join(ids))
    ds = COCOSegmentation(root, "train")
    assert ds.num_classes == 81 and len(ds) == 2
    assert np.flatnonzero(ds[0]["labels"]).tolist() == [0]
    assert np.flatnonzero(ds[1]["labels"]).tolist() == [79]
    with pytest.raises(FileNotFoundError, match="COCO images"):
        COCOSegmentation(root, "val")
