"""Ahead-of-time compile checks of grmseg's GPU kernels on a machine without a GPU (used by test_gpu_compile.py).

Triton: the launches the adapters would make (``grmseg.ops.impl.triton_launch.recording`` on meta tensors) are
turned into compile jobs (signature, constexprs and the 16-byte divisibility hints Triton's JIT would derive from
the arguments, one job per config), compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda",
arch, 32))`` in worker processes (the test process runs Triton's interpreter, whose ``@triton.jit`` functions
cannot be compiled), and measured: shared memory from the kernel metadata, registers and spills from the log of
Triton's own ptxas run (``TRITON_DUMP_PTXAS_LOG=1``).

CUDA: each ``csrc/cuda/*.cu`` compiled for one architecture with ``nvcc -cubin -Xptxas -v`` (device code only),
every kernel's registers, spills and static shared memory parsed from the ptxas log.

Results are cached on disk, keyed by everything that decides them (kernel source, job, architecture, compiler
version): ``$GRMSEG_COMPILE_CACHE``, else ``~/.cache/grmseg/compile-check`` (never in the repository).

The parent runs ``python tests/compile_check.py worker JOBS.json RESULTS.json`` (``GRMSEG_COMPILE_JOBS`` of them
at once, default 2); ``format_results`` prints a table of jobs and their resources.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE_ENV = "GRMSEG_COMPILE_CACHE"
JOBS_ENV = "GRMSEG_COMPILE_JOBS"
CACHE_VERSION = "2"

#: ptxas: "Used 168 registers, used 1 barriers, 33280 bytes smem" and "0 bytes stack frame, 0 bytes spill ..."
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")


def cache_dir() -> Path:
    """Where results are kept: ``$GRMSEG_COMPILE_CACHE`` or ``~/.cache/grmseg/compile-check``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "grmseg" / "compile-check"


def default_jobs() -> int:
    """Parallel compile processes: ``$GRMSEG_COMPILE_JOBS``, else 2 (the CI machine's cores are shared)."""
    return max(1, int(os.environ.get(JOBS_ENV, "2")))


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _cached(kind: str, key: str) -> dict | None:
    path = cache_dir() / kind / f"{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _store(kind: str, key: str, result: dict) -> None:
    folder = cache_dir() / kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(result))
        tmp.replace(folder / f"{key}.json")
    except OSError:  # a read-only home: no cache, same results
        pass


# ---------------------------------------------------------------------------------------------------- Triton
_TORCH_TO_TRITON = {
    "torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float64": "fp64",
    "torch.int32": "i32", "torch.int64": "i64", "torch.uint8": "u8", "torch.int8": "i8", "torch.bool": "i1",
}


def _arg(value: Any) -> dict:
    """A runtime argument as the JIT specialises it (nothing else of its value reaches the compiler): a pointer's
    dtype; an int as "1" (a constant), "D" (a multiple of 16: the divisibility hint), "i32" or "i64"; a float."""
    if hasattr(value, "dtype") and hasattr(value, "stride"):
        return {"ptr": _TORCH_TO_TRITON[str(value.dtype)]}
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        if value == 1:
            return {"int": "1"}
        if not -(2**31) <= value < 2**31:
            return {"int": "i64"}
        return {"int": "D" if value % 16 == 0 else "i32"}
    if isinstance(value, float):
        return {"float": value}
    raise TypeError(f"compile_check: cannot describe kernel argument {value!r}")


def launch_jobs(launch: Any) -> list[dict]:
    """One compile job per config of a recorded ``triton_launch.Launch``."""
    args = [_arg(a) for a in launch.args]
    jobs = []
    for cfg in launch.configs:
        meta = {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages", "maxnreg")}
        job = {
            "module": launch.module, "kernel": launch.kernel, "args": args,
            "constexprs": {**launch.constexprs, **meta}, "num_warps": int(cfg.get("num_warps", 4)),
            "num_stages": int(cfg.get("num_stages", 2)), "arch": launch.target.arch,
        }
        if cfg.get("maxnreg"):
            job["maxnreg"] = int(cfg["maxnreg"])
        jobs.append(job)
    return jobs


def job_label(job: dict) -> str:
    """``grm_project_fwd_kernel sm_90 BLOCK_P=64 ... w4 s2`` (the config part of a job)."""
    keys = sorted(k for k in job["constexprs"] if k.startswith("BLOCK") or k in ("FUSED", "HOIST", "SPLIT"))
    cfg = " ".join(f"{k}={job['constexprs'][k]}" for k in keys)
    return f"{job['kernel']} sm_{job['arch']} {cfg} w{job['num_warps']} s{job['num_stages']}"


def _triton_version() -> str:
    import triton

    return triton.__version__


def triton_key(job: dict, triton_version: str) -> str:
    """Cache key: the job, the triton version and the source of the kernel's module and its helpers."""
    module_file = ROOT / (job["module"].replace(".", "/") + ".py")
    common = ROOT / "grmseg" / "triton" / "common.py"
    return _digest(CACHE_VERSION, triton_version, json.dumps(job, sort_keys=True), _read(module_file),
                   _read(common))


def _compile_triton_job(job: dict) -> dict:
    """In a worker (no interpreter): compile one job and measure it."""
    import contextlib
    import importlib
    import inspect
    import io

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(job["module"]), job["kernel"])
    names = list(fn.arg_names)
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    attrs: dict[tuple, list] = {}
    for i, (name, a) in enumerate(zip(names, job["args"])):
        if "ptr" in a:
            signature[name] = "*" + a["ptr"]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif "int" in a:
            spec = a["int"]
            if spec == "1":
                signature[name], constexprs[name] = "constexpr", 1
            else:
                signature[name] = "i64" if spec == "i64" else "i32"
                if spec == "D":
                    attrs[(i,)] = [["tt.divisibility", 16]]
        elif "float" in a:
            signature[name] = "fp32"
        else:
            signature[name] = "u1"
    defaults = {p.name: p.default for p in fn.params if p.default is not inspect.Parameter.empty}
    for name in names[len(job["args"]):]:
        if name not in job["constexprs"] and name not in defaults:
            raise KeyError(f"{job['kernel']}: no value for argument {name!r}")
        signature[name] = "constexpr"
        constexprs[name] = job["constexprs"].get(name, defaults.get(name))
    src = ASTSource(fn, signature, constexprs, attrs)
    out = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out):
            options = {"num_warps": job["num_warps"], "num_stages": job["num_stages"]}
            if job.get("maxnreg"):
                options["maxnreg"] = job["maxnreg"]
            kernel = triton.compile(src, target=GPUTarget("cuda", job["arch"], 32), options=options)
    except Exception as exc:  # noqa: BLE001 - any compile failure is a result
        return {"error": f"{type(exc).__name__}: {exc}"[:2000], "seconds": time.perf_counter() - t0}
    log = out.getvalue()
    used, spill = _USED.findall(log), _SPILL.findall(log)
    if not used or not spill:
        return {"error": f"no ptxas resource log (TRITON_DUMP_PTXAS_LOG): {log[-500:]!r}",
                "seconds": time.perf_counter() - t0}
    return {
        "error": None, "seconds": time.perf_counter() - t0, "shared": int(kernel.metadata.shared),
        "regs": max(int(u[0]) for u in used), "stack": max(int(s[0]) for s in spill),
        "spill_stores": max(int(s[1]) for s in spill), "spill_loads": max(int(s[2]) for s in spill),
    }


def _worker(jobs_file: str, results_file: str) -> None:
    jobs = json.loads(Path(jobs_file).read_text())
    results = []
    for job in jobs:
        results.append(_compile_triton_job(job))
        Path(results_file).write_text(json.dumps(results))  # progress survives a timeout


def _worker_env(tmp: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["TRITON_CACHE_DIR"] = os.path.join(tmp, "triton-cache")  # always a real compile (and a ptxas log)
    env["TRITON_DUMP_PTXAS_LOG"] = "1"
    env["TRITON_ALWAYS_COMPILE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    return env


def compile_triton(jobs: Sequence[dict], processes: int | None = None, timeout: float = 3600) -> list[dict]:
    """Results of ``jobs`` (same order): cached ones from disk, the others compiled by worker processes."""
    version = _triton_version()
    keys = [triton_key(j, version) for j in jobs]
    by_key: dict[str, dict] = {}
    for k in keys:
        if k not in by_key:
            hit = _cached("triton", k)
            if hit is not None:
                by_key[k] = {**hit, "cached": True}
    todo = [k for k in dict.fromkeys(keys) if k not in by_key]
    if todo:
        job_of = {k: j for k, j in zip(keys, jobs)}
        n = max(1, min(processes or default_jobs(), len(todo)))
        chunks = [todo[w::n] for w in range(n)]  # round robin: the slow (wide) configs spread over the workers
        with tempfile.TemporaryDirectory(prefix="grmseg-compile-") as tmp:

            def run(w: int) -> None:
                jf, rf = os.path.join(tmp, f"jobs{w}.json"), os.path.join(tmp, f"results{w}.json")
                Path(jf).write_text(json.dumps([job_of[k] for k in chunks[w]]))
                try:
                    proc = subprocess.run([sys.executable, __file__, "worker", jf, rf], env=_worker_env(tmp),
                                          capture_output=True, text=True, timeout=timeout, check=False)
                    why = f"worker exited ({proc.returncode}): {proc.stderr[-2000:]}"
                except subprocess.TimeoutExpired:
                    why = f"worker timed out after {timeout:.0f} s"
                done = json.loads(Path(rf).read_text()) if os.path.exists(rf) else []
                for k, res in zip(chunks[w], done):
                    by_key[k] = {**res, "cached": False}
                    if res.get("error") is None:
                        _store("triton", k, res)
                for k in chunks[w][len(done):]:
                    by_key[k] = {"error": why, "cached": False}

            with ThreadPoolExecutor(n) as pool:
                list(pool.map(run, range(n)))
    return [by_key[k] for k in keys]


def problems(job: dict, result: dict, smem_limit: int) -> list[str]:
    """What is wrong with one compiled config: an error, shared memory over the limit, spills."""
    if result.get("error"):
        return [f"compile error: {result['error']}"]
    out = []
    if result["shared"] > smem_limit:
        out.append(f"shared memory {result['shared']} B > {smem_limit} B")
    if result["spill_stores"] or result["spill_loads"]:
        out.append(f"spills {result['spill_stores']} B stores / {result['spill_loads']} B loads "
                   f"({result['regs']} registers)")
    return out


# ------------------------------------------------------------------------------------------------------ CUDA
def nvcc_path() -> str | None:
    """nvcc of the toolkit setup.py builds with, or None."""
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def nvcc_flags() -> list[str]:
    """The flags, include paths and defines of setup.py's CUDA build (torch's common nvcc flags, torch's and the
    CUDA wheels' headers; the generated build-info header is not needed by device code)."""
    import sysconfig

    import torch

    nvcc = nvcc_path()
    if nvcc and not os.environ.get("CUDA_HOME"):  # torch.utils.cpp_extension looks for it at import
        os.environ["CUDA_HOME"] = str(Path(nvcc).resolve().parents[1])
    from torch.utils import cpp_extension
    from torch.utils.cpp_extension import include_paths

    flags = [*getattr(cpp_extension, "COMMON_NVCC_FLAGS", []), "-O3", "--expt-relaxed-constexpr", "-lineinfo",
             "-std=c++20", f"-I{ROOT / 'csrc'}",
             f"-I{ROOT / 'build' / 'grmseg-generated'}", f"-I{sysconfig.get_paths()['include']}",
             "-DGRMSEG_WITH_CUDA", "-DGRMSEG_PYTHON_MODULE"]
    flags += [f"-I{p}" for p in include_paths()]
    site = Path(torch.__file__).resolve().parents[1]
    for inc in sorted(site.glob("nvidia/*/include")):
        flags += ["-isystem", str(inc)]
    return flags


def _nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
    return out.strip().splitlines()[-1] if out.strip() else "?"


def _includes_of(source: Path) -> list[Path]:
    """The grmseg headers a source includes (recursively), for the cache key."""
    seen: list[Path] = []
    stack = [source]
    while stack:
        text = _read(stack.pop())
        for inc in re.findall(r'#include\s+"([^"]+)"', text):
            for base in (ROOT / "csrc", source.parent):
                p = base / inc
                if p.is_file() and p not in seen:
                    seen.append(p)
                    stack.append(p)
                    break
    return seen


def compile_cuda(source: Path, arch: int, timeout: float = 900) -> dict:
    """ptxas resource usage of every kernel of ``source`` for ``sm_<arch>``: ``{"kernels": [{name, regs,
    spill_stores, spill_loads, stack, smem}], "error": None | str, "seconds": float}``; cached."""
    nvcc = nvcc_path()
    if nvcc is None:
        return {"error": "no nvcc", "kernels": []}
    flags = nvcc_flags()
    key = _digest(CACHE_VERSION, _nvcc_version(nvcc), str(arch), " ".join(flags), _read(source),
                  *[_read(p) for p in _includes_of(source)])
    hit = _cached("cuda", key)
    if hit is not None:
        return {**hit, "cached": True}
    with tempfile.TemporaryDirectory(prefix="grmseg-nvcc-") as tmp:
        cmd = [nvcc, "-cubin", str(source), "-o", os.path.join(tmp, "out.cubin"), f"-arch=sm_{arch}",
               "-Xptxas", "-v", *flags]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        seconds = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        return {"error": log[-4000:], "kernels": [], "seconds": seconds, "cached": False}
    kernels = []
    current: dict | None = None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = {"name": _demangle(m.group(1)), "regs": 0, "spill_stores": 0, "spill_loads": 0,
                       "stack": 0, "smem": 0}
            kernels.append(current)
            continue
        if current is None:
            continue
        m = _SPILL.search(line)
        if m:
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
        m = _USED.search(line)
        if m:
            current["regs"] = int(m.group(1))
            current["smem"] = int(m.group(2) or 0)
    result = {"error": None, "kernels": kernels, "seconds": seconds}
    _store("cuda", key, result)
    return {**result, "cached": False}


def _demangle(name: str) -> str:
    exe = shutil.which("c++filt")
    if exe is None:
        return name
    out = subprocess.run([exe, name], capture_output=True, text=True, check=False).stdout.strip()
    return out or name


def cuda_scalar(name: str) -> str:
    """The scalar type of a demangled kernel instantiation: ``float``, ``double``, ``c10::Half``, ..."""
    m = re.search(r"<([^,>]+)", name)
    return m.group(1).strip() if m else ""


# ----------------------------------------------------------------------------------------------------- report
def format_results(rows: Iterable[tuple[dict, dict]]) -> str:
    """One line per compiled config."""
    lines = []
    for job, res in rows:
        if res.get("error"):
            lines.append(f"{job_label(job):<90} ERROR {res['error'][:200]}")
        else:
            lines.append(f"{job_label(job):<90} smem {res['shared']:>7} regs {res['regs']:>3} "
                         f"spill {res['spill_stores']:>6}/{res['spill_loads']:<6} {res.get('seconds', 0):5.1f}s"
                         f"{' (cached)' if res.get('cached') else ''}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        _worker(sys.argv[2], sys.argv[3])
    else:
        print(__doc__)
        raise SystemExit(2)
