"""Test set-up: Triton runs in its interpreter when no GPU is visible (must be set before triton is imported), and
torch.compile's caches are kept per version of the op layer (see below)."""

import hashlib
import os
import pathlib
import tempfile

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _op_layer_digest() -> str:
    """A digest of grmseg/ops/*.py: the custom ops, their schemas and their autograd formulas."""
    digest = hashlib.sha256()
    for path in sorted((pathlib.Path(__file__).parents[1] / "grmseg" / "ops").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# torch.compile's on-disk caches key a compiled backward on the forward graph, which names a custom op but not its
# autograd formula: after a change to a backward (its arguments, say), a warm cache replays the old one. One
# cache directory per version of the op layer keeps the cache warm from run to run and never stale.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"torchinductor-grmseg-{_op_layer_digest()}")
)

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
