"""Facts about the machine a benchmark ran on: device name, versions, CPU count, date, peak bandwidth."""

from __future__ import annotations

import ctypes
import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

import grmseg

# Peak DRAM bandwidth in bytes/s by device-name tokens, first match wins (more specific names first).
PEAK_BANDWIDTH: tuple[tuple[tuple[str, ...], float], ...] = (
    (("GH200",), 4.0e12),
    (("H200",), 4.8e12),
    (("H100", "NVL"), 3.9e12),
    (("H100", "PCIE"), 2.0e12),
    (("H100",), 3.35e12),
    (("A100", "80GB", "PCIE"), 1.935e12),
    (("A100", "80GB"), 2.039e12),
    (("A100",), 1.555e12),
    (("L40S",), 0.864e12),
    (("L4",), 0.3e12),
    (("A10G",), 0.6e12),
    (("T4",), 0.32e12),
    (("RTX 4090",), 1.008e12),
)


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` for CUDA, the CPU model for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_bandwidth(device: torch.device) -> float | None:
    """The device's peak memory bandwidth in bytes/s when known (CUDA devices in the table), else None."""
    if device.type != "cuda":
        return None
    name = device_name(device).upper()
    for tokens, bw in PEAK_BANDWIDTH:
        if all(t in name for t in tokens):
            return bw
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info(device: torch.device, peak_bw: float | None) -> dict[str, Any]:
    """Everything a reader needs to place a result: device, versions, CPU count, threads, date, commit."""
    return {
        "device": str(device),
        "device_name": device_name(device),
        "peak_bandwidth_gbps": None if peak_bw is None else peak_bw / 1e9,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "grmseg": getattr(grmseg, "__version__", None),
        "git_commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backends": {name: str(status) for name, status in grmseg.ops.backends().items()},
        "cpu_kernels": grmseg._ext.cpu_capability_report() if grmseg._ext.built() else None,
    }


#: What the harness does with the CPU allocator: ``retain`` calls :func:`retain_freed_memory`, ``default`` nothing.
MALLOC_MODES = ("retain", "default")

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's largest allowed M_MMAP_THRESHOLD on 64-bit systems


def retain_freed_memory() -> str | None:
    """Make glibc's malloc keep freed memory for reuse (no unmapping, no trimming) for the rest of the process.

    By default glibc serves large blocks (each op's outputs and temporaries: megabytes) with mmap and returns them
    to the OS on free, so every call faults its buffers in afresh: a cost of the allocator, paid per call and most
    by the code that allocates most (on a 2-core Xeon it was ~20% of the eager reference GRM layer), and one that
    depends on what ran before. With this, CPU rows time the kernels and not the page faults. Returns what was
    set (for the report), or None where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if platform.libc_ver()[0] != "glibc":
        return None
    if not (mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)):
        return None
    return (f"glibc malloc keeps freed memory (M_MMAP_THRESHOLD {_MMAP_THRESHOLD_MAX >> 20} MiB, "
            "M_TRIM_THRESHOLD 2 GiB): buffers are reused, not faulted in afresh each call")
