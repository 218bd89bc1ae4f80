"""Datasets of the WSSS pipeline: PASCAL VOC 2012 (+SBD), COCO-2014, and the built-in ``synthetic`` and ``context``
scenes."""

from __future__ import annotations

from typing import Any

from grmseg.pipeline.datasets.base import (
    IGNORE_INDEX,
    SegmentationDataset,
    labels_from_mask,
    load_image,
    load_label_file,
    load_mask,
    save_png_atomic,
    voc_palette,
)
from grmseg.pipeline.datasets.synthetic import (
    CONTEXT_CLASSES,
    SCENE_SPECS,
    SYNTHETIC_CLASSES,
    ContextScenes,
    SceneSpec,
    SyntheticShapes,
    make_sample,
)
from grmseg.pipeline.datasets.voc import COCOSegmentation, VOCSegmentation

__all__ = [
    "CONTEXT_CLASSES",
    "IGNORE_INDEX",
    "SCENE_SPECS",
    "SYNTHETIC_CLASSES",
    "COCOSegmentation",
    "ContextScenes",
    "SceneSpec",
    "SegmentationDataset",
    "SyntheticShapes",
    "VOCSegmentation",
    "build_dataset",
    "labels_from_mask",
    "load_image",
    "load_label_file",
    "load_mask",
    "make_sample",
    "save_png_atomic",
    "voc_palette",
]


def build_dataset(name: str, split: str, root: str | None = None, cls_labels: str | None = None,
                  **synthetic: Any) -> SegmentationDataset:
    """A dataset by name: the built-in ``"synthetic"`` or ``"context"`` (``synthetic`` kwargs: num_images, size,
    seed), ``"voc"``, ``"coco"``.

    ``root`` is required for VOC and COCO.
    """
    if name == "synthetic":
        return SyntheticShapes(split, **synthetic)
    if name == "context":
        return ContextScenes(split, **synthetic)
    if name in ("voc", "coco"):
        if not root:
            raise ValueError(f"dataset {name!r} needs a root folder (--data-root)")
        cls = VOCSegmentation if name == "voc" else COCOSegmentation
        return cls(root, split, cls_labels=cls_labels)
    raise ValueError(f"unknown dataset {name!r}: expected 'synthetic', 'context', 'voc' or 'coco'")
