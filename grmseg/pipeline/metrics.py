"""Segmentation metrics: confusion matrix, per-class IoU, mIoU, pixel accuracy, as a table and JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from grmseg.pipeline.datasets.base import IGNORE_INDEX


def confusion_matrix(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Confusion matrix ``[K, K]`` int64, rows = ground truth, columns = prediction.

    Args:
        pred: integer class map of any shape (e.g. ``[H, W]`` or ``[B, H, W]``).
        target: integer ground truth of the same shape; ``ignore_index`` pixels are skipped.
        num_classes: K.  ignore_index: label skipped in ``target`` (255).

    Raises:
        ValueError: shapes differ, or a value is outside ``[0, K)`` (other than ``ignore_index`` in the target).
    """
    p = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    t = target.cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
    if p.shape != t.shape:
        raise ValueError(f"confusion_matrix: 'pred' has shape {p.shape} but 'target' has {t.shape}")
    p = p.astype(np.int64).ravel()
    t = t.astype(np.int64).ravel()
    keep = t != ignore_index
    p, t = p[keep], t[keep]
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"confusion_matrix: 'target' holds values outside [0, {num_classes}) other than "
                         f"{ignore_index}: {np.unique(t[(t < 0) | (t >= num_classes)]).tolist()}")
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"confusion_matrix: 'pred' holds values outside [0, {num_classes}): "
                         f"{np.unique(p[(p < 0) | (p >= num_classes)]).tolist()}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU ``TP / (TP + FP + FN)`` from a ``[K, K]`` confusion matrix; NaN where a class is absent
    from both prediction and ground truth (excluded from the mean)."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def mean_iou(conf: np.ndarray) -> float:
    """mIoU: the mean of the per-class IoUs over the classes present in prediction or ground truth."""
    iou = iou_from_confusion(conf)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


class SegmentationMeter:
    """Accumulates a confusion matrix over images; ``summary()`` gives mIoU, per-class IoU and pixel accuracy.

    Args:
        class_names: the K class names (background first).  ignore_index: skipped ground-truth label.
    """

    def __init__(self, class_names: Sequence[str], ignore_index: int = IGNORE_INDEX) -> None:
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.conf = np.zeros((len(self.class_names), len(self.class_names)), np.int64)

    def update(self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> None:
        """Add one prediction ``[H, W]`` (or a batch ``[B, H, W]``) against its ground truth of the same shape."""
        self.conf += confusion_matrix(pred, target, len(self.class_names), self.ignore_index)

    def merge(self, other: SegmentationMeter) -> None:
        """Add another meter's counts (e.g. from another process)."""
        self.conf += other.conf

    def summary(self) -> dict[str, Any]:
        """``{"miou", "pixel_accuracy", "iou": {class: IoU or None}, "confusion": [[...]]}``."""
        iou = iou_from_confusion(self.conf)
        total = self.conf.sum()
        return {
            "miou": mean_iou(self.conf),
            "pixel_accuracy": float(np.trace(self.conf) / total) if total else float("nan"),
            "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(self.class_names, iou)},
            "confusion": self.conf.tolist(),
        }


def format_table(results: dict[str, dict[str, Any]], class_names: Sequence[str]) -> str:
    """A Markdown table: one row per result (``{"CAM": summary, ...}``), mIoU then per-class IoU in %."""
    short = list(class_names)
    head = "| | mIoU | " + " | ".join(short) + " |"
    sep = "|---|---:|" + "---:|" * len(short)
    rows = [head, sep]
    for name, summary in results.items():
        cells = []
        for n in class_names:
            v = summary["iou"].get(n)
            cells.append("-" if v is None else f"{100 * v:.1f}")
        rows.append(f"| {name} | **{100 * summary['miou']:.1f}** | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def look_alike_scores(conf: np.ndarray, class_names: Sequence[str], pair: Sequence[str]) -> dict[str, Any]:
    """How well a look-alike pair ``(a, b)`` is told apart, from a ``[K, K]`` confusion matrix (rows = truth).

    Returns ``{"pair": [a, b], "iou": {a: IoU, b: IoU}, "confusion": share of the pixels of a and b (truth) predicted
    as the other one of the pair, "pixels": pixels of a and b}`` (IoU None and confusion NaN where absent).
    """
    names = list(class_names)
    for n in pair:
        if n not in names:
            raise ValueError(f"look_alike_scores: class {n!r} of pair {list(pair)} is not among {names}")
    a, b = (names.index(n) for n in pair)
    conf = np.asarray(conf, dtype=np.int64)
    iou = iou_from_confusion(conf)
    pixels = int(conf[a].sum() + conf[b].sum())
    swapped = int(conf[a, b] + conf[b, a])
    return {"pair": [names[a], names[b]],
            "iou": {names[k]: (None if np.isnan(iou[k]) else float(iou[k])) for k in (a, b)},
            "confusion": swapped / pixels if pixels else float("nan"), "pixels": pixels}
