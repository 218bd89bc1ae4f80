"""Limits and argument checks that are the same for every backend (checked before any work is done)."""

from __future__ import annotations

import pytest
import torch

from grmseg import GRM, ops
from grmseg.reference import MAX_RADIUS, affinity_offsets

BACKENDS = ["reference", "csrc"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["local_affinity", "boundary_affinity"])
def test_radius_limit_is_checked_first(op, backend):
    x = torch.rand(1, 1, 6, 7)
    fn = getattr(ops, op)
    for radius in (0, MAX_RADIUS + 1, 100000):  # 100000 used to build its offset list first: a hang
        with pytest.raises(ValueError, match=rf"argument 'radius' must be an int in \[1, {MAX_RADIUS}\]"):
            fn(x, radius, backend=backend)
    with pytest.raises(TypeError, match="argument 'radius' must be an int"):
        fn(x, 2.5, backend=backend)
    assert fn(x, MAX_RADIUS, backend=backend).shape[1] == len(affinity_offsets(MAX_RADIUS))


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_walk_beta_and_steps(backend):
    cam, aff = torch.rand(1, 2, 5, 6), torch.rand(1, 4, 5, 6)
    for beta in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ValueError, match="argument 'beta'"):
            ops.random_walk(cam, aff, beta, 3, backend=backend)
    for steps in (-1, 2**63, 10**9):
        with pytest.raises(ValueError, match=r"argument 'steps' must be an int in \[0, 65536\]"):
            ops.random_walk(cam, aff, 8.0, steps, backend=backend)
    with pytest.raises(ValueError, match="no radius's offset count"):
        ops.random_walk(cam, torch.rand(1, 6618, 5, 6), 8.0, 3, backend=backend)


def test_clear_errors_for_wrong_types_and_devices():
    feat, weight = torch.rand(2, 3, 4, 5), torch.rand(6, 3)
    with pytest.raises(TypeError, match="argument 'labels' must be a torch.Tensor"):
        ops.cam(feat, weight, [[1, 0, 0, 0, 0, 0]] * 2)
    with pytest.raises(ValueError, match="argument 'eps' must be a finite number > 0"):
        GRM(8, 3, eps="a")
    grm = GRM(8, 3).to("meta")
    with pytest.raises(ValueError, match="GRM: argument 'x' must be on the device"):
        grm(torch.rand(1, 8, 4, 4))


def test_a_missing_optional_package_names_its_extra(monkeypatch, tmp_path):
    import importlib

    from grmseg.pipeline.datasets import load_image

    real_import = importlib.import_module

    def no_pil(name, *args, **kwargs):
        if name.split(".")[0] == "PIL":
            raise ModuleNotFoundError("No module named 'PIL'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_pil)
    (tmp_path / "x.jpg").write_bytes(b"")
    with pytest.raises(ImportError, match=r"reading images needs the package 'pillow'.*pip install --no-build-isolation \"\.\[pipeline\]\""):
        load_image(tmp_path / "x.jpg")
    from grmseg.pipeline.datasets.synthetic import write_layout

    with pytest.raises(ImportError, match=r"writing a dataset folder needs the package 'pillow'"):
        write_layout(tmp_path / "voc", "voc", train_images=1, val_images=1)
