"""A built-in synthetic multi-object dataset: known masks, image-level labels, deterministic from a seed.

Six object classes, named after VOC classes so that the shipped class-name embeddings (and the knowledge
graph built on them) apply, each with its own shape, texture and colour; drawn on textured, coloured
backgrounds; grouped in scenes so that classes co-occur as they do in photographs (people ride bicycles and
horses, cars share the street with people, dogs lie on sofas). Objects may overlap (the later one occludes).

Every sample is a function of ``(seed, split, index)`` only: the same arguments give the same pixels on any
machine (numpy's PCG64 generator).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from grmseg.pipeline.datasets.base import SegmentationDataset

SYNTHETIC_CLASSES = ("background", "person", "bicycle", "horse", "car", "dog", "sofa")

# Per class: shape, texture, base RGB colour.
_STYLE = {
    1: ("ellipse_tall", "noise", (225, 150, 110)),   # person
    2: ("ring", "solid", (40, 90, 220)),              # bicycle
    3: ("rect_wide", "vstripes", (130, 75, 35)),      # horse
    4: ("rect", "checker", (210, 35, 40)),            # car
    5: ("triangle", "dots", (235, 200, 40)),          # dog
    6: ("half_disc", "hstripes", (60, 170, 80)),      # sofa
}

# Scenes: (probability, {class: probability of appearing}); at least one object per image.
_SCENES = (
    (0.22, {4: 0.95, 1: 0.6, 2: 0.3}),   # street: car, person, bicycle
    (0.18, {1: 0.95, 2: 0.8}),           # cycling: person on a bicycle
    (0.16, {3: 0.95, 1: 0.6, 5: 0.25}),  # riding / farm: horse, person, dog
    (0.20, {6: 0.95, 5: 0.6, 1: 0.35}),  # living room: sofa, dog, person
    (0.24, {c: 0.2 for c in range(1, 7)}),  # anything, rarely together
)

_SPLIT_SEED = {"train": 0, "val": 1, "test": 2}


def _texture(kind: str, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A brightness pattern in [0, 1] of the size of ``yy``."""
    if kind == "solid":
        return np.full(yy.shape, 0.8) + 0.05 * rng.standard_normal(yy.shape)
    if kind == "noise":
        return np.clip(0.6 + 0.25 * rng.standard_normal(yy.shape), 0, 1)
    period = rng.uniform(3.0, 5.0)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "vstripes":
        return 0.5 + 0.5 * np.sin(2 * np.pi * xx / period + phase)
    if kind == "hstripes":
        return 0.5 + 0.5 * np.sin(2 * np.pi * yy / period + phase)
    if kind == "checker":
        p = round(period)
        return (((yy // p) + (xx // p)) % 2).astype(np.float64)
    if kind == "dots":
        return ((np.sin(2 * np.pi * yy / period + phase) * np.sin(2 * np.pi * xx / period)) > 0.3).astype(np.float64)
    raise ValueError(kind)


def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float,
                rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of a shape of size ~``2r`` centred at ``(cy, cx)``."""
    dy, dx = yy - cy, xx - cx
    if kind == "ellipse_tall":
        return (dy / r) ** 2 + (dx / (0.5 * r)) ** 2 <= 1
    if kind == "ring":
        d = np.sqrt(dy**2 + dx**2)
        return (d <= r) & (d >= 0.55 * r)
    if kind == "rect_wide":
        return (np.abs(dy) <= 0.55 * r) & (np.abs(dx) <= r)
    if kind == "rect":
        return (np.abs(dy) <= 0.75 * r) & (np.abs(dx) <= 0.75 * r)
    if kind == "triangle":
        t = (dy + r) / (2 * r)  # 0 at the apex, 1 at the base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)
    if kind == "half_disc":
        return (dy**2 + dx**2 <= r**2) & (dy >= -0.15 * r)
    raise ValueError(kind)


def _background(height: int, width: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    base = rng.uniform(60, 200, size=3)
    grad = rng.uniform(-40, 40, size=(2, 3))
    img = base + (yy[..., None] / height - 0.5) * grad[0] + (xx[..., None] / width - 0.5) * grad[1]
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(6, 16)
    wave = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
    img = img + rng.uniform(5, 25) * wave[..., None] * rng.uniform(0.5, 1.0, size=3)
    # a few soft blobs of random colour: clutter that is no class
    for _ in range(rng.integers(0, 3)):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(4, 10)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img = img + blob[..., None] * (rng.uniform(0, 255, size=3) - img) * 0.6
    return img


def make_sample(seed: int, split: str, index: int, size: int | tuple[int, int] = 64) -> dict[str, Any]:
    """Generate one synthetic sample.

    Args:
        seed: dataset seed.  split: ``"train"``, ``"val"`` or ``"test"``.  index: sample index >= 0.
        size: image side in pixels, or ``(height, width)``. The same ``(seed, split, index)`` gives the same scene
            (classes, relative positions, colours) at every size; object sizes follow ``sqrt(height * width)``, so
            objects cover the same share of the image at every size and aspect.

    Returns:
        ``{"id", "image": uint8 [H, W, 3], "mask": uint8 [H, W], "labels": float32 [6]}``.
    """
    if split not in _SPLIT_SEED:
        raise ValueError(f"synthetic dataset: split must be one of {list(_SPLIT_SEED)}, got {split!r}")
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    side = float(np.sqrt(height * width))
    rng = np.random.default_rng([seed, _SPLIT_SEED[split], index])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = _background(height, width, rng, yy, xx)
    mask = np.zeros((height, width), np.uint8)

    probs = np.array([p for p, _ in _SCENES])
    scene = _SCENES[rng.choice(len(_SCENES), p=probs / probs.sum())][1]
    classes = [c for c, p in scene.items() if rng.random() < p]
    if not classes:
        classes = [list(scene)[rng.integers(len(scene))]]
    objects = []
    for c in classes:
        objects.append(c)
        if c == 1 and rng.random() < 0.3:  # sometimes two people
            objects.append(c)
    rng.shuffle(objects)
    for c in objects:
        shape, tex, colour = _STYLE[c]
        r = rng.uniform(0.13, 0.24) * side
        cy, cx = rng.uniform(r * 0.8, height - r * 0.8), rng.uniform(r * 0.8, width - r * 0.8)
        m = _shape_mask(shape, yy, xx, cy, cx, r, rng)
        col = np.clip(np.array(colour) + rng.uniform(-30, 30, size=3), 0, 255)
        t = _texture(tex, yy, xx, rng)
        obj = col[None, None, :] * (0.65 + 0.35 * t[..., None])
        img[m] = obj[m]
        mask[m] = c
    img = img + rng.normal(0, 6, size=img.shape)
    image = np.clip(img, 0, 255).astype(np.uint8)
    labels = np.zeros(len(SYNTHETIC_CLASSES) - 1, np.float32)
    for c in np.unique(mask):
        if c:
            labels[c - 1] = 1.0
    if not labels.any():  # every object fully occluded cannot happen with >= 1 object, but stay safe
        labels[objects[-1] - 1] = 1.0
    return {"id": f"syn_{split}_{index:05d}", "image": image, "mask": mask, "labels": labels}


class SyntheticShapes(SegmentationDataset):
    """The synthetic dataset: ``num_images`` samples of ``split``, generated on first access and cached.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.  num_images: samples.  size: image side (64 or 96 are good).
        seed: dataset seed; the same seed gives the same images.
    """

    name = "synthetic"

    def __init__(self, split: str = "train", num_images: int = 512, size: int = 64, seed: int = 0) -> None:
        if split not in _SPLIT_SEED:
            raise ValueError(f"SyntheticShapes: split must be one of {list(_SPLIT_SEED)}, got {split!r}")
        if num_images < 1 or size < 16:
            raise ValueError(f"SyntheticShapes: need num_images >= 1 and size >= 16, got {num_images}, {size}")
        super().__init__([f"syn_{split}_{i:05d}" for i in range(num_images)], SYNTHETIC_CLASSES)
        self.split, self.size, self.seed = split, size, seed
        self._cache: dict[int, dict[str, Any]] = {}

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"SyntheticShapes: index {index} out of range [0, {len(self)})")
        if index not in self._cache:
            self._cache[index] = make_sample(self.seed, self.split, index, self.size)
        s = self._cache[index]
        return {"id": s["id"], "image": s["image"], "mask": s["mask"], "labels": s["labels"]}


_NAMES_IN = {"voc": {}, "coco": {"sofa": "couch"}}  # synthetic class name -> the dataset's name


def dataset_class_index(synthetic_class: int, dataset: str = "voc") -> int:
    """The label of a synthetic class in ``dataset`` (``"voc"``: 0 background, 1 person ... 6 sofa -> 0, 15, 2, 13,
    7, 12, 18; ``"coco"``: 0, 1, 2, 18, 3, 17, 58)."""
    from grmseg.knowledge import class_names

    if dataset not in _NAMES_IN:
        raise ValueError(f"dataset must be one of {list(_NAMES_IN)}, got {dataset!r}")
    name = SYNTHETIC_CLASSES[synthetic_class]
    return class_names(dataset).index(_NAMES_IN[dataset].get(name, name))


def _side(rng: np.random.Generator, lo: int, hi: int, odd_only: bool) -> int:
    while True:
        side = int(rng.integers(lo, hi + 1))
        if side % 16 or not odd_only:
            return side


def write_layout(root: str | os.PathLike, layout: str = "voc", train_images: int = 1024, val_images: int = 128,
                 seed: int = 0, min_size: int = 61, max_size: int = 95, quality: int = 95,
                 odd_only: bool = True) -> Path:
    """Write the synthetic scenes as a PASCAL VOC 2012 or COCO-2014 folder, at sizes that are no multiple of 16.

    Image ``i`` of a split is the scene of :func:`make_sample` ``(seed, split, i)`` at a height and width drawn
    from ``[min_size, max_size]`` (skipping multiples of 16 when ``odd_only``), saved as a JPEG (``quality``, no chroma
    subsampling, so that colour edges survive as in a good photograph) with its mask in the
    dataset's class indices as a palette PNG. VOC: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``,
    ``ImageSets/Segmentation/{train,train_aug,val}.txt``. COCO: ``JPEGImages/<split>2014/``,
    ``SegmentationClass/<split>2014/``, ``ImageSets/{train,val}.txt``. Ids are ``syn_<split>_<i>`` as in the
    square dataset. Existing files are rewritten (the output is a function of the arguments).

    Returns:
        ``root`` (the folder to pass as ``--data-root``).
    """
    from PIL import Image

    from grmseg.pipeline.datasets.base import save_png_atomic, voc_palette

    if layout not in _NAMES_IN:
        raise ValueError(f"write_layout: layout must be one of {list(_NAMES_IN)}, got {layout!r}")
    if not 16 <= min_size <= max_size:
        raise ValueError(f"write_layout: need 16 <= min_size <= max_size, got {min_size}, {max_size}")
    if odd_only and all(v % 16 == 0 for v in range(min_size, max_size + 1)):
        raise ValueError(f"write_layout: every size in [{min_size}, {max_size}] is a multiple of 16 (odd_only)")
    root = Path(root)
    lut = np.array([dataset_class_index(c, layout) for c in range(len(SYNTHETIC_CLASSES))], np.uint8)
    pal = voc_palette()
    for split, n in (("train", train_images), ("val", val_images)):
        sub = "" if layout == "voc" else f"{split}2014"
        images, masks = root / "JPEGImages" / sub, root / "SegmentationClass" / sub
        images.mkdir(parents=True, exist_ok=True)
        ids = []
        for i in range(n):
            rng = np.random.default_rng([seed, _SPLIT_SEED[split], i, 16])
            size = (_side(rng, min_size, max_size, odd_only), _side(rng, min_size, max_size, odd_only))
            smp = make_sample(seed, split, i, size)
            Image.fromarray(smp["image"]).save(images / f"{smp['id']}.jpg", quality=quality, subsampling=0)
            save_png_atomic(masks / f"{smp['id']}.png", lut[smp["mask"]], pal)
            ids.append(smp["id"])
        sets = root / "ImageSets" / ("Segmentation" if layout == "voc" else "")
        sets.mkdir(parents=True, exist_ok=True)
        for name in [split] + (["train_aug"] if split == "train" and layout == "voc" else []):
            (sets / f"{name}.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    return root
