"""PASCAL VOC 2012 (+ SBD ``train_aug``) and COCO-2014 in the usual WSSS folder layouts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from grmseg.knowledge import class_names as dataset_class_names
from grmseg.pipeline.datasets.base import (
    SegmentationDataset,
    labels_from_mask,
    load_image,
    load_label_file,
    load_mask,
    read_id_list,
    require_dir,
    require_file,
)


class _FolderDataset(SegmentationDataset):
    """Images ``image_dir/<id><image_ext>``, masks ``mask_dir/<id>.png``, ids from a list file."""

    def __init__(self, ids: list[str], class_names: list[str], image_dir: Path, mask_dir: Path | None,
                 labels: dict[str, np.ndarray] | None, image_ext: str = ".jpg") -> None:
        super().__init__(ids, class_names)
        self.image_dir, self.mask_dir, self.image_ext = image_dir, mask_dir, image_ext
        self._labels = labels
        if labels is not None:
            missing = [i for i in self.ids if i not in labels]
            if missing and mask_dir is None:
                raise ValueError(f"{self.name}: no image-level labels for {len(missing)} image(s), e.g. "
                                 f"{missing[:3]}, and no mask folder to derive them from")

    def mask_path(self, image_id: str) -> Path | None:
        """Where the mask of ``image_id`` is, or None without a mask folder."""
        return None if self.mask_dir is None else self.mask_dir / f"{image_id}.png"

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        image = load_image(self.image_dir / f"{image_id}{self.image_ext}")
        mask = None
        mp = self.mask_path(image_id)
        if mp is not None and mp.is_file():
            mask = load_mask(mp, self.num_classes)
            if mask.shape != image.shape[:2]:
                raise ValueError(f"{self.name}: mask {str(mp)!r} has size {mask.shape} but its image has "
                                 f"{image.shape[:2]}")
        if self._labels is not None and image_id in self._labels:
            labels = self._labels[image_id]
        elif mask is not None:
            labels = labels_from_mask(mask, self.num_classes)
        else:
            raise FileNotFoundError(f"{self.name}: image {image_id!r} has neither a mask ({mp}) nor an entry in "
                                    f"the label file")
        return {"id": image_id, "image": image, "mask": mask, "labels": labels}


class VOCSegmentation(_FolderDataset):
    """PASCAL VOC 2012 in the standard WSSS layout::

        root/JPEGImages/<id>.jpg
        root/SegmentationClassAug/<id>.png     (SBD-augmented masks; else root/SegmentationClass/)
        root/ImageSets/Segmentation/{train_aug,train,val}.txt

    Image-level labels come from ``cls_labels`` (IRN's ``cls_labels.npy``, or a .json / .txt label list, see
    :func:`grmseg.pipeline.datasets.base.load_label_file`) when given, else from the masks.

    Args:
        root: the ``VOC2012`` folder.  split: ``"train_aug"``, ``"train"``, ``"val"`` or any list in ImageSets.
        cls_labels: optional label file.  mask_dir: optional mask folder (overrides the Aug/plain choice).
    """

    name = "voc"

    def __init__(self, root: str | os.PathLike, split: str = "train_aug", cls_labels: str | os.PathLike | None = None,
                 mask_dir: str | os.PathLike | None = None) -> None:
        root = require_dir(root, "VOC root")
        image_dir = require_dir(root / "JPEGImages", "VOC images")
        list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        require_file(list_file, f"VOC split {split!r}")
        if mask_dir is not None:
            masks: Path | None = require_dir(mask_dir, "VOC masks")
        elif (root / "SegmentationClassAug").is_dir():
            masks = root / "SegmentationClassAug"
        elif (root / "SegmentationClass").is_dir():
            masks = root / "SegmentationClass"
        else:
            masks = None
        names = dataset_class_names("voc")
        labels = None if cls_labels is None else load_label_file(cls_labels, names)
        if masks is None and labels is None:
            raise FileNotFoundError(f"VOC: neither {str(root / 'SegmentationClassAug')!r} nor "
                                    f"{str(root / 'SegmentationClass')!r} exists, and no cls_labels file was given")
        super().__init__(read_id_list(list_file), names, image_dir, masks, labels)
        self.split = split


class COCOSegmentation(_FolderDataset):
    """COCO-2014 in the usual WSSS layout (class-index PNG masks, 0 = background, 1..80 in category-id order)::

        root/JPEGImages/{train2014,val2014}/<id>.jpg
        root/SegmentationClass/{train2014,val2014}/<id>.png
        root/ImageSets/{train,val}.txt              (ids: file stems, e.g. COCO_train2014_000000000009)

    Args:
        root: dataset root.  split: ``"train"`` or ``"val"`` (the image folder is ``<split>2014``).
        cls_labels: optional label file (IRN-style ``cls_labels_coco.npy``, .json or .txt).
        image_subdir / mask_subdir: override the ``<split>2014`` sub-folder names.
    """

    name = "coco"

    def __init__(self, root: str | os.PathLike, split: str = "train", cls_labels: str | os.PathLike | None = None,
                 image_subdir: str | None = None, mask_subdir: str | None = None) -> None:
        root = require_dir(root, "COCO root")
        sub = f"{split}2014"
        image_dir = require_dir(root / "JPEGImages" / (image_subdir or sub), "COCO images")
        mdir = root / "SegmentationClass" / (mask_subdir or sub)
        masks = mdir if mdir.is_dir() else None
        list_file = root / "ImageSets" / f"{split}.txt"
        require_file(list_file, f"COCO split {split!r}")
        names = dataset_class_names("coco")
        labels = None if cls_labels is None else load_label_file(cls_labels, names)
        if masks is None and labels is None:
            raise FileNotFoundError(f"COCO: mask folder {str(mdir)!r} does not exist and no cls_labels file was given")
        super().__init__(read_id_list(list_file), names, image_dir, masks, labels)
        self.split = split
