"""Pictures (Pillow + numpy): image | CAM heat map | pseudo mask | prediction | ground truth, side by side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from grmseg._optional import optional_import
from grmseg.pipeline.datasets.base import voc_palette

PANEL_TITLES = ("image", "CAM", "pseudo mask", "prediction", "ground truth")


def colorize(mask: np.ndarray) -> np.ndarray:
    """Class-index map ``[H, W]`` -> uint8 RGB ``[H, W, 3]`` in the VOC colours (255 = ignore, light grey)."""
    pal = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
    return pal[mask.astype(np.int64).clip(0, 255)]


def cam_heatmap(image: np.ndarray, cams: np.ndarray, keys: Sequence[int]) -> np.ndarray:
    """CAMs over the image: each pixel takes the colour of its strongest class, as strong as the CAM value.

    Args:
        image: uint8 ``[H, W, 3]``.  cams: ``[n, H, W]`` in ``[0, 1]`` for the classes ``keys`` (1-based).

    Returns:
        uint8 ``[H, W, 3]``.
    """
    gray = image.astype(np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2) * 0.6
    if len(keys) == 0:
        return gray.astype(np.uint8)
    pal = np.asarray(voc_palette(), dtype=np.float32).reshape(256, 3)
    v = np.clip(cams.max(axis=0), 0, 1)[..., None]
    c = np.asarray(keys)[cams.argmax(axis=0)]
    out = (1 - v) * gray + v * pal[c]
    return np.clip(out, 0, 255).astype(np.uint8)


def _label(text: str, width: int, height: int = 14) -> np.ndarray:
    Image = optional_import("PIL.Image", "drawing the report's figures")
    ImageDraw = optional_import("PIL.ImageDraw", "drawing the report's figures")

    im = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(im).text((2, 1), text, fill=(0, 0, 0))
    return np.asarray(im)


def figure_row(panels: Sequence[np.ndarray | None], scale: int = 1) -> np.ndarray:
    """Panels (uint8 ``[H, W, 3]``, or None for a blank one) -> one uint8 row with 4-pixel white gaps."""
    h, w = next(p for p in panels if p is not None).shape[:2]
    gap = np.full((h * scale, 4, 3), 255, np.uint8)
    out = []
    for p in panels:
        p = np.full((h, w, 3), 255, np.uint8) if p is None else p
        out += [p.repeat(scale, axis=0).repeat(scale, axis=1), gap]
    return np.concatenate(out[:-1], axis=1)


def figure(rows: Sequence[Sequence[np.ndarray | None]], titles: Sequence[str] = PANEL_TITLES,
           scale: int = 1) -> np.ndarray:
    """Rows of panels with a title line on top: uint8 ``[H_total, W_total, 3]``."""
    body = [figure_row(r, scale) for r in rows]
    width = max(b.shape[1] for b in body)
    panel_w = (width - 4 * (len(titles) - 1)) // len(titles)
    pieces = []
    for t in titles:
        pieces += [_label(t, panel_w), np.full((14, 4, 3), 255, np.uint8)]
    head = np.concatenate(pieces[:-1], axis=1)
    head = np.pad(head, ((0, 0), (0, width - head.shape[1]), (0, 0)), constant_values=255)
    parts = [head]
    for b in body:
        parts += [np.full((4, width, 3), 255, np.uint8), np.pad(b, ((0, 0), (0, width - b.shape[1]), (0, 0)),
                                                             constant_values=255)]
    return np.concatenate(parts, axis=0)
