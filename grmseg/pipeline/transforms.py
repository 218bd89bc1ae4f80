"""Training augmentation for images of any size: random rescale, horizontal flip, random crop with padding.

As IRN and DeepLab: the image is rescaled by a factor drawn from ``scale_range`` (bilinear, antialiased; masks
nearest), mirrored with probability 1/2, then cut to ``crop x crop``. A side shorter than the crop is padded:
the image with 0 after normalisation (the mean colour), the mask with the ignore label 255, and the image is
placed at a random offset inside the crop box (IRN's ``random_crop``). Every draw comes from a generator seeded
by ``(seed, epoch, index, stream)``, so a sample is the same in every process and on every resume.
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from grmseg.geometry import rescaled_size
from grmseg.pipeline.datasets import IGNORE_INDEX

__all__ = ["Augment", "sample_rng"]

STREAMS = {"cls": 0, "seg": 1, "aff": 2, "irn": 3, "recam": 4}


def sample_rng(seed: int, epoch: int, index: int, stream: str) -> np.random.Generator:
    """The generator of one training sample: a pure function of its arguments (no ``hash()``)."""
    return np.random.default_rng([seed, epoch, index, STREAMS[stream]])


def _rescale(image: Tensor, mask: Tensor | None, scale: float) -> tuple[Tensor, Tensor | None]:
    size = rescaled_size(tuple(image.shape[-2:]), scale)
    if size == tuple(image.shape[-2:]):
        return image, mask
    img = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=scale < 1)[0]
    if mask is not None:
        mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].to(mask.dtype)
    return img, mask


def _crop_box(n: int, crop: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """(source start, destination start, length) along one axis for IRN's random crop."""
    if n >= crop:
        return int(rng.integers(0, n - crop + 1)), 0, crop
    return 0, int(rng.integers(0, crop - n + 1)), n


class Augment:
    """Rescale + flip + crop of one (image, mask) pair.

    Args:
        crop: output side (0: no crop, the image keeps its size).  scale_range: ``(lo, hi)`` rescale factors
            (``(1, 1)``: none).  flip: mirror with probability 1/2.

    Call: ``augment(image [3, H, W] normalised, mask [H, W] long or None, rng) -> (image, mask)``.
    """

    def __init__(self, crop: int = 0, scale_range: tuple[float, float] = (1.0, 1.0), flip: bool = True) -> None:
        if crop < 0:
            raise ValueError(f"Augment: crop must be >= 0, got {crop}")
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"Augment: scale_range must be (lo, hi) with 0 < lo <= hi, got {tuple(scale_range)}")
        self.crop, self.scale_range, self.flip = crop, (lo, hi), flip

    def __call__(self, image: Tensor, mask: Tensor | None, rng: np.random.Generator) -> tuple[Tensor, Tensor | None]:
        lo, hi = self.scale_range
        if hi > lo or lo != 1.0:
            image, mask = _rescale(image, mask, float(rng.uniform(lo, hi)) if hi > lo else lo)
        if self.flip and rng.random() < 0.5:
            image = image.flip(-1)
            mask = None if mask is None else mask.flip(-1)
        if not self.crop:
            return image.contiguous(), None if mask is None else mask.contiguous()
        h, w = image.shape[-2:]
        sy, dy, ly = _crop_box(h, self.crop, rng)
        sx, dx, lx = _crop_box(w, self.crop, rng)
        out = image.new_zeros(image.shape[0], self.crop, self.crop)
        out[:, dy:dy + ly, dx:dx + lx] = image[:, sy:sy + ly, sx:sx + lx]
        if mask is None:
            return out, None
        m = mask.new_full((self.crop, self.crop), IGNORE_INDEX)
        m[dy:dy + ly, dx:dx + lx] = mask[sy:sy + ly, sx:sx + lx]
        return out, m
