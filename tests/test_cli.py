"""The command line: ``layer-demo`` runs one training step and reports what ran where; ``demo`` is the pipeline
(tested in tests/test_pipeline_stages.py)."""

import pytest

from grmseg.cli import main
from grmseg.demo import kernels_run, run_demo


def test_demo_runs_one_training_step(capsys):
    pytest.importorskip("torchvision", reason="torchvision is not installed (the GPU machine has none)")
    result = run_demo(batch=2, size=33)
    out = capsys.readouterr().out
    assert result["loss"] > 0
    assert set(result["backends"]) == set(kernels_run("cpu"))
    assert "grm_project_keep_forward" in result["backends"]  # the layer keeps its assignments on the CPU
    assert all(ms > 0 for ms in result["timings_ms"].values())
    for kernel, backend in result["backends"].items():
        assert f"{kernel:<24} {backend}" in out
    assert "backends on this machine" in out


def test_layer_demo_command(capsys):
    pytest.importorskip("torchvision", reason="torchvision is not installed (the GPU machine has none)")
    assert main(["layer-demo", "--batch", "2", "--size", "33"]) == 0
    out = capsys.readouterr().out
    assert "one training step: loss" in out and "backends on this machine" in out


def test_pipeline_commands_are_listed(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("train-cls", "make-cam", "train-irn", "train-aff", "refine", "train-seg", "eval", "demo", "ablation",
                    "layer-demo", "synthetic-data"):
        assert command in out


def test_info_command(capsys):
    assert main(["info"]) == 0
    assert "reference" in capsys.readouterr().out


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        main(["nonsense"])


def test_demo_rejects_a_batch_of_one():
    with pytest.raises(ValueError, match="batch must be >= 2"):
        run_demo(batch=1)


def test_synthetic_data_command_writes_a_coco_folder(tmp_path, capsys):
    pytest.importorskip("PIL", reason="Pillow is not installed")
    from grmseg.pipeline.datasets import COCOSegmentation

    out = tmp_path / "coco"
    assert main(["synthetic-data", "--out", str(out), "--layout", "coco", "--train-images", "3", "--val-images", "2"]) == 0
    assert "--dataset coco" in capsys.readouterr().out
    ds = COCOSegmentation(out, "val")
    assert len(ds) == 2 and ds.num_classes == 81
    s = ds[0]
    assert s["image"].shape[:2] == s["mask"].shape and all(v % 16 for v in s["mask"].shape)
    assert set(s["mask"].ravel().tolist()) <= {0, 1, 2, 3, 17, 18, 58}


def test_synthetic_data_command_writes_the_context_scenes(tmp_path, capsys):
    pytest.importorskip("PIL", reason="Pillow is not installed")
    import numpy as np

    from grmseg.pipeline.datasets import VOCSegmentation

    out = tmp_path / "voc"
    argv = ["synthetic-data", "--out", str(out), "--scenes", "context", "--train-images", "6", "--val-images", "1"]
    assert main(argv) == 0
    assert "context images" in capsys.readouterr().out
    ds = VOCSegmentation(out, "train")
    labels = np.stack([ds[i]["labels"] for i in range(len(ds))]) != 0  # [N, 20]: VOC classes 1..20
    # background, person, cat, dog, sofa, horse, sheep (VOC 0, 15, 8, 12, 18, 13, 17) and nothing else
    assert set(np.flatnonzero(labels.any(axis=0)) + 1) <= {15, 8, 12, 18, 13, 17}
    assert not (labels[:, 8 - 1] & labels[:, 12 - 1]).any()  # cat and dog never together
