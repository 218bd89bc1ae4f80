"""The C++ harness of the GRM CPU kernels' building blocks (benchmarks/cpu_blocks.py): it builds with setup.py's
flags for a level, runs, and reports every block with its flops."""

from __future__ import annotations

import shutil

import pytest

from benchmarks import cpu_blocks
from grmseg import _ext

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")


def test_level_flags_are_setup_pys():
    flags = cpu_blocks.level_flags()
    assert flags["DEFAULT"] == []
    assert "-mavx2" in flags["AVX2"] and "-mfma" in flags["AVX2"]
    assert set(flags["AVX2"]) < set(flags["AVX512"]) and "-mavx512f" in flags["AVX512"]


@pytest.mark.skipif(not _ext.built(), reason="grmseg._C is not built")
def test_harness_runs_every_block_at_the_baseline_level():
    rows = cpu_blocks.run_level("DEFAULT", 19, 5, 2)
    names = [r.name for r in rows]
    assert len(names) == 9 and any(n.startswith("gemm_nt") for n in names) and any("softmax" in n for n in names)
    products = [r for r in rows if r.name.startswith("gemm")]
    tiles = [r for r in rows if r.name.startswith("grm_project forward per tile")]
    assert len(tiles) == 2 and all(r.flops == 4 * 5 * 19 * 256 for r in tiles)
    # 2 K C T flops per product (T = 256 pixels), twice that for the stacked ones
    assert sorted({r.flops for r in products}) == [2 * 5 * 19 * 256, 4 * 5 * 19 * 256]
    assert all(r.us > 0 for r in rows) and all(r.gflops and r.gflops > 0 for r in products)
    table = cpu_blocks.format_rows(rows, {"DEFAULT": 10.0})
    assert table.count("\n") == len(rows) + 1 and "| default | gemm_nt" in table
