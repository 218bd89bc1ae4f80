"""The package as installed: version, license and typing metadata, the stripped binary, the CUDA sources an
installed package carries for the CuPy NVRTC fallback, and loud failures when ``grmseg._C`` cannot (or must
not) be loaded."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import grmseg
from grmseg import _ext
from grmseg.ops.impl import cupy_nvrtc

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, *, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd or ROOT, env={**os.environ, **(env or {})}, capture_output=True,
        text=True, timeout=300, check=False,
    )


# ------------------------------------------------------------------------------------------------- metadata
def test_version_is_written_once_and_names_the_torch_of_the_build():
    text = (ROOT / "grmseg" / "_version.py").read_text()
    assert re.search(r'^__version__ = "\d+\.\d+\.\d+"$', text, re.MULTILINE)
    assert not re.search(r"^version\s*=", (ROOT / "pyproject.toml").read_text(), re.MULTILINE)  # no second copy
    installed = importlib.metadata.version("grmseg")
    public, _, local = installed.partition("+")
    assert public == grmseg.__version__
    accel = "cu" + torch.version.cuda.replace(".", "") if _ext.cuda_built() else "cpu"
    assert local == f"pt{torch.__version__.split('+')[0]}.{accel}", installed
    assert _ext.build_info()["torch_version"] == torch.__version__


def test_license_classifiers_and_typing_marker():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (Path(grmseg.__file__).parent / "py.typed").is_file()
    meta = importlib.metadata.distribution("grmseg").metadata
    assert meta["License-Expression"] == "MIT" and meta["License-File"] == "LICENSE"
    assert "Typing :: Typed" in meta.get_all("Classifier")


def _elf_section_names(path: Path) -> list[str]:
    """The section names of a 64-bit little-endian ELF file (enough to see whether debug info is there)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a 64-bit little-endian ELF file"
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    str_off = headers[shstrndx][4]
    names = []
    for name_off, *_ in headers:
        end = data.index(b"\0", str_off + name_off)
        names.append(data[str_off + name_off : end].decode())
    return names


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="release builds strip debug info on Linux")
def test_extension_has_no_debug_info():
    assert _ext.built(), _ext.load_error()
    so = Path(grmseg._C.__file__)
    names = _elf_section_names(so)
    assert ".text" in names and ".dynsym" in names  # the parser reads real section names
    assert not [n for n in names if n.startswith(".debug")], names


# ------------------------------------------------------------------------------ CUDA sources of NVRTC fallback
def test_built_package_carries_the_nvrtc_sources(tmp_path):
    """setup.py's build_py (the step that lays out a wheel) puts the CUDA sources into grmseg/_cuda, and the
    CuPy NVRTC path finds them there in a package that lives outside any source checkout."""
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "build_py", "--build-lib",
         str(tmp_path / "lib")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pkg = tmp_path / "lib" / "grmseg"
    shipped = pkg / "_cuda" / cupy_nvrtc.SOURCE_FILE
    assert shipped.read_text() == (ROOT / "csrc" / "cuda" / cupy_nvrtc.SOURCE_FILE).read_text()
    if _ext.built():
        shutil.copy2(grmseg._C.__file__, pkg)
    code = (
        "from grmseg.ops.impl import cupy_nvrtc as c; import grmseg; "
        "print(c.source_dir()); print(grmseg.__file__); print(len(c.load_source()))"
    )
    env = {"PYTHONPATH": str(tmp_path / "lib"), cupy_nvrtc.SOURCE_DIR_ENV: "", _ext.IGNORE_ERRORS_ENV: "1"}
    out = _run(code, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    source_dir, module, size = out.stdout.split()
    assert Path(module).resolve().is_relative_to(tmp_path) and Path(source_dir).resolve() == pkg / "_cuda"
    assert int(size) == len(shipped.read_text())


def test_checkout_falls_back_to_csrc_cuda(monkeypatch):
    monkeypatch.delenv(cupy_nvrtc.SOURCE_DIR_ENV, raising=False)
    if (cupy_nvrtc.PACKAGE_SOURCE_DIR / cupy_nvrtc.SOURCE_FILE).is_file():
        assert cupy_nvrtc.source_dir() == cupy_nvrtc.PACKAGE_SOURCE_DIR
    else:  # an editable install: the sources of the checkout
        assert cupy_nvrtc.source_dir() == ROOT / "csrc" / "cuda"
    assert "namespace grmseg_kernels" in cupy_nvrtc.load_source()


# ------------------------------------------------------------------------------------------- loading _C
_BROKEN_C = """
import importlib.abc, importlib.machinery, sys
class Broken(importlib.abc.Loader):
    def create_module(self, spec):
        raise ImportError("grmseg/_C.abi3.so: undefined symbol: _ZN3c104impl3cow11cow_deleterEPv")
    def exec_module(self, module):
        pass
class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, Broken()) if name == "grmseg._C" else None
sys.meta_path.insert(0, Finder())
"""


def test_a_binary_that_does_not_load_fails_loudly_with_the_rebuild_command():
    out = _run(_BROKEN_C + "import grmseg")
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "ExtensionLoadError" in out.stderr and "does not load" in out.stderr and "undefined symbol" in out.stderr
    assert _ext.REBUILD_HINT in out.stderr and _ext.IGNORE_ERRORS_ENV in out.stderr, last
    ok = _run(_BROKEN_C + "import grmseg; from grmseg import _ext; print(_ext.built()); print(_ext.load_error())",
              env={_ext.IGNORE_ERRORS_ENV: "1"})
    assert ok.returncode == 0, ok.stderr[-2000:]
    built, why = ok.stdout.strip().split("\n", 1)
    assert built == "False" and "undefined symbol" in why


def test_ops_registered_by_another_library_are_detected_before_loading():
    """What ``torch.ops.load_library("libgrmseg_ops.so")`` does before ``import grmseg``: the grmseg_C operators
    exist already. Loading grmseg._C then would abort the process; grmseg refuses with a clear error instead."""
    register = (
        "import torch; lib = torch.library.Library('grmseg_C', 'DEF'); "
        "lib.define('grm_project_forward(Tensor x, Tensor w, Tensor b) -> (Tensor, Tensor)'); "
    )
    out = _run(register + "import grmseg")
    assert out.returncode == 1, (out.returncode, out.stderr[-2000:])  # an exception, not an abort
    assert "ExtensionLoadError" in out.stderr and "registered already" in out.stderr
    assert "libgrmseg_ops" in out.stderr
    assert not _ext.ops_registered_elsewhere()  # this process loaded grmseg._C itself


def test_cpp_header_calls_every_operator_through_the_dispatcher(tmp_path):
    """<grmseg/ops.h> compiled into a small library that calls two operators; loaded into this process (whose
    grmseg._C registered them), its results equal grmseg.ops'."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    assert _ext.built(), _ext.load_error()
    from torch.utils import cpp_extension

    src = tmp_path / "probe.cpp"
    src.write_text(
        "#include <grmseg/ops.h>\n#include <ATen/ATen.h>\n"
        'extern "C" double probe_affinity(int64_t radius) {\n'
        "  at::Tensor feat = at::arange(2 * 3 * 5 * 7, at::kFloat).reshape({2, 3, 5, 7}).sin();\n"
        "  return grmseg::ops::local_affinity_forward(feat, radius).sum().item<double>();\n}\n"
        'extern "C" double probe_project() {\n'
        "  at::Tensor x = at::arange(2 * 4 * 6, at::kFloat).reshape({2, 4, 6}).cos();\n"
        "  at::Tensor w = at::arange(3 * 4, at::kFloat).reshape({3, 4}).sin(), b = at::zeros({3});\n"
        "  auto [h, m] = grmseg::ops::grm_project_forward(x, w, b);\n"
        "  return h.sum().item<double>() + m.sum().item<double>();\n}\n"
    )
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{ROOT / 'csrc' / 'include'}"]
    lib_dir = Path(torch.__file__).parent / "lib"
    so = tmp_path / "probe.so"
    cmd = ["g++", "-std=c++20", "-O1", "-shared", "-fPIC", *includes, str(src), "-o", str(so), f"-L{lib_dir}",
           "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{lib_dir}", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import ctypes

    lib = ctypes.CDLL(str(so))
    lib.probe_affinity.restype = ctypes.c_double
    lib.probe_affinity.argtypes = [ctypes.c_int64]
    lib.probe_project.restype = ctypes.c_double
    feat = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7).sin()
    expected = grmseg.ops.local_affinity(feat, 3, backend="csrc").sum().item()
    assert lib.probe_affinity(3) == pytest.approx(expected, rel=1e-6)
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(2, 4, 6).cos()
    w = torch.arange(3 * 4, dtype=torch.float32).reshape(3, 4).sin()
    h, m = torch.ops.grmseg_C.grm_project_forward(x, w, torch.zeros(3))
    assert lib.probe_project() == pytest.approx((h.sum() + m.sum()).item(), rel=1e-6)
