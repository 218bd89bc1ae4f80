"""Common dataset interface, file loaders with clear errors, and image-level label files.

Every dataset of the pipeline is a sequence of samples::

    sample = dataset[i]
    sample["id"]      str, the image id (file stem)
    sample["image"]   uint8 numpy [H, W, 3], RGB
    sample["mask"]    uint8 numpy [H, W] class indices (0 = background, 255 = ignore), or None (no mask)
    sample["labels"]  float32 numpy [K - 1], multi-hot image-level labels of the object classes (no background)

``dataset.class_names`` lists the K classes, background first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grmseg._optional import optional_import

IGNORE_INDEX = 255


class SegmentationDataset:
    """Base class: ``ids``, ``class_names`` (background first) and ``__getitem__`` returning a sample dict."""

    name = "dataset"

    def __init__(self, ids: Sequence[str], class_names: Sequence[str]) -> None:
        self.ids = list(ids)
        self.class_names = list(class_names)

    @property
    def num_classes(self) -> int:
        """K, background included."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def image_labels(self) -> np.ndarray:
        """``[N, K - 1]`` float32 multi-hot labels of every sample (used for the co-occurrence graph)."""
        return np.stack([self[i]["labels"] for i in range(len(self))]) if len(self) else np.zeros(
            (0, self.num_classes - 1), np.float32)

    def index_of(self, image_id: str) -> int:
        """The index of ``image_id``."""
        if not hasattr(self, "_index"):
            self._index = {k: i for i, k in enumerate(self.ids)}
        return self._index[image_id]


def require_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path; FileNotFoundError naming ``what`` when it is not a folder."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{what}: folder {str(p)!r} does not exist")
    return p


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path; FileNotFoundError naming ``what`` when it is not a file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: file {str(p)!r} does not exist")
    return p


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as uint8 RGB ``[H, W, 3]``; ValueError naming the file when it cannot be decoded."""
    Image = optional_import("PIL.Image", "reading images")
    UnidentifiedImageError = Image.UnidentifiedImageError

    p = require_file(path, "image")
    try:
        with Image.open(p) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"corrupt or unreadable image {str(p)!r}: {exc}") from None


def load_mask(path: str | os.PathLike, num_classes: int) -> np.ndarray:
    """Read a class-index PNG as uint8 ``[H, W]``; ValueError for a corrupt file or an unknown class index.

    Palette PNGs (VOC) give their indices; values must be ``< num_classes`` or 255 (ignore).
    """
    Image = optional_import("PIL.Image", "reading masks")
    UnidentifiedImageError = Image.UnidentifiedImageError

    p = require_file(path, "mask")
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode not in ("P", "L", "I", "I;16"):
                raise ValueError(f"mask {str(p)!r} must be a single-channel class-index image (mode P or L), "
                                 f"got mode {im.mode}")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"corrupt or unreadable mask {str(p)!r}: {exc}") from None
    bad = np.unique(arr[(arr >= num_classes) & (arr != IGNORE_INDEX)])
    if bad.size:
        raise ValueError(f"mask {str(p)!r} holds unknown class indices {bad.tolist()} (classes are 0..{num_classes - 1},"
                         f" {IGNORE_INDEX} = ignore)")
    return arr.astype(np.uint8)


def labels_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """``[K - 1]`` float32 multi-hot labels of the object classes present in ``mask`` ``[H, W]``."""
    present = np.unique(mask)
    present = present[(present > 0) & (present < num_classes)]
    out = np.zeros(num_classes - 1, np.float32)
    out[present.astype(np.int64) - 1] = 1.0
    return out


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Image ids from a list file: one per line; the first token (``"2007_000032"`` or a VOC/COCO path
    ``"/JPEGImages/2007_000032.jpg /SegmentationClassAug/..."``) gives the id as a file stem."""
    p = require_file(path, "image list")
    ids = []
    for line in p.read_text(encoding="utf-8").splitlines():
        tok = line.strip().split()
        if tok:
            ids.append(Path(tok[0]).stem)
    if not ids:
        raise ValueError(f"image list {str(p)!r} is empty")
    return ids


def _label_vector(value: Any, class_names: Sequence[str], where: str) -> np.ndarray:
    """Class names / indices (1-based object indices) / a multi-hot vector -> ``[K - 1]`` multi-hot."""
    k = len(class_names) - 1
    out = np.zeros(k, np.float32)
    arr = np.asarray(value)
    if arr.dtype.kind == "f" and arr.ndim == 1 and arr.size == k:  # a multi-hot vector (IRN cls_labels.npy)
        return (arr != 0).astype(np.float32)
    lookup = {name: i for i, name in enumerate(class_names)}
    for item in np.atleast_1d(arr).tolist():
        if isinstance(item, str):
            if item not in lookup or lookup[item] == 0:
                raise ValueError(f"{where}: unknown class {item!r}; known: {list(class_names[1:])}")
            out[lookup[item] - 1] = 1.0
        else:
            idx = int(item)
            if not 1 <= idx <= k:
                raise ValueError(f"{where}: unknown class index {idx} (object classes are 1..{k})")
            out[idx - 1] = 1.0
    return out


def load_label_file(path: str | os.PathLike, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Image-level labels ``{id: [K - 1] multi-hot}`` from a label file.

    Formats: IRN's ``cls_labels.npy`` (a pickled dict id -> multi-hot ``[K - 1]`` vector; int keys such as
    ``2007000032`` are matched to ``2007_000032`` by the caller through :func:`label_key`), a ``.json`` dict
    ``{id: [class names or 1-based indices]}``, or a text file with lines ``id name_or_index ...``.
    ValueError names the file and the unknown class.
    """
    p = require_file(path, "label file")
    out: dict[str, np.ndarray] = {}
    if p.suffix == ".npy":
        data = np.load(p, allow_pickle=True).item()
        items = data.items()
    elif p.suffix == ".json":
        items = json.loads(p.read_text(encoding="utf-8")).items()
    else:
        items = []
        for line in p.read_text(encoding="utf-8").splitlines():
            tok = line.strip().split()
            if tok:
                items.append((tok[0], [int(t) if t.isdigit() else t for t in tok[1:]]))
    for key, value in items:
        out[label_key(key)] = _label_vector(value, class_names, f"label file {str(p)!r}, image {key}")
    return out


def label_key(key: Any) -> str:
    """Normalise an id: IRN's integer VOC keys ``2007000032`` -> ``"2007_000032"``; strings unchanged."""
    if isinstance(key, (int, np.integer)):
        s = str(int(key))
        return f"{s[:4]}_{s[4:]}" if len(s) == 10 else s
    return str(key)


def save_png_atomic(path: str | os.PathLike, array: np.ndarray, palette: Sequence[int] | None = None) -> None:
    """Write ``array`` (uint8 ``[H, W]`` or ``[H, W, 3]``) as a PNG atomically (temp file + os.replace)."""
    Image = optional_import("PIL.Image", "writing PNG files")

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.ascontiguousarray(array))
    if palette is not None and array.ndim == 2:
        im = im.convert("P")
        im.putpalette(list(palette))
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    im.save(tmp, format="PNG")
    os.replace(tmp, p)


def voc_palette(num: int = 256) -> list[int]:
    """The PASCAL VOC colour map (flat list of ``3 * num`` ints); index 255 is light grey-white as in VOC."""
    pal = []
    for i in range(num):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    pal[255 * 3: 255 * 3 + 3] = [224, 224, 192]
    return pal
