"""The shipped presets (the paper's recipe): they parse, cover every demo setting, and run end to end at tiny
scale on generated data in their dataset's folder layout."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("PIL", reason="Pillow is not installed (the GPU machine has none)")
yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
import torch

from grmseg.cli import main
from grmseg.pipeline.config import PRESETS, PipelineConfig, demo_preset, load_config_file, preset_path
from grmseg.pipeline.datasets.synthetic import write_layout


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_parses_and_holds_the_papers_recipe(name):
    data = load_config_file(name)
    assert data == yaml.safe_load(preset_path(name).read_text())
    cfg = PipelineConfig.from_dict(data)
    assert cfg.dataset == name and cfg.backbone == "resnet50" and cfg.output_stride == 16
    assert (cfg.cam_method, cfg.aff_source, cfg.rw_beta, cfg.rw_steps, cfg.aff_radius, cfg.irn_radius) == \
        ("recam", "irn", 10.0, 256, 5, 10)
    assert (cfg.gcn_loss, cfg.gcn_loss_weight, cfg.focal_gamma) == ("focal", 1e-4, 2.0)
    assert (cfg.seg_backbone, cfg.seg_iterations, cfg.seg_batch, cfg.seg_crop_size) == ("resnet101", 20000, 5, 321)
    assert cfg.seg_lr * 0.1 == pytest.approx(2.5e-4) and cfg.use_grm
    assert cfg.conf_crf and cfg.eval_crf and not cfg.refine_crf  # IRN's CRF on the regions, the paper's at test
    # `demo --config <preset>` starts from the demo preset: every demo setting must be the preset's own
    assert set(demo_preset()) <= set(data), sorted(set(demo_preset()) - set(data))


TINY = ["--syn-train-images", "1", "--cls-epochs", "1", "--recam-epochs", "1", "--cls-batch", "2", "--recam-batch", "2",
        "--irn-epochs", "1", "--irn-batch", "2", "--irn-radius", "4", "--irn-init", "classifier", "--seg-iterations",
        "2", "--seg-batch", "2", "--cls-crop-size", "64", "--irn-crop-size", "64", "--seg-crop-size", "64",
        "--cam-scales", "1.0,0.5", "--rw-steps", "8", "--gcn-hidden", "16", "--aspp-channels", "16",
        "--grm-node-dim", "16", "--grm-key-dim", "8", "--num-workers", "0", "--threads", "1", "--no-progress",
        "--num-figures", "1"]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs_at_tiny_scale(name, tmp_path, capsys):
    root = write_layout(tmp_path / name, name, train_images=4, val_images=2)
    run = tmp_path / "run"
    assert main(["demo", "--config", name, "--data-root", str(root), "--run-dir", str(run), *TINY]) == 0
    log = (run / "log.txt").read_text()
    assert "ReCAM: 1 epochs" in log and "[recam] epoch 1/1" in log and "[irn] epoch 1/1" in log
    assert "backbone resnet101, GRM on; 2 iterations" in log
    res = json.loads((run / "eval" / "eval.json").read_text())["results"]
    assert set(res) == {"CAM", "pseudo mask", "segmentation (GRM)", "segmentation (GRM) + CRF"}
    assert res["pseudo mask"]["images"] == 4
