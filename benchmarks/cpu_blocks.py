"""The GRM CPU kernels' building blocks timed alone: ``python -m benchmarks.cpu_blocks [--levels avx2,avx512]``.

Builds ``benchmarks/cpu_blocks.cpp`` (the register blocks, softmax and tile copy of ``csrc/cpu/kernels/gemm.h`` on
one tile of the GRM kernels, single-threaded, data in L1/L2) once per instruction-set level with setup.py's flags
for it, runs each level the CPU and the built extension support, and prints every block's time, GFLOP/s and
fraction of that level's FMA peak (``grmseg._ext.cpu_fma_peak_gflops`` at one thread). A block's figure here is
the ceiling of the kernels that use it: what they reach in the op benchmarks (``python -m benchmarks``) is lower
by what memory, the tile copies and the glue cost. Binaries are cached under ``build/cpu-blocks/``, keyed by the
sources and flags.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "benchmarks" / "cpu_blocks.cpp"
HEADERS = ("csrc/cpu/kernels/gemm.h", "csrc/cpu/kernels/grm_kernel.h", "csrc/cpu/capability.h",
           "csrc/cpu/kernels/kernel_table.h")
BUILD_DIR = ROOT / "build" / "cpu-blocks"


def level_flags() -> dict[str, list[str]]:
    """setup.py's compiler flags per instruction-set level (``CPU_LEVEL_FLAGS``), read without running setup.py;
    ``DEFAULT`` (the x86-64 baseline) takes none."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    wanted = {"_AVX2_FLAGS", "CPU_LEVEL_FLAGS"}
    nodes = [n for n in tree.body if isinstance(n, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id in wanted for t in n.targets)]
    namespace: dict = {}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), "setup.py", "exec"), namespace)  # noqa: S102 - literals only
    return {"DEFAULT": [], **namespace["CPU_LEVEL_FLAGS"]}


def _compile_command(level: str) -> list[str]:
    """The compiler command for ``level``, less its ``-o`` output."""
    from torch.utils.cpp_extension import include_paths

    cmd = ["c++", "-O3", "-std=c++20", "-DNDEBUG", f"-DCPU_CAPABILITY={level}", f"-DCPU_CAPABILITY_{level}",
           *level_flags()[level], f"-I{ROOT / 'csrc'}"]
    cmd += [f"-I{p}" for p in include_paths()]
    return [*cmd, str(SOURCE)]


def build(level: str) -> Path:
    """The harness binary for ``level`` (``DEFAULT``, ``AVX2``, ``AVX512``), compiled unless cached."""
    cmd = _compile_command(level)
    digest = hashlib.sha256()
    for path in (SOURCE, *(ROOT / h for h in HEADERS)):
        digest.update(path.read_bytes())
    digest.update(" ".join(cmd).encode())
    out = BUILD_DIR / f"cpu_blocks_{level.lower()}_{digest.hexdigest()[:16]}"
    if not out.exists():
        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        res = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} at {level} failed:\n{res.stderr[-4000:]}")
    return out


@dataclass
class BlockTime:
    level: str
    name: str
    us: float
    flops: float

    @property
    def gflops(self) -> float | None:
        return self.flops / self.us / 1e3 if self.flops else None


def run_level(level: str, channels: int, nodes: int, repeats: int) -> list[BlockTime]:
    """Every block's time at ``level`` (one call, best of five runs of ``repeats``)."""
    res = subprocess.run([str(build(level)), str(channels), str(nodes), str(repeats)], capture_output=True,
                         text=True, check=True)
    rows = []
    for line in res.stdout.splitlines():
        name, us, flops = line.split("\t")
        rows.append(BlockTime(level, name, float(us), float(flops)))
    return rows


def fma_peak(level: str) -> float:
    """The one-thread fp32 FMA peak (GFLOP/s) of ``level``."""
    from grmseg import _ext

    return _ext.cpu_fma_peak_gflops(level.lower(), threads=1)


def format_rows(rows: Sequence[BlockTime], peaks: dict[str, float]) -> str:
    """A markdown table of the blocks, with GFLOP/s and the fraction of each level's FMA peak."""
    out = ["| level | block | us per tile | GFLOP/s | of FMA |", "|---|---|---:|---:|---:|"]
    for r in rows:
        g = r.gflops
        rate = "" if g is None else f"{g:.1f}"
        share = "" if g is None or not peaks.get(r.level) else f"{g / peaks[r.level]:.2f}"
        out.append(f"| {r.level.lower()} | {r.name} | {r.us:.2f} | {rate} | {share} |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_blocks", description=__doc__.splitlines()[0])
    p.add_argument("--levels", default="", help="levels to run, e.g. avx2,avx512 (default: every supported one)")
    p.add_argument("--channels", type=int, default=256, help="C of the tile (default 256)")
    p.add_argument("--nodes", type=int, default=21, help="K of the tile (default 21)")
    p.add_argument("--repeats", type=int, default=400, help="calls per timed run (default 400)")
    args = p.parse_args(argv)
    from grmseg import _ext

    supported = [lv.upper() for lv in _ext.cpu_capabilities()]
    if not supported:
        print(f"grmseg._C is not loaded: {_ext.load_error()}", file=sys.stderr)
        return 1
    levels = [lv.strip().upper() for lv in args.levels.split(",") if lv.strip()] or supported
    missing = [lv for lv in levels if lv not in supported]
    if missing:
        p.error(f"levels {missing} are not supported here (CPU and build support: {supported})")
    rows, peaks = [], {}
    for level in levels:
        rows += run_level(level, args.channels, args.nodes, args.repeats)
        peaks[level] = fma_peak(level)
    print(f"C={args.channels} K={args.nodes}, one thread; FMA peak (GFLOP/s): "
          + ", ".join(f"{lv.lower()} {v:.0f}" for lv, v in peaks.items()))
    print(format_rows(rows, peaks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
