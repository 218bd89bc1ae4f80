"""Every stage on a tiny synthetic config, through the command line: outputs, resume, config files, report."""

import json

import numpy as np
import pytest

pytest.importorskip("PIL", reason="Pillow is not installed (the GPU machine has none)")
import torch
from PIL import Image

from grmseg.cli import main
from grmseg.pipeline import stages
from grmseg.pipeline.common import load_cam, open_dataset
from grmseg.pipeline.config import PipelineConfig, tiny_preset
from grmseg.pipeline.datasets import SYNTHETIC_CLASSES
from grmseg.pipeline.stages.make_cam import cam_to_mask


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    """The stages set torch's CPU thread count (``threads`` config key); give the other tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The ``demo`` command on the tiny config (runs every stage once for the module)."""
    run = tmp_path_factory.mktemp("demo") / "run"
    cfg_file = run.parent / "tiny.json"
    cfg_file.write_text(json.dumps({**PipelineConfig.from_dict(tiny_preset()).to_dict(), "run_dir": str(run)}))
    assert main(["demo", "--config", str(cfg_file)]) == 0
    return run, cfg_file


def test_demo_writes_every_output(demo_run, capsys):
    run, _ = demo_run
    cfg = PipelineConfig.from_dict(json.loads((run / "config.json").read_text()))
    n_train = cfg.syn_train_images
    assert (run / "cls" / "model.pt").is_file() and (run / "seg" / "model.pt").is_file()
    assert (run / "irn" / "model.pt").is_file()
    assert len(list((run / "cams").glob("*.npz"))) == n_train
    pngs = sorted((run / "pseudo").glob("*.png"))
    assert len(pngs) == n_train
    m = np.asarray(Image.open(pngs[0]))
    assert m.shape == (cfg.syn_size, cfg.syn_size) and m.max() < len(SYNTHETIC_CLASSES)
    assert len(list((run / "seg_pred").glob("*.png"))) == cfg.syn_val_images
    assert not list(run.rglob("*.tmp*")), "temporary files left behind"
    res = json.loads((run / "eval" / "eval.json").read_text())["results"]
    assert set(res) == {"CAM", "pseudo mask", "segmentation (GRM)", "segmentation (GRM) + CRF"}
    assert len(list((run / "seg_pred_crf").glob("*.png"))) == cfg.syn_val_images
    assert (run / "eval" / "confusion_segmentation_grm_crf.csv").is_file()
    assert len(list((run / "ir_label").glob("*.png"))) == n_train  # the confident regions (CRF-refined)
    for r in res.values():
        assert 0.0 <= r["miou"] <= 1.0
        assert np.asarray(r["confusion"]).shape == (7, 7)
    report = (run / "report.md").read_text()
    assert "figures/examples.png" in report and "mIoU" in report
    fig = Image.open(run / "figures" / "examples.png")
    assert fig.size[0] > 5 * cfg.syn_size
    log = (run / "log.txt").read_text()
    assert "[cls] epoch 1/1" in log and "[irn] epoch 1/1" in log and "[eval]" in log


def test_cam_file_and_masks(demo_run):
    run, _ = demo_run
    cfg = PipelineConfig.from_dict(json.loads((run / "config.json").read_text()))
    ds = open_dataset(cfg, "train")
    s = ds[0]
    cam = load_cam(run / "cams" / f"{s['id']}.npz")
    assert cam["keys"].tolist() == (np.flatnonzero(s["labels"]) + 1).tolist()
    assert cam["high_res"].shape == (len(cam["keys"]), cfg.syn_size, cfg.syn_size)
    assert cam["cam"].shape[1:] == (cfg.syn_size // 4, cfg.syn_size // 4)
    assert 0 <= cam["high_res"].min() and cam["high_res"].max() <= 1.0
    assert cam["stride"] == 4
    mask = cam_to_mask(cam, 0.2)
    assert set(np.unique(mask)) <= {0, *cam["keys"].tolist()}


def test_stages_skip_done_work_and_eval_again(demo_run, capsys):
    run, _ = demo_run
    for stage in ("train-cls", "make-cam", "train-irn", "refine", "train-seg"):
        assert main([stage, "--config", str(run / "config.json")]) == 0
    out = capsys.readouterr().out
    assert "done already" in out and "0 new CAM files" in out and "0 new pseudo masks" in out
    assert main(["eval", "--config", str(run / "config.json"), "--no-progress"]) == 0
    assert "| CAM (train) |" in capsys.readouterr().out


@pytest.mark.parametrize("stage", ["train-cls", "train-seg"])
def test_training_killed_at_a_checkpoint_resumes_to_the_same_weights(stage, demo_run, tmp_path, monkeypatch):
    """Kill a training stage right after its first epoch checkpoint; the resumed run ends with the very weights
    of an uninterrupted one (same data order, augmentation draws, dropout and SGD state)."""
    import shutil

    from conftest import killed_after_first_checkpoint

    src, _ = demo_run
    sub = "cls" if stage == "train-cls" else "seg"
    runs = {}
    for name in ("straight", "killed"):
        run = tmp_path / name
        run.mkdir()
        shutil.copy(src / "config.json", run / "config.json")
        if stage == "train-seg":
            for d in ("cls", "pseudo"):
                shutil.copytree(src / d, run / d)
        runs[name] = run
    flags = ["--cls-epochs", "2", "--seg-epochs", "2", "--cls-batch", "8", "--seg-batch", "8"]
    assert main([stage, "--run-dir", str(runs["straight"]), *flags]) == 0
    killed_after_first_checkpoint(monkeypatch, [stage, "--run-dir", str(runs["killed"]), *flags])
    assert not (runs["killed"] / sub / "model.pt").is_file()
    assert main([stage, "--run-dir", str(runs["killed"]), *flags]) == 0
    assert "resuming from epoch 1" in (runs["killed"] / "log.txt").read_text()
    a = torch.load(runs["straight"] / sub / "model.pt", weights_only=False)["model"]
    b = torch.load(runs["killed"] / sub / "model.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_config_files_and_errors(tmp_path):
    yaml = pytest.importorskip("yaml")
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"cam_scales": [1.0, 0.5], "use_grm": False, "seg_lr": 0.5}))
    import argparse

    from grmseg.pipeline.config import add_config_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_config_arguments(p)
    cfg = config_from_args(p.parse_args(["--config", str(f), "--seg-lr", "0.25", "--aspp-rates", "1,2"]))
    assert cfg.cam_scales == (1.0, 0.5) and cfg.use_grm is False and cfg.seg_lr == 0.25 and cfg.aspp_rates == (1, 2)
    with pytest.raises(ValueError, match="unknown config keys"):
        PipelineConfig.from_dict({"no_such_key": 1})
    with pytest.raises(ValueError, match="must be int"):
        PipelineConfig.from_dict({"cls_epochs": "many"})
    with pytest.raises(FileNotFoundError, match="no trained classifier"):
        stages.make_cam(PipelineConfig(run_dir=str(tmp_path / "empty")))


def test_ablation_command_on_tiny_config(tmp_path, capsys):
    cfg_file = tmp_path / "tiny.json"
    cfg_file.write_text(json.dumps({**PipelineConfig.from_dict(tiny_preset()).to_dict(), "num_figures": 0,
                                    "syn_train_images": 16}))
    assert main(["ablation", "--config", str(cfg_file), "--run-dir", str(tmp_path / "abl"), "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    for row in ("| GCN head on | GRM on |", "| GCN head on | GRM off |", "| GCN head off | GRM on |",
                "| GCN head off | GRM off |"):
        assert row in out
    assert (tmp_path / "abl" / "ablation.md").is_file()
    assert (tmp_path / "abl" / "gcn-off-s0" / "seg_nogrm" / "model.pt").is_file()


@pytest.fixture(scope="module")
def odd_voc(tmp_path_factory):
    """The synthetic scenes as a VOC2012 folder: JPEGs and palette PNGs of odd sizes in 61..95, none a multiple
    of 16 (the layout a new user brings)."""
    from grmseg.pipeline.datasets.synthetic import write_layout

    return write_layout(tmp_path_factory.mktemp("voc") / "VOC2012", "voc", train_images=12, val_images=4)


TINY_VOC_FLAGS = ["--width", "4", "--gcn-hidden", "8", "--cls-epochs", "1", "--cls-batch", "4", "--irn-epochs", "1",
                  "--irn-batch", "4", "--irn-radius", "3", "--seg-epochs", "1", "--seg-batch", "4", "--cam-scales",
                  "1.0,0.5", "--rw-steps", "4", "--aff-radius", "3", "--aspp-channels", "8", "--aspp-rates", "1",
                  "--grm-node-dim", "8", "--grm-key-dim", "4", "--num-figures", "2", "--no-progress", "--threads", "1"]


def test_voc_layout_has_odd_sizes_and_voc_labels(odd_voc):
    from grmseg.pipeline.datasets import VOCSegmentation

    ds = VOCSegmentation(odd_voc, "train")
    sizes = {ds[i]["image"].shape[:2] for i in range(len(ds))}
    assert len(sizes) > 3 and all(61 <= h <= 95 and 61 <= w <= 95 and h % 16 and w % 16 for h, w in sizes)
    present = set().union(*(np.unique(ds[i]["mask"]).tolist() for i in range(len(ds))))
    assert present <= {0, 15, 2, 13, 7, 12, 18} and len(present) > 2  # person, bicycle, horse, car, dog, sofa


def test_demo_on_an_odd_size_voc_folder(odd_voc, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["demo", "--dataset", "voc", "--data-root", str(odd_voc), "--run-dir", str(run),
                 *TINY_VOC_FLAGS]) == 0
    res = json.loads((run / "eval" / "eval.json").read_text())
    assert len(res["class_names"]) == 21
    assert res["results"]["segmentation (GRM)"]["images"] == 4 and res["results"]["pseudo mask"]["images"] == 12
    from grmseg.pipeline.datasets import VOCSegmentation

    ds = VOCSegmentation(odd_voc, "train")
    for i in range(len(ds)):
        s = ds[i]
        mask = np.asarray(Image.open(run / "pseudo" / f"{s['id']}.png"))
        assert mask.shape == s["image"].shape[:2]
        assert set(np.unique(mask).tolist()) <= {0, *(np.flatnonzero(s["labels"]) + 1).tolist()}
        cam = load_cam(run / "cams" / f"{s['id']}.npz")
        h, w = s["image"].shape[:2]
        assert cam["cam"].shape[1:] == (-(-h // 4), -(-w // 4)) and cam["high_res"].shape[1:] == (h, w)
    assert "mIoU" in (run / "report.md").read_text()


def test_each_stage_on_an_odd_size_voc_folder(odd_voc, tmp_path, capsys):
    flags = ["--run-dir", str(tmp_path / "run"), "--dataset", "voc", "--data-root", str(odd_voc), *TINY_VOC_FLAGS,
             "--cls-crop-size", "48", "--irn-crop-size", "48", "--seg-crop-size", "40"]
    assert main(["train-cls", *flags, "--cls-crop-size", "0", "--run-dir", str(tmp_path / "nocrop")]) == 2
    assert "set --cls-crop-size" in capsys.readouterr().err
    for stage in ("train-cls", "make-cam", "train-irn", "refine", "train-seg", "eval"):
        assert main([stage, *flags]) == 0
    res = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    assert set(res["results"]) == {"CAM", "pseudo mask", "segmentation (GRM)"}  # eval_crf is off by default


def test_affinity_net_stage(demo_run, tmp_path, capsys):
    import shutil

    from grmseg.pipeline.affinity_net import affinity_loss
    from grmseg.pipeline.confident_regions import confident_labels

    lab = confident_labels(np.array([2, 5]), np.array([[[0.9, 0.3], [0.0, 0.0]], [[0.1, 0.95], [0.02, 0.6]]],
                                                      np.float32), conf_fg=0.5, conf_bg=0.05)
    assert lab.tolist() == [[2, 5], [0, 5]]
    feat = torch.randn(2, 4, 6, 7, requires_grad=True)
    labels = torch.randint(0, 3, (2, 6, 7))
    labels[0, 0] = 255
    loss, counts = affinity_loss(feat, labels, 3)
    loss.backward()
    assert loss.item() > 0 and feat.grad.abs().sum() > 0 and min(counts.values()) > 0
    run, _ = demo_run
    other = tmp_path / "run"
    shutil.copytree(run / "cls", other / "cls")
    shutil.copytree(run / "cams", other / "cams")
    flags = ["--config", str(run / "config.json"), "--run-dir", str(other), "--aff-source", "affnet",
             "--aff-epochs", "1", "--aff-dim", "8"]
    assert main(["train-aff", *flags]) == 0
    assert main(["refine", *flags]) == 0
    assert (other / "aff" / "model.pt").is_file()
    assert len(list((other / "pseudo").glob("*.png"))) == len(list((run / "pseudo").glob("*.png")))


def test_later_stages_continue_with_the_runs_settings(demo_run, tmp_path):
    import argparse

    from grmseg.pipeline.config import add_config_arguments, config_from_args

    run, _ = demo_run
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    cfg = config_from_args(p.parse_args(["--run-dir", str(run)]))
    saved = PipelineConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert cfg == saved.replace(run_dir=str(run))  # the tiny run's settings, not the defaults
    assert config_from_args(p.parse_args(["--run-dir", str(run), "--rw-steps", "3"])).rw_steps == 3
    assert config_from_args(p.parse_args(["--run-dir", str(tmp_path / "new")])).syn_size == PipelineConfig().syn_size
