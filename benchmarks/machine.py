"""Facts about the machine a benchmark ran on: device name, versions, CPU count, date, peak bandwidth."""

from __future__ import annotations

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
