"""Build grmseg's compiled kernels: one extension module, ``grmseg._C``.

The CPU sources (``csrc/*.cpp``, ``csrc/cpu/*.cpp``) are always built. The CUDA sources (``csrc/cuda/*.cu``)
are built when PyTorch is a CUDA build and ``nvcc`` is found; no GPU is needed to compile them.

Environment variables:
    GRMSEG_NO_CUDA=1        never build the CUDA part.
    GRMSEG_DEBUG=1          keep debug info in ``_C`` (release builds link with ``--strip-debug``: 19 MB -> 6 MB).
    GRMSEG_PLAIN_VERSION=1  the version without the local ``+pt<torch>.<cu130|cpu>`` part (see below).
    FORCE_CUDA=1            the CUDA part must be built: a missing nvcc or a CPU-only torch is an error.
    CUDA_HOME / CUDA_PATH   the CUDA toolkit (default: /usr/local/cuda, else the toolkit of the nvcc on PATH,
                            wrapper scripts resolved, else PyTorch's own guess).
    TORCH_CUDA_ARCH_LIST    GPU architectures (default with no visible GPU: "8.0;9.0+PTX"; with one: its own).
    MAX_JOBS                parallel compile jobs.

Metadata lives in ``pyproject.toml``; this file owns only the extension. Objects are kept under ``build/``
(even for ``pip install -e .``, whose own build folder is temporary), so a rebuild recompiles only what
changed. The module records the torch version it was built against; ``grmseg._ext`` warns on a mismatch.

The version is written once, in ``grmseg/_version.py``. The binary is tied to the torch it was built against
(its C++ ABI), although the wheel's tag says abi3 (one binary for every CPython >= 3.10): so the package version
carries that torch as a local part, ``0.1.0+pt2.14.1.cu130`` (``.cpu`` without the CUDA part), as torch's own
wheels do, and ``import grmseg`` fails loudly with the rebuild command when ``_C`` is present but does not load.

``csrc/cuda/grm_fused_kernels.cuh`` (the device code the CuPy NVRTC fallback compiles at run time) is copied into
the package as ``grmseg/_cuda/``, so an installed wheel has it.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
BUILD_DIR = os.path.join(ROOT, "build")
GENERATED_DIR = os.path.join(BUILD_DIR, "grmseg-generated")
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"  # A100 and H100/H200 natively; PTX for anything newer
RUNTIME_CUDA_SOURCES = ("csrc/cuda/grm_fused_kernels.cuh",)  # compiled at run time by grmseg.ops.impl.cupy_nvrtc
PACKAGE_CUDA_DIR = os.path.join("grmseg", "_cuda")  # where an installed package keeps them


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _log(msg: str) -> None:
    print(f"grmseg setup: {msg}", file=sys.stderr)


def _is_toolkit(home: str | None) -> bool:
    return (
        bool(home)
        and os.path.isfile(os.path.join(home, "bin", "nvcc"))
        and os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))
    )


def _site_dirs() -> list[str]:
    """Folders that may hold the ``nvidia/*`` pip wheels: beside torch first, then every site folder."""
    dirs = []
    try:
        import torch

        dirs.append(os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__))))
    except ImportError:
        pass
    for key in ("purelib", "platlib"):
        dirs.append(sysconfig.get_paths()[key])
    try:
        import site

        dirs.extend(site.getsitepackages())
        dirs.append(site.getusersitepackages())
    except (AttributeError, ImportError):
        pass
    out: list[str] = []
    for d in dirs:
        d = os.path.realpath(d)
        if d not in out and os.path.isdir(d):
            out.append(d)
    return out


def _toolkit_of_nvcc_on_path() -> str | None:
    """The toolkit of the nvcc on PATH, through symlinks and wrapper scripts (``exec /opt/cuda/bin/nvcc "$@"``)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    real = os.path.realpath(nvcc)
    home = os.path.dirname(os.path.dirname(real))
    if _is_toolkit(home):
        return home
    try:
        if os.path.getsize(real) < 64 * 1024:
            with open(real, encoding="utf-8", errors="ignore") as f:
                text = f.read()
            for match in re.finditer(r"(/[^\s\"';&|]+)/bin/nvcc\b", text):
                candidate = os.path.realpath(match.group(1))
                if _is_toolkit(candidate):
                    return candidate
    except OSError:
        pass
    return None


def find_cuda_home() -> str | None:
    """The CUDA toolkit to compile with: $CUDA_HOME/$CUDA_PATH, /usr/local/cuda, nvcc's own, pip's, or None."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        env = os.environ.get(var)
        if env:
            if _is_toolkit(env):
                return env
            _log(f"${var}={env} has no bin/nvcc and include/cuda_runtime.h; looking elsewhere")
    if _is_toolkit("/usr/local/cuda"):
        return "/usr/local/cuda"
    home = _toolkit_of_nvcc_on_path()
    if home:
        return home
    for site_dir in _site_dirs():  # the nvidia-cuda-nvcc wheel
        for home in sorted(glob.glob(os.path.join(site_dir, "nvidia", "cu*"))):
            if _is_toolkit(home):
                return home
    return None


def wheel_include_dirs() -> list[str]:
    """Every ``nvidia/*/include`` of the CUDA pip wheels (cuBLAS, cuSPARSE, ... headers torch's headers use)."""
    out: list[str] = []
    for site_dir in _site_dirs():
        for inc in sorted(glob.glob(os.path.join(site_dir, "nvidia", "*", "include"))):
            if inc not in out:
                out.append(inc)
    # the toolkit-wide one (nvidia/cu13 for CUDA 13) first
    out.sort(key=lambda d: 0 if os.path.basename(os.path.dirname(d)).startswith("cu") else 1)
    return out


def nvcc_version(cuda_home: str) -> str | None:
    """The ``X.Y`` release of ``<cuda_home>/bin/nvcc``, or None when it does not run."""
    try:
        nvcc = os.path.join(cuda_home, "bin", "nvcc")
        out = subprocess.run([nvcc, "--version"], check=False, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def _write_if_changed(path: str, text: str) -> None:
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _c_string(value: str) -> str:
    return json.dumps(value.encode("ascii", "replace").decode("ascii"))


def base_version() -> str:
    """The version written in ``grmseg/_version.py`` (read as text: the package is not importable here)."""
    with open(os.path.join(ROOT, "grmseg", "_version.py")) as f:
        match = re.search(r'^__version__ = "([^"]+)"', f.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError("grmseg/_version.py has no line __version__ = \"...\"")
    return match.group(1)


def package_version(torch_version: str, with_cuda: bool, cuda_version: str | None) -> str:
    """``base_version()`` with the torch this build is tied to as its local part: ``0.1.0+pt2.14.1.cu130``."""
    version = base_version()
    if _flag("GRMSEG_PLAIN_VERSION"):
        return version
    public = torch_version.split("+")[0]
    accel = "cu" + (cuda_version or "").replace(".", "") if with_cuda and cuda_version else "cpu"
    return f"{version}+pt{public}.{accel}"


class BuildPy(build_py):
    """build_py that also puts the run-time CUDA sources into the package (``grmseg/_cuda``)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads them from csrc/cuda of the checkout
            return
        target = os.path.join(self.build_lib, PACKAGE_CUDA_DIR)
        os.makedirs(target, exist_ok=True)
        for rel in RUNTIME_CUDA_SOURCES:
            self.copy_file(os.path.join(ROOT, rel), os.path.join(target, os.path.basename(rel)))


def _sources(*patterns: str) -> list[str]:
    out: list[str] = []
    for pattern in patterns:
        out.extend(sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern))))
    return out


def _extensions_and_cmdclass():
    # CUDA_HOME must be in the environment before torch.utils.cpp_extension is imported (it reads it then).
    import torch

    with_cuda, skip_reason, cuda_home = False, "", None
    if _flag("GRMSEG_NO_CUDA"):
        skip_reason = "GRMSEG_NO_CUDA=1 at build time"
    elif torch.version.cuda is None:
        skip_reason = f"torch {torch.__version__} is not a CUDA build"
    else:
        cuda_home = find_cuda_home()
        version = nvcc_version(cuda_home) if cuda_home else None
        if cuda_home is None:
            skip_reason = "no CUDA toolkit (nvcc) found at build time"
        elif version is None:
            skip_reason = f"{cuda_home}/bin/nvcc does not run"
        elif version.split(".")[0] != torch.version.cuda.split(".")[0]:
            # torch's build refuses a toolkit of another major version than its own
            skip_reason = f"nvcc {version} ({cuda_home}) does not match torch's CUDA {torch.version.cuda}"
        else:
            with_cuda = True
    if _flag("FORCE_CUDA") and not with_cuda:
        if _flag("GRMSEG_NO_CUDA"):
            _log("FORCE_CUDA=1 and GRMSEG_NO_CUDA=1 are both set: GRMSEG_NO_CUDA wins")
        else:
            raise RuntimeError(f"FORCE_CUDA=1 but the CUDA part cannot be built: {skip_reason}")
    if with_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.device_count() == 0:
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST

    from torch.utils import cpp_extension

    if with_cuda and cpp_extension.CUDA_HOME != cuda_home:  # imported earlier by someone else
        cpp_extension.CUDA_HOME = cuda_home

    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPUs") if with_cuda else ""
    _log(
        f"torch {torch.__version__}, "
        + (
            f"CUDA part ON (nvcc {version} in {cuda_home}, archs {arch_list})"
            if with_cuda
            else f"CUDA part OFF: {skip_reason}"
        )
    )

    _write_if_changed(
        os.path.join(GENERATED_DIR, "grmseg_build_info.h"),
        "// Generated by setup.py: the build this module belongs to.\n#pragma once\n"
        f"#define GRMSEG_TORCH_VERSION {_c_string(torch.__version__)}\n"
        f"#define GRMSEG_TORCH_CUDA_VERSION {_c_string(torch.version.cuda or '')}\n"
        f"#define GRMSEG_CUDA_HOME {_c_string(cuda_home or '')}\n"
        f"#define GRMSEG_CUDA_ARCH_LIST {_c_string(arch_list)}\n"
        f"#define GRMSEG_CUDA_SKIP_REASON {_c_string(skip_reason)}\n",
    )

    sources = _sources("csrc/*.cpp", "csrc/cpu/*.cpp")
    depends = _sources("csrc/*.h", "csrc/*/*.h", "csrc/*/*.cuh") + [
        os.path.relpath(os.path.join(GENERATED_DIR, "grmseg_build_info.h"), ROOT)
    ]
    cxx = ["-O3"]
    if sys.platform.startswith("linux"):
        # at::parallel_for is inline OpenMP: compile it in; libgomp comes at run time with libtorch_cpu.
        cxx.append("-fopenmp")
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    macros = [("GRMSEG_PYTHON_MODULE", None)]
    if with_cuda:
        sources += _sources("csrc/cuda/*.cu")
        macros.append(("GRMSEG_WITH_CUDA", None))
        for inc in wheel_include_dirs():  # after the toolkit's own headers: they fill its gaps only
            cxx += ["-idirafter", inc]
            nvcc += ["-isystem", inc]

    link = []
    if sys.platform.startswith("linux") and not _flag("GRMSEG_DEBUG"):
        link.append("-Wl,--strip-debug")  # python's CFLAGS carry -g: 19 MB of DWARF nobody reads in a release
    elif _flag("GRMSEG_DEBUG"):
        cxx.append("-g")

    Extension = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    ext = Extension(
        name="grmseg._C",
        sources=sources,
        include_dirs=[CSRC, GENERATED_DIR],
        define_macros=macros,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc} if with_cuda else {"cxx": cxx},
        depends=depends,
        extra_link_args=link,
        py_limited_api=True,  # no libtorch_python / pybind11: one binary for every CPython >= 3.10
    )

    class BuildExt(cpp_extension.BuildExtension):
        """torch's BuildExtension (ninja) with a persistent object folder, so rebuilds are incremental."""

        def finalize_options(self) -> None:
            super().finalize_options()
            tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
            self.build_temp = os.path.join(BUILD_DIR, f"temp-grmseg-{tag}")

        def build_extensions(self) -> None:
            # Two builds of one checkout at once would share the object folder: take turns.
            os.makedirs(self.build_temp, exist_ok=True)
            with open(os.path.join(self.build_temp, ".lock"), "w") as lock:
                try:
                    import fcntl

                    fcntl.flock(lock, fcntl.LOCK_EX)
                except ImportError:  # not POSIX
                    pass
                super().build_extensions()

    pkg_version = package_version(torch.__version__, with_cuda, torch.version.cuda)
    return [ext], {"build_ext": BuildExt, "build_py": BuildPy}, pkg_version


ext_modules, cmdclass, pkg_version = _extensions_and_cmdclass()

setup(
    version=pkg_version,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
