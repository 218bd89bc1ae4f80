"""Test set-up: Triton runs in its interpreter when no GPU is visible (must be set before triton is imported)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _cpu_levels() -> tuple[str, ...]:
    try:
        from grmseg import _ext
    except Exception:  # noqa: BLE001 - collection must not fail here; the tests themselves report it
        return ("default",)
    return _ext.cpu_capabilities() or ("default",)


@pytest.fixture(params=_cpu_levels())
def cpu_level(request):
    """Runs a test once per instruction-set level of the CPU kernels that this machine and build support."""
    from grmseg import _ext

    if not _ext.built():
        yield request.param
        return
    previous = _ext.set_cpu_capability(request.param)
    try:
        yield request.param
    finally:
        _ext.set_cpu_capability(previous)


class Killed(Exception):
    """Raised by :func:`killed_after_first_checkpoint` in place of a kill -9."""


def killed_after_first_checkpoint(monkeypatch, argv):
    """Run the CLI ``argv`` and 'kill' it right after it writes its first epoch checkpoint."""
    import pytest

    from grmseg.cli import main
    from grmseg.pipeline import runtime as rt

    real_save = rt.save_atomic

    def save_then_die(obj, path):
        real_save(obj, path)
        if str(path).endswith("checkpoint.pt"):
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(rt, "save_atomic", save_then_die)
        with pytest.raises(Killed):
            main(argv)
