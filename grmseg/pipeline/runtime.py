"""Run-time plumbing of the stages: run folder, log file, progress bars, torch.distributed, checkpoints."""

from __future__ import annotations

import logging
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

LOGGER_NAME = "grmseg.pipeline"


# ----------------------------------------------------------------------------------------------- distributed
def dist_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` without it)."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by torchrun (gloo on the CPU, nccl on CUDA). Returns (rank, world)."""
    rank, world, _ = dist_env()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (rank, world)


def is_main() -> bool:
    """True on rank 0 (and without torch.distributed)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over processes in place (no-op without a process group); returns ``t``."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA (this process's local rank) when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("config key 'device': 'cuda' requested but no CUDA device is visible (use cpu or auto)")
        if dev.index is None:
            dev = torch.device("cuda", dist_env()[2])
        torch.cuda.set_device(dev)
    return dev


# ------------------------------------------------------------------------------------------------ logging
class _StdoutHandler(logging.StreamHandler):
    """Writes to the current ``sys.stdout`` (which may be replaced after set-up, e.g. by pytest)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # the base class assigns it; always use the current sys.stdout
        pass


def get_logger(run_dir: str | os.PathLike | None = None) -> logging.Logger:
    """The pipeline logger; with ``run_dir``, also logs (every rank, tagged) to ``<run_dir>/log.txt``."""
    log = logging.getLogger(LOGGER_NAME)
    log.setLevel(logging.INFO)
    log.propagate = False
    rank = dist_env()[0]
    if not any(isinstance(h, _StdoutHandler) for h in log.handlers):
        h = _StdoutHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        h.addFilter(lambda record: dist_env()[0] == 0)
        log.addHandler(h)
    if run_dir is not None:
        path = str(Path(run_dir) / "log.txt")
        for h in list(log.handlers):
            if isinstance(h, logging.FileHandler) and h.baseFilename != os.path.abspath(path):
                log.removeHandler(h)
                h.close()
        if not any(isinstance(h, logging.FileHandler) for h in log.handlers):
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(path, encoding="utf-8")
            fh.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(message)s"))
            log.addHandler(fh)
    return log


def close_log(run_dir: str | os.PathLike) -> None:
    """Close the log file of ``run_dir`` (before the folder is deleted; the next :func:`get_logger` reopens it)."""
    path = os.path.abspath(str(Path(run_dir) / "log.txt"))
    log = logging.getLogger(LOGGER_NAME)
    for h in list(log.handlers):
        if isinstance(h, logging.FileHandler) and h.baseFilename == path:
            log.removeHandler(h)
            h.close()


def progress(iterable: Iterable, total: int | None = None, desc: str = "", enabled: bool = True) -> Iterable:
    """A tqdm progress bar on rank 0 (stderr, when it is a terminal); the plain iterable elsewhere or when
    disabled."""
    if not enabled or not is_main():
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return iterable
    # disable=None: no bar when stderr is not a terminal (CI logs stay readable)
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, disable=None)


# --------------------------------------------------------------------------------------------- checkpoints
def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file, then ``os.replace``: a crash never leaves a half-written file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, p)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when there is none; ValueError naming the file when it is corrupt
    (e.g. truncated by a full disk)."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise ValueError(f"corrupt checkpoint {str(p)!r} ({type(exc).__name__}: {str(exc)[:120]}): delete it to "
                         "redo its stage") from None


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """True when ``path`` is a whole torch checkpoint (every zip member reads back with a good CRC); False when
    there is no file. ValueError when the file is there but damaged."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"corrupt checkpoint {str(p)!r} ({exc}): delete it to redo its stage") from None
    if bad is not None:
        raise ValueError(f"corrupt checkpoint {str(p)!r} (member {bad} fails its CRC): delete it to redo its stage")
    return True


def remove_stale_temp_files(folder: str | os.PathLike) -> int:
    """Delete the temp files (``.<name>.<pid>.tmp*``) that a killed writer left in ``folder``; returns how many.
    Only on rank 0, and only of processes that are gone."""
    p = Path(folder)
    if not p.is_dir() or not is_main():
        return 0
    removed = 0
    for tmp in p.glob(".*.tmp*"):
        m = re.search(r"\.(\d+)\.tmp", tmp.name)
        if m and _pid_alive(int(m.group(1))):
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
