"""CMakeLists.txt (the libtorch build for C++ users) configures against the installed torch.

Only the configure step runs here (seconds); compiling the library takes minutes on a small machine:
`cmake -S . -B build-cmake -DCMAKE_PREFIX_PATH=$(python -c 'import torch;print(torch.utils.cmake_prefix_path)')
-DGRMSEG_WITH_CUDA=OFF && cmake --build build-cmake -j2` does the whole build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _cuda_toolkit_present() -> bool:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    return shutil.which("nvcc") is not None or (Path(home) / "bin" / "nvcc").exists()


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
@pytest.mark.skipif(
    torch.version.cuda is not None and not _cuda_toolkit_present(),
    reason="torch is a CUDA build, and its CMake config needs a CUDA toolkit, which is not installed",
)
def test_cmake_configures_cpu_only(tmp_path):
    cmd = [
        "cmake",
        "-S",
        str(ROOT),
        "-B",
        str(tmp_path / "build"),
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        "-DGRMSEG_WITH_CUDA=OFF",
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "grmseg_ops: CUDA kernels OFF" in proc.stdout
    assert (tmp_path / "build" / "CMakeCache.txt").exists()
