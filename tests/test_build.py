"""CMakeLists.txt (the libtorch build for C++ users) configures against the installed torch.

Only the configure step runs here (seconds); compiling the library takes minutes on a small machine:
`cmake -S . -B build-cmake -DCMAKE_PREFIX_PATH=$(python -c 'import torch;print(torch.utils.cmake_prefix_path)')
-DGRMSEG_WITH_CUDA=OFF && cmake --build build-cmake -j2` does the whole build.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _cuda_toolkit_present() -> bool:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    return shutil.which("nvcc") is not None or (Path(home) / "bin" / "nvcc").exists()


needs_cmake = pytest.mark.skipif(
    shutil.which("cmake") is None or (torch.version.cuda is not None and not _cuda_toolkit_present()),
    reason="cmake is not installed, or torch is a CUDA build whose CMake config needs a CUDA toolkit, not installed",
)


def _cmake_configure(src: Path, build: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = ["cmake", "-S", str(src), "-B", str(build), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
           *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


@needs_cmake
def test_cmake_configures_cpu_only(tmp_path):
    proc = _cmake_configure(ROOT, tmp_path / "build", "-DGRMSEG_WITH_CUDA=OFF")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "grmseg_ops: CUDA kernels OFF" in proc.stdout
    assert (tmp_path / "build" / "CMakeCache.txt").exists()


@needs_cmake
def test_find_package_grmseg_from_a_cpp_project(tmp_path):
    """A C++ project finds grmseg's CMake package (from the build tree here; the install tree has the same files)
    with the version of grmseg/_version.py, the target grmseg::grmseg_ops and the header <grmseg/ops.h>."""
    version = re.search(r'^__version__ = "([^"]+)"', (ROOT / "grmseg" / "_version.py").read_text(), re.MULTILINE).group(1)
    build = tmp_path / "grmseg-build"
    proc = _cmake_configure(ROOT, build, "-DGRMSEG_WITH_CUDA=OFF")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("grmsegConfig.cmake", "grmsegConfigVersion.cmake", "grmsegTargets.cmake"):
        assert (build / name).is_file(), name
    assert f'set(PACKAGE_VERSION "{version}")' in (build / "grmsegConfigVersion.cmake").read_text()
    consumer = tmp_path / "consumer"
    consumer.mkdir()
    (consumer / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(consumer LANGUAGES CXX)\n"
        f"find_package(grmseg {version} REQUIRED CONFIG)\n"
        "get_target_property(_inc grmseg::grmseg_ops INTERFACE_INCLUDE_DIRECTORIES)\n"
        'message(STATUS "grmseg ${grmseg_VERSION} include ${_inc}")\n'
    )
    proc = _cmake_configure(consumer, tmp_path / "consumer-build", f"-Dgrmseg_DIR={build}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    match = re.search(r"grmseg (\S+) include (\S+)", proc.stdout)
    assert match and match.group(1) == version
    assert (Path(match.group(2)) / "grmseg" / "ops.h").is_file()
