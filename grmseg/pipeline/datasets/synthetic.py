"""The built-in datasets: synthetic multi-object scenes with known masks and image-level labels, deterministic
from a seed. One drawing code (:func:`make_sample`) serves both; a :class:`SceneSpec` table says what it draws.

* ``synthetic`` (:data:`SYNTHETIC`): six object classes, each with its own shape, texture and colour, drawn on
  textured, coloured backgrounds and grouped in scenes so that classes co-occur as they do in photographs
  (people ride bicycles and horses, cars share the street with people, dogs lie on sofas). Appearance decides.
* ``context`` (:data:`CONTEXT`): cat and dog are drawn identically (one shape, texture and colour range); cats
  live in living rooms (always a sofa, often a person), dogs on farms (a horse or sheep, rarely a person). The
  background is drawn before the scene is chosen, from one distribution, so it does not give the scene away:
  only the other objects in the image tell a cat from a dog. Context decides.

Class names are VOC's, so that the shipped class-name embeddings (and the knowledge graph built on them) apply.
Objects may overlap (the later one occludes). Every sample is a function of ``(spec, seed, split, index)`` only:
the same arguments give the same pixels on any machine (numpy's PCG64 generator).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grmseg.pipeline.datasets.base import SegmentationDataset


@dataclass(frozen=True)
class SceneSpec:
    """What :func:`make_sample` draws for one built-in dataset.

    Attributes:
        name: the dataset's name (``--dataset``).  classes: the K class names, background first (VOC names).
        styles: per object class (1-based): ``(shape, texture, base RGB colour)``; two classes with one style
            look alike.
        scenes: ``(probability, {class: probability of appearing})`` per scene; one scene per image, at least
            one object (a scene none of whose classes was drawn gets one of them at random). A class listed
            with probability 1 is always there.
        repeats: per class, the probability of a second instance.
        id_prefix: image ids are ``<id_prefix>_<split>_<index>``.
        stream: extra words of the generator's seed, so that two datasets draw different scenes from one seed.
        radius: an object's size ``r`` (half its extent) is drawn from ``radius`` x ``sqrt(H W)``.
        look_alikes: the pairs of classes told apart only by context (scored by the ablation).
    """

    name: str
    classes: tuple[str, ...]
    styles: Mapping[int, tuple[str, str, tuple[int, int, int]]]
    scenes: tuple[tuple[float, Mapping[int, float]], ...]
    repeats: Mapping[int, float]
    id_prefix: str
    stream: tuple[int, ...] = ()
    radius: tuple[float, float] = (0.13, 0.24)
    look_alikes: tuple[tuple[str, str], ...] = ()


SYNTHETIC_CLASSES = ("background", "person", "bicycle", "horse", "car", "dog", "sofa")

SYNTHETIC = SceneSpec(
    name="synthetic",
    classes=SYNTHETIC_CLASSES,
    styles={
        1: ("ellipse_tall", "noise", (225, 150, 110)),   # person
        2: ("ring", "solid", (40, 90, 220)),              # bicycle
        3: ("rect_wide", "vstripes", (130, 75, 35)),      # horse
        4: ("rect", "checker", (210, 35, 40)),            # car
        5: ("triangle", "dots", (235, 200, 40)),          # dog
        6: ("half_disc", "hstripes", (60, 170, 80)),      # sofa
    },
    scenes=(
        (0.22, {4: 0.95, 1: 0.6, 2: 0.3}),   # street: car, person, bicycle
        (0.18, {1: 0.95, 2: 0.8}),           # cycling: person on a bicycle
        (0.16, {3: 0.95, 1: 0.6, 5: 0.25}),  # riding / farm: horse, person, dog
        (0.20, {6: 0.95, 5: 0.6, 1: 0.35}),  # living room: sofa, dog, person
        (0.24, {c: 0.2 for c in range(1, 7)}),  # anything, rarely together
    ),
    repeats={1: 0.3},  # sometimes two people
    id_prefix="syn",
)

CONTEXT_CLASSES = ("background", "person", "cat", "dog", "sofa", "horse", "sheep")

_ANIMAL = ("triangle", "dots", (235, 200, 40))  # cat and dog: one look
CONTEXT = SceneSpec(
    name="context",
    classes=CONTEXT_CLASSES,
    styles={
        1: ("ellipse_tall", "noise", (225, 150, 110)),   # person
        2: _ANIMAL,                                       # cat
        3: _ANIMAL,                                       # dog
        4: ("half_disc", "hstripes", (60, 170, 80)),      # sofa
        5: ("rect_wide", "vstripes", (130, 75, 35)),      # horse
        6: ("rect", "checker", (225, 225, 215)),          # sheep
    },
    scenes=(
        (0.40, {4: 1.0, 2: 0.5, 1: 0.5}),            # living room: a sofa, a cat half of the time, a person
        (0.20, {5: 1.0, 6: 0.4, 3: 0.5, 1: 0.2}),    # farm: a horse, sheep, a dog half of the time, a farmer
        (0.20, {6: 1.0, 5: 0.4, 3: 0.5, 1: 0.2}),    # farm: sheep, a horse, a dog half of the time, a farmer
        (0.20, {1: 0.4, 4: 0.3, 5: 0.3, 6: 0.3}),    # no animal: the companions on their own, rarely together
    ),
    repeats={1: 0.3, 6: 0.3},
    id_prefix="ctx",
    stream=(1,),
    look_alikes=(("cat", "dog"),),
)

SCENE_SPECS: dict[str, SceneSpec] = {s.name: s for s in (SYNTHETIC, CONTEXT)}
"""The built-in datasets by name."""

_SPLIT_SEED = {"train": 0, "val": 1, "test": 2}


def scene_spec(spec: SceneSpec | str) -> SceneSpec:
    """``spec``, or the built-in one of that name (``"synthetic"``, ``"context"``)."""
    if isinstance(spec, SceneSpec):
        return spec
    if spec not in SCENE_SPECS:
        raise ValueError(f"scene spec must be a SceneSpec or one of {list(SCENE_SPECS)}, got {spec!r}")
    return SCENE_SPECS[spec]


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


def make_sample(seed: int, split: str, index: int, size: int | tuple[int, int] = 64,
                spec: SceneSpec | str = SYNTHETIC) -> dict[str, Any]:
    """Generate one sample of a built-in dataset.

    Args:
        seed: dataset seed.  split: ``"train"``, ``"val"`` or ``"test"``.  index: sample index >= 0.
        size: image side in pixels, or ``(height, width)``. The same ``(seed, split, index)`` gives the same scene
            (classes, relative positions, colours) at every size; object sizes follow ``sqrt(height * width)``, so
            objects cover the same share of the image at every size and aspect.
        spec: what to draw: :data:`SYNTHETIC` (the default), :data:`CONTEXT`, or their names.

    Returns:
        ``{"id", "image": uint8 [H, W, 3], "mask": uint8 [H, W], "labels": float32 [K - 1]}``.
    """
    spec = scene_spec(spec)
    if split not in _SPLIT_SEED:
        raise ValueError(f"{spec.name} dataset: split must be one of {list(_SPLIT_SEED)}, got {split!r}")
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    side = float(np.sqrt(height * width))
    rng = np.random.default_rng([seed, _SPLIT_SEED[split], index, *spec.stream])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = _background(height, width, rng, yy, xx)  # drawn before the scene: it does not tell the scene
    mask = np.zeros((height, width), np.uint8)

    probs = np.array([p for p, _ in spec.scenes])
    scene = spec.scenes[rng.choice(len(spec.scenes), p=probs / probs.sum())][1]
    classes = [c for c, p in scene.items() if rng.random() < p]
    if not classes:
        classes = [list(scene)[rng.integers(len(scene))]]
    objects = []
    for c in classes:
        objects.append(c)
        if c in spec.repeats and rng.random() < spec.repeats[c]:
            objects.append(c)
    rng.shuffle(objects)
    for c in objects:
        shape, tex, colour = spec.styles[c]
        r = rng.uniform(*spec.radius) * side
        cy, cx = rng.uniform(r * 0.8, height - r * 0.8), rng.uniform(r * 0.8, width - r * 0.8)
        m = _shape_mask(shape, yy, xx, cy, cx, r, rng)
        col = np.clip(np.array(colour) + rng.uniform(-30, 30, size=3), 0, 255)
        t = _texture(tex, yy, xx, rng)
        obj = col[None, None, :] * (0.65 + 0.35 * t[..., None])
        img[m] = obj[m]
        mask[m] = c
    img = img + rng.normal(0, 6, size=img.shape)
    image = np.clip(img, 0, 255).astype(np.uint8)
    labels = np.zeros(len(spec.classes) - 1, np.float32)
    for c in np.unique(mask):
        if c:
            labels[c - 1] = 1.0
    if not labels.any():  # every object fully occluded cannot happen with >= 1 object, but stay safe
        labels[objects[-1] - 1] = 1.0
    return {"id": f"{spec.id_prefix}_{split}_{index:05d}", "image": image, "mask": mask, "labels": labels}


class SyntheticShapes(SegmentationDataset):
    """A built-in dataset (:data:`SYNTHETIC` here; :class:`ContextScenes`: :data:`CONTEXT`): ``num_images``
    samples of ``split``, generated on first access and cached.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.  num_images: samples.  size: image side (64 or 96 are good).
        seed: dataset seed; the same seed gives the same images.
    """

    spec: SceneSpec = SYNTHETIC

    def __init__(self, split: str = "train", num_images: int = 512, size: int = 64, seed: int = 0) -> None:
        cls = type(self).__name__
        if split not in _SPLIT_SEED:
            raise ValueError(f"{cls}: split must be one of {list(_SPLIT_SEED)}, got {split!r}")
        if num_images < 1 or size < 16:
            raise ValueError(f"{cls}: need num_images >= 1 and size >= 16, got {num_images}, {size}")
        prefix = self.spec.id_prefix
        super().__init__([f"{prefix}_{split}_{i:05d}" for i in range(num_images)], self.spec.classes)
        self.name = self.spec.name
        self.split, self.size, self.seed = split, size, seed
        self._cache: dict[int, dict[str, Any]] = {}

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"{type(self).__name__}: index {index} out of range [0, {len(self)})")
        if index not in self._cache:
            self._cache[index] = make_sample(self.seed, self.split, index, self.size, self.spec)
        s = self._cache[index]
        return {"id": s["id"], "image": s["image"], "mask": s["mask"], "labels": s["labels"]}


class ContextScenes(SyntheticShapes):
    """The ``context`` dataset (:data:`CONTEXT`): cat and dog look alike, only their companions tell them apart.
    Arguments as :class:`SyntheticShapes`."""

    spec = CONTEXT


_NAMES_IN = {"voc": {}, "coco": {"sofa": "couch"}}  # built-in class name -> the dataset's name


def dataset_class_index(synthetic_class: int, dataset: str = "voc", spec: SceneSpec | str = SYNTHETIC) -> int:
    """The label of a built-in class in ``dataset`` (``"voc"``: 0 background, 1 person ... 6 sofa -> 0, 15, 2, 13,
    7, 12, 18; ``"coco"``: 0, 1, 2, 18, 3, 17, 58; ``spec`` :data:`CONTEXT`: VOC 0, 15, 8, 12, 18, 13, 17)."""
    from grmseg.knowledge import class_names

    if dataset not in _NAMES_IN:
        raise ValueError(f"dataset must be one of {list(_NAMES_IN)}, got {dataset!r}")
    name = scene_spec(spec).classes[synthetic_class]
    return class_names(dataset).index(_NAMES_IN[dataset].get(name, name))


def _side(rng: np.random.Generator, lo: int, hi: int, odd_only: bool) -> int:
    while True:
        side = int(rng.integers(lo, hi + 1))
        if side % 16 or not odd_only:
            return side


def write_layout(root: str | os.PathLike, layout: str = "voc", train_images: int = 1024, val_images: int = 128,
                 seed: int = 0, min_size: int = 61, max_size: int = 95, quality: int = 95,
                 odd_only: bool = True, spec: SceneSpec | str = SYNTHETIC) -> Path:
    """Write the scenes of a built-in dataset (``spec``: :data:`SYNTHETIC` or :data:`CONTEXT`) as a PASCAL VOC 2012
    or COCO-2014 folder, at sizes that are no multiple of 16.

    Image ``i`` of a split is the scene of :func:`make_sample` ``(seed, split, i, spec=spec)`` at a height and width drawn
    from ``[min_size, max_size]`` (skipping multiples of 16 when ``odd_only``), saved as a JPEG (``quality``, no chroma
    subsampling, so that colour edges survive as in a good photograph) with its mask in the
    dataset's class indices as a palette PNG. VOC: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``,
    ``ImageSets/Segmentation/{train,train_aug,val}.txt``. COCO: ``JPEGImages/<split>2014/``,
    ``SegmentationClass/<split>2014/``, ``ImageSets/{train,val}.txt``. Ids are those of the square dataset
    (``syn_<split>_<i>``, ``ctx_<split>_<i>``). Existing files are rewritten (the output is a function of the arguments).

    Returns:
        ``root`` (the folder to pass as ``--data-root``).
    """
    from grmseg._optional import optional_import
    from grmseg.pipeline.datasets.base import save_png_atomic, voc_palette

    Image = optional_import("PIL.Image", "writing a dataset folder")

    if layout not in _NAMES_IN:
        raise ValueError(f"write_layout: layout must be one of {list(_NAMES_IN)}, got {layout!r}")
    if not 16 <= min_size <= max_size:
        raise ValueError(f"write_layout: need 16 <= min_size <= max_size, got {min_size}, {max_size}")
    if odd_only and all(v % 16 == 0 for v in range(min_size, max_size + 1)):
        raise ValueError(f"write_layout: every size in [{min_size}, {max_size}] is a multiple of 16 (odd_only)")
    root = Path(root)
    spec = scene_spec(spec)
    lut = np.array([dataset_class_index(c, layout, spec) for c in range(len(spec.classes))], np.uint8)
    pal = voc_palette()
    for split, n in (("train", train_images), ("val", val_images)):
        sub = "" if layout == "voc" else f"{split}2014"
        images, masks = root / "JPEGImages" / sub, root / "SegmentationClass" / sub
        images.mkdir(parents=True, exist_ok=True)
        ids = []
        for i in range(n):
            rng = np.random.default_rng([seed, _SPLIT_SEED[split], i, 16])
            size = (_side(rng, min_size, max_size, odd_only), _side(rng, min_size, max_size, odd_only))
            smp = make_sample(seed, split, i, size, spec)
            Image.fromarray(smp["image"]).save(images / f"{smp['id']}.jpg", quality=quality, subsampling=0)
            save_png_atomic(masks / f"{smp['id']}.png", lut[smp["mask"]], pal)
            ids.append(smp["id"])
        sets = root / "ImageSets" / ("Segmentation" if layout == "voc" else "")
        sets.mkdir(parents=True, exist_ok=True)
        for name in [split] + (["train_aug"] if split == "train" and layout == "voc" else []):
            (sets / f"{name}.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    return root
