"""Confident regions of the CAMs (IRN's cam_to_ir_label): thresholds, IRN's dense CRF, the written label files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("PIL", reason="Pillow is not installed (the GPU machine has none)")

from grmseg.pipeline.confident_regions import confident_labels, write_confident_regions
from grmseg.pipeline.config import PipelineConfig
from grmseg.pipeline.crf import label_unary
from grmseg.pipeline.datasets import SyntheticShapes
from grmseg.pipeline.datasets.synthetic import make_sample


def test_label_unary_is_pydensecrfs_unary_from_labels():
    labels = torch.tensor([[0, 2], [1, 1]])
    u = label_unary(labels, 3, gt_prob=0.7)
    assert u.shape == (3, 2, 2)
    torch.testing.assert_close(u.sum(0), torch.ones(2, 2))
    assert u[2, 0, 1] == pytest.approx(0.7) and u[0, 0, 1] == pytest.approx(0.15)
    with pytest.raises(ValueError, match="gt_prob"):
        label_unary(labels, 3, gt_prob=1.0)


def _blurred_cams(sample: dict) -> tuple[np.ndarray, np.ndarray]:
    """CAMs as a CAM net makes them on small objects: each class's mask blurred well past its edges."""
    keys = np.flatnonzero(sample["labels"]) + 1
    masks = torch.stack([torch.from_numpy(sample["mask"] == k).float() for k in keys])[:, None]
    kernel = torch.exp(-torch.arange(-8, 9.0) ** 2 / (2 * 4.0 ** 2))
    kernel = (kernel / kernel.sum())
    blur = F.conv2d(F.pad(masks, (8, 8, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    blur = F.conv2d(F.pad(blur, (0, 0, 8, 8), mode="replicate"), kernel.view(1, 1, -1, 1))[:, 0]
    return keys, (blur / blur.amax(dim=(1, 2), keepdim=True)).numpy()


def test_crf_makes_the_confident_regions_follow_the_image():
    """IRN's CRF pulls blurred confident regions back onto the object edges: foreground precision rises."""
    hits = {False: 0, True: 0}
    counts = {False: 0, True: 0}
    for i in range(6):
        s = make_sample(0, "train", i, 64)
        keys, cams = _blurred_cams(s)
        for crf in (False, True):
            lab = confident_labels(keys, cams, 0.3, 0.05, s["image"] if crf else None)
            assert lab.shape == s["mask"].shape and set(np.unique(lab)) <= {0, 255, *keys.tolist()}
            fg = (lab > 0) & (lab < 255)
            hits[crf] += int((lab[fg] == s["mask"][fg]).sum())
            counts[crf] += int(fg.sum())
    plain, refined = hits[False] / counts[False], hits[True] / counts[True]
    assert refined > plain + 0.1, (plain, refined)


def test_written_regions_remember_their_settings(tmp_path):
    from grmseg.pipeline.common import save_cam

    ds = SyntheticShapes("train", num_images=3, size=32)
    cams = tmp_path / "cams"
    for i in range(3):
        s = ds[i]
        keys, high = _blurred_cams(s)
        save_cam(cams / f"{s['id']}.npz", keys, high[:, ::4, ::4], high, 4)
    cfg = PipelineConfig(run_dir=str(tmp_path), conf_crf=False, progress=False)
    out = write_confident_regions(cfg, ds, cams, tmp_path / "ir_label")
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(ds.ids)
    from grmseg.pipeline.datasets import load_mask

    s = ds[1]
    keys, high = _blurred_cams(s)
    assert np.array_equal(load_mask(out / f"{s['id']}.png", 7), confident_labels(keys, high, 0.3, 0.05))
    with pytest.raises(ValueError, match="made with other settings .conf_fg: 0.3 -> 0.5"):
        write_confident_regions(cfg.replace(conf_fg=0.5), ds, cams, out)
