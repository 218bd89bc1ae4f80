"""The command line: ``layer-demo`` runs one training step and reports what ran where; ``demo`` is the pipeline
(tested in tests/test_pipeline_stages.py)."""

import pytest

from grmseg.cli import main
from grmseg.demo import GRM_KERNELS, run_demo


def test_demo_runs_one_training_step(capsys):
    pytest.importorskip("torchvision", reason="torchvision is not installed (the GPU machine has none)")
    result = run_demo(batch=2, size=33)
    out = capsys.readouterr().out
    assert result["loss"] > 0
    assert set(result["backends"]) == set(GRM_KERNELS)
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
    for command in ("train-cls", "make-cam", "refine", "train-seg", "eval", "demo", "ablation", "layer-demo"):
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
