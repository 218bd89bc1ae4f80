"""Nothing hidden, nothing lost in the pipeline: checked settings, one-line errors that name the key or file,
damaged files redone, temp files of killed writers removed, no run deleted without --fresh."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("PIL", reason="Pillow is not installed (the GPU machine has none)")

from grmseg.cli import main
from grmseg.pipeline.config import PipelineConfig, tiny_preset


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("tiny") / "run"
    cfg = {**PipelineConfig.from_dict(tiny_preset()).to_dict(), "run_dir": str(run), "syn_train_images": 8,
           "syn_val_images": 4, "num_figures": 0}
    (run.parent / "tiny.json").write_text(json.dumps(cfg))
    assert main(["demo", "--config", str(run.parent / "tiny.json")]) == 0
    return run


@pytest.mark.parametrize("data, match", [
    ({"cls_epochs": -3}, "'cls_epochs' must be >= 1"),
    ({"cls_epochs": True}, "'cls_epochs' must be int"),
    ({"rw_beta": float("nan")}, "'rw_beta' must be a finite number"),
    ({"cam_scales": "1.0,abc"}, "'cam_scales' must be float"),
    ({"cam_scales": []}, "'cam_scales' must be a non-empty list"),
    ({"scale_range": "1.5,0.5"}, "'scale_range' must be two factors"),
    ({"bg_threshold": 2}, "'bg_threshold' must be >= 0 and <= 1"),
    ({"device": "tpu"}, "'device' must be one of"),
    ({"aff_source": "magic"}, "'aff_source' must be one of"),
    ({"backbone": "vgg"}, "'backbone' must be one of"),
    ({"use_grm": "maybe"}, "'use_grm' must be true or false"),
])
def test_settings_are_checked(data, match):
    with pytest.raises(ValueError, match=match):
        PipelineConfig.from_dict(data)
    with pytest.raises(ValueError, match=match):
        PipelineConfig(**data) if not isinstance(data.get("cam_scales"), str) else PipelineConfig.from_dict(data)
    assert PipelineConfig(device="cuda:1").device == "cuda:1"


def test_bad_input_is_one_line_exit_2_and_debug_shows_the_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"cls_epochs": 3,')
    cases = [
        (["train-cls", "--config", str(bad)], "is not valid JSON"),
        (["train-cls", "--run-dir", str(tmp_path / "r"), "--cam-scales", "1.0,abc"], "'cam_scales' must be float"),
        (["make-cam", "--run-dir", str(tmp_path / "empty")], "no trained classifier"),
        (["train-cls", "--dataset", "voc", "--data-root", str(tmp_path / "nowhere"), "--run-dir",
          str(tmp_path / "voc")], "does not exist"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "voc").exists()  # a missing dataset folder makes no run folder
    with pytest.raises(ValueError, match="is not valid JSON"):
        main(["--debug", "train-cls", "--config", str(bad)])


def test_help_names_every_flag_and_shows_the_demos_own_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "``" not in out
    assert "(default: runs/demo)" in out and "(default: 15)" in out  # run_dir and cls_epochs of the demo
    with pytest.raises(SystemExit):
        main(["train-cls", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for f in PipelineConfig.__dataclass_fields__.values():
        assert f.metadata["help"], f.name
        assert f.metadata["help"].split("(")[0].strip()[:30] in out, f.name
    assert "{irn,affnet,classifier}" in out


def test_damaged_outputs_are_redone_and_temp_files_removed(tiny_run, capsys):
    run = tiny_run
    pseudo = sorted((run / "pseudo").glob("*.png"))
    good = pseudo[0].read_bytes()
    pseudo[0].write_bytes(good[: len(good) // 2])  # a mask truncated by a kill or a full disk
    cams = sorted((run / "cams").glob("*.npz"))
    cams[0].write_bytes(cams[0].read_bytes()[:40])
    stale = run / "pseudo" / ".x.png.999999999.tmp"
    stale.write_bytes(b"left by a killed writer")
    assert main(["make-cam", "--run-dir", str(run)]) == 0
    assert main(["refine", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "1 new CAM files" in out and "1 new pseudo masks" in out and "damaged" in out
    assert pseudo[0].read_bytes() == good and not stale.exists()


def test_truncated_model_is_not_done_already(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    model = run / "seg" / "model.pt"
    model.write_bytes(model.read_bytes()[:1000])
    assert main(["train-seg", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "corrupt checkpoint" in err and "model.pt" in err and "done already" not in err


def test_demo_resumes_and_never_deletes_without_fresh(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = sorted(p.name for p in (run / "cams").iterdir())
    assert main(["demo", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "done already" in out and sorted(p.name for p in (run / "cams").iterdir()) == before
    (run / "cams" / before[0]).unlink()
    assert main(["demo", "--run-dir", str(run), "--fresh"]) == 0
    assert (run / "cls" / "model.pt").is_file()  # trained again from scratch, all of it
    assert "[cls] epoch 1/1" in (run / "log.txt").read_text()


def test_missing_ground_truth_is_reported(tmp_path, capsys):
    from grmseg.pipeline.datasets.synthetic import write_layout

    root = write_layout(tmp_path / "voc", "voc", train_images=6, val_images=3)
    (root / "SegmentationClass" / "syn_val_00001.png").unlink()
    labels = {f"syn_val_{i:05d}": ["person"] for i in range(3)}  # image labels of the val images without masks
    labels.update({f"syn_train_{i:05d}": ["person"] for i in range(6)})
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    settings = {
        "run_dir": tmp_path / "run", "dataset": "voc", "data_root": root, "cls_labels": tmp_path / "labels.json",
        "width": 4, "gcn_hidden": 8, "cls_epochs": 1, "cls_batch": 3, "irn_epochs": 1, "irn_batch": 3,
        "irn_radius": 3, "aff_radius": 3, "rw_steps": 2, "seg_epochs": 1, "seg_batch": 3, "aspp_channels": 8,
        "aspp_rates": 1, "grm_node_dim": 8, "grm_key_dim": 4, "num_figures": 0, "cls_crop_size": 48,
        "irn_crop_size": 48, "seg_crop_size": 48, "threads": 1}
    flags = [arg for k, v in settings.items() for arg in (f"--{k.replace('_', '-')}", str(v))] + ["--no-progress"]
    assert main(["demo", *flags]) == 0
    assert "1 image(s) of 'val' have no ground-truth mask" in capsys.readouterr().out
    res = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())["results"]
    seg = res["segmentation (GRM)"]
    assert seg["images"] == 2 and seg["unscored_images"] == 1 and res["CAM"]["unscored_images"] == 0
    assert np.isfinite(seg["miou"])


def test_other_settings_are_refused_unless_forced(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["train-cls", "--run-dir", str(run), "--cls-epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "made with other settings (cls_epochs: 1 -> 3)" in err and "--force" in err
    assert main(["refine", "--run-dir", str(run), "--rw-steps", "5", "--bg-threshold", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "pseudo" in err and "rw_steps: 8 -> 5" in err and "bg_threshold: 0.2 -> 0.3" in err
    assert main(["refine", "--run-dir", str(run), "--rw-steps", "5", "--force"]) == 0
    assert "--force continues" in capsys.readouterr().out
    # a settings change that does not concern the stage is no reason to refuse it
    assert main(["train-cls", "--run-dir", str(run), "--rw-steps", "5"]) == 0


def test_a_checkpoint_is_resumed_only_with_its_settings(tiny_run, tmp_path, monkeypatch, capsys):
    from conftest import killed_after_first_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "config.json", run / "config.json")
    killed_after_first_checkpoint(monkeypatch, ["train-cls", "--run-dir", str(run), "--cls-epochs", "2"])
    assert main(["train-cls", "--run-dir", str(run), "--cls-epochs", "2", "--cls-lr", "0.5"]) == 2
    assert "checkpoint.pt' was made with other settings (cls_lr: 0.05 -> 0.5)" in capsys.readouterr().err
    assert main(["train-cls", "--run-dir", str(run), "--cls-epochs", "2"]) == 0, capsys.readouterr().err
