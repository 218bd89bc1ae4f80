"""Pseudo masks from CAMs: background handling, argmax to dataset labels, confident regions.

Conventions (IRN / PSA, in torch, batched):

* ``cams [B, K, h, w]``: one channel per foreground class of the dataset (what :func:`grmseg.ops.cam` returns:
  absent classes are zero), or one channel per class *present in the image* together with ``class_indices``
  (IRN stores ``cam[keys]`` this way).
* ``labels [B, K]``: multi-hot image labels (non-zero = present); absent classes never win the argmax.
* ``class_indices``: the dataset label of each channel, ``[K]`` or ``[B, K]`` int; by default channel ``k`` is
  dataset class ``k + 1`` (background is 0, VOC's numbering).
* Background: a constant threshold channel (IRN: ``sem_seg_bg_thres`` 0.25 on walked CAMs, ``conf_fg`` /
  ``conf_bg`` for the confident regions), or PSA's ``(1 - max_k cam)^alpha`` (alpha 16 in PSA; 4 / 24 for its
  confident fg / bg regions). The background is channel 0 of a ``[B, 1 + K, h, w]`` score tensor.
* Ignore label 255 for the uncertain pixels of the confident regions (the targets of affinity heads).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from grmseg import ops
from grmseg.geometry import upsample_to_image

__all__ = [
    "IGNORE_INDEX",
    "background_channel",
    "confident_masks",
    "propagate",
    "psa_grid_scores",
    "pseudo_masks",
    "scores_to_labels",
    "with_background",
]

IGNORE_INDEX = 255


def _check_cams(cams: Tensor, name: str = "cams") -> None:
    if not isinstance(cams, Tensor) or cams.dim() != 4:
        shape = list(cams.shape) if isinstance(cams, Tensor) else type(cams).__name__
        raise ValueError(f"argument '{name}' must be a tensor of shape [B, K, h, w], got {shape}")
    if not cams.is_floating_point():
        raise TypeError(f"argument '{name}' must be a floating tensor, got {cams.dtype}")


def _check_background(threshold: float | None, alpha: float | None) -> None:
    if (threshold is None) == (alpha is None):
        raise ValueError(
            "give exactly one of 'threshold' (IRN: a constant background score) and 'alpha' "
            f"(PSA: (1 - max fg)^alpha), got threshold={threshold!r}, alpha={alpha!r}"
        )


def background_channel(cams: Tensor, *, threshold: float | None = None, alpha: float | None = None) -> Tensor:
    """The background score of every pixel.

    Args:
        cams: ``[B, K, h, w]`` foreground scores (normalised CAMs in ``[0, 1]``).
        threshold: IRN: a constant background score.  alpha: PSA: ``(1 - max_k cam)^alpha``. Exactly one.

    Returns:
        ``[B, 1, h, w]`` in the dtype of ``cams``. With no foreground channel (``K = 0``) PSA's score is 1.
    """
    _check_cams(cams)
    _check_background(threshold, alpha)
    bsz, _, h, w = cams.shape
    if threshold is not None:
        return cams.new_full((bsz, 1, h, w), float(threshold))
    if cams.shape[1] == 0:
        return cams.new_ones(bsz, 1, h, w)
    top = cams.amax(dim=1, keepdim=True)
    return (1.0 - top).clamp_min(0.0).pow(float(alpha))


def with_background(cams: Tensor, *, threshold: float | None = None, alpha: float | None = None) -> Tensor:
    """``cams`` with the background score prepended as channel 0.

    Args:
        cams: ``[B, K, h, w]``.  threshold / alpha: as for :func:`background_channel`.

    Returns:
        ``[B, 1 + K, h, w]``.
    """
    return torch.cat([background_channel(cams, threshold=threshold, alpha=alpha), cams], dim=1)


def _class_table(class_indices: Tensor | Sequence[int] | None, bsz: int, k: int, device: torch.device) -> Tensor:
    """``[B, 1 + K]`` int64: the dataset label of every channel of a background-first score tensor."""
    if class_indices is None:
        table = torch.arange(1, k + 1, device=device).expand(bsz, k)
    else:
        table = torch.as_tensor(class_indices, device=device).long()
        if table.dim() == 1:
            table = table.expand(bsz, -1)
        if table.shape != (bsz, k):
            raise ValueError(f"argument 'class_indices' must have shape [K] or [B, K] = [{bsz}, {k}], "
                             f"got {list(table.shape)}")
    return torch.cat([table.new_zeros(bsz, 1), table], dim=1)


def scores_to_labels(
    scores: Tensor,
    labels: Tensor | None = None,
    class_indices: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """Argmax of background-first scores, as dataset labels.

    Args:
        scores: ``[B, 1 + K, h, w]``, channel 0 the background.
        labels: ``[B, K]`` multi-hot image labels or None; absent classes never win.
        class_indices: dataset label of each foreground channel, ``[K]`` or ``[B, K]`` (default ``k + 1``).

    Returns:
        ``[B, h, w]`` int64: 0 for background, else the dataset label of the winning channel. Ties go to the
        lower channel (background first), as ``argmax`` does.
    """
    _check_cams(scores, "scores")
    bsz, k1, h, w = scores.shape
    k = k1 - 1
    if k < 0:
        raise ValueError("argument 'scores' needs the background channel (shape [B, 1 + K, h, w])")
    s = scores.float()
    if labels is not None:
        if labels.shape != (bsz, k):
            raise ValueError(f"argument 'labels' must have shape [B, K] = [{bsz}, {k}], got {list(labels.shape)}")
        present = torch.cat([labels.new_ones(bsz, 1, dtype=torch.bool), labels.to(scores.device) != 0], dim=1)
        s = s.masked_fill(~present[:, :, None, None], float("-inf"))
    s = torch.nan_to_num(s, nan=float("-inf"))
    winner = s.argmax(dim=1)  # [B, h, w]
    table = _class_table(class_indices, bsz, k, scores.device)
    return table.gather(1, winner.reshape(bsz, -1)).reshape(bsz, h, w)


def pseudo_masks(
    cams: Tensor,
    labels: Tensor | None = None,
    *,
    bg_threshold: float | None = None,
    bg_alpha: float | None = None,
    class_indices: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """Segmentation pseudo masks: add the background (threshold or PSA power), argmax, dataset labels.

    Args:
        cams: ``[B, K, h, w]`` foreground scores (e.g. walked CAMs normalised to ``[0, 1]``).
        labels: ``[B, K]`` multi-hot image labels or None.
        bg_threshold: IRN's constant background score (e.g. 0.25).  bg_alpha: PSA's alpha. Exactly one.
        class_indices: as for :func:`scores_to_labels`.

    Returns:
        ``[B, h, w]`` int64 labels (0 = background). An image with no foreground label is all background.
    """
    scores = with_background(cams, threshold=bg_threshold, alpha=bg_alpha)
    return scores_to_labels(scores, labels, class_indices)


def confident_masks(
    cams: Tensor,
    labels: Tensor | None = None,
    *,
    conf_fg: float | None = 0.30,
    conf_bg: float | None = 0.05,
    fg_alpha: float | None = None,
    bg_alpha: float | None = None,
    class_indices: Tensor | Sequence[int] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Confident foreground / background regions with the rest ignored: the targets of affinity heads.

    IRN (``cam_to_ir_label``, without its CRF): a pixel is foreground class c where c wins against a background
    of ``conf_fg`` (0.30; 0.35 in ReCAM), background where the background wins even at the lower ``conf_bg``
    (0.05; 0.10), else ignored. PSA: the same with the backgrounds ``(1 - max fg)^fg_alpha`` (4: a weak
    background, confident foreground) and ``(1 - max fg)^bg_alpha`` (24: a strong background, confident
    background); pass ``conf_fg=None, conf_bg=None`` with the alphas.

    Args:
        cams: ``[B, K, h, w]`` normalised CAMs.  labels: ``[B, K]`` multi-hot or None.
        conf_fg, conf_bg: IRN thresholds (``conf_bg <= conf_fg``).  fg_alpha, bg_alpha: PSA powers (``fg < bg``).
        class_indices: as for :func:`scores_to_labels`.  ignore_index: the label of uncertain pixels.

    Returns:
        ``[B, h, w]`` int64: dataset labels where confident, ``ignore_index`` elsewhere.
    """
    fg = scores_to_labels(with_background(cams, threshold=conf_fg, alpha=fg_alpha), labels, class_indices)
    bg = scores_to_labels(with_background(cams, threshold=conf_bg, alpha=bg_alpha), labels, class_indices)
    out = torch.where(fg == 0, torch.full_like(fg, ignore_index), fg)
    return torch.where((fg == 0) & (bg == 0), torch.zeros_like(fg), out)


def psa_grid_scores(high_res: Tensor, stride: int, alpha: float) -> Tensor:
    """PSA's walk input: background ``(1 - max fg)^alpha`` at full CAM resolution, then ``stride x stride``
    average pooling of background and classes onto the stride grid (the image zero-padded to a stride multiple).

    Args:
        high_res: ``[B, K, H, W]`` normalised CAMs on the image pixels.  stride: the grid (PSA: 8).

    Returns:
        ``[B, 1 + K, ceil(H / stride), ceil(W / stride)]``, channel 0 the background.
    """
    _check_cams(high_res, "high_res")
    full = with_background(high_res, alpha=alpha)
    if stride == 1:
        return full
    h, w = full.shape[-2:]
    full = F.pad(full, (0, -w % stride, 0, -h % stride))
    return F.avg_pool2d(full, stride)


def propagate(
    cams: Tensor,
    aff: Tensor,
    *,
    beta: float = 10.0,
    steps: int = 256,
    bg_threshold: float | None = 0.25,
    bg_alpha: float | None = None,
    boundary: Tensor | None = None,
    stride: int = 1,
    image_size: tuple[int, int] | None = None,
    backend: str = "auto",
) -> Tensor:
    """Random-walk refinement of CAMs into background-first scores on the image (input of :func:`scores_to_labels`).

    IRN (``bg_threshold``): ``cams`` are on the stride grid of ``aff``; they are multiplied by ``1 - boundary``
    (when given), walked, upsampled by exactly ``stride`` onto ``image_size`` (and cropped), divided by the
    maximum over classes and pixels of each image, and the constant background channel is prepended.
    PSA (``bg_alpha``): ``cams`` are at full resolution (``image_size``); :func:`psa_grid_scores` pools them with
    their background onto the grid, the walk runs on all channels, and the result is upsampled back.

    Args:
        cams: IRN ``[B, K, h, w]`` on the grid; PSA ``[B, K, H, W]`` on the pixels.  aff: ``[B, D, h, w]``.
        beta, steps: of :func:`grmseg.ops.random_walk` (IRN 10 / 256, PSA 8 / 256).
        bg_threshold / bg_alpha: exactly one.  boundary: ``[B, 1, h, w]`` in ``[0, 1]`` or None (IRN only).
        stride: the grid stride of ``aff``.  image_size: ``(H, W)``; None: the scores stay on the grid (IRN;
            PSA then needs ``stride == 1``).
        backend: as for :func:`grmseg.ops.random_walk`.

    Returns:
        ``[B, 1 + K, H, W]`` (or ``[B, 1 + K, h, w]``) scores, channel 0 the background. An image whose walked
        scores are all zero is all background.
    """
    _check_cams(cams)
    _check_background(bg_threshold, bg_alpha)
    if bg_alpha is not None:
        if image_size is None and stride != 1:
            raise ValueError("propagate: PSA mode needs 'image_size' when stride > 1 (its CAMs are full size)")
        scores = psa_grid_scores(cams, stride, bg_alpha)
        walked = ops.random_walk(scores, aff.to(scores.dtype), beta, steps, backend=backend)
        return walked if image_size is None else upsample_to_image(walked, stride, image_size)
    if cams.shape[1] == 0:  # nothing to walk: background only
        out = cams if image_size is None else cams.new_zeros(cams.shape[0], 0, *image_size)
        return with_background(out, threshold=bg_threshold)
    x = cams if boundary is None else cams * (1.0 - boundary.to(cams.dtype))
    rw = ops.random_walk(x, aff.to(x.dtype), beta, steps, backend=backend)
    if image_size is not None:
        rw = upsample_to_image(rw, stride, image_size)
    top = rw.flatten(1).amax(dim=1)[:, None, None, None]
    rw = torch.where(top > 0, rw / torch.where(top > 0, top, torch.ones_like(top)), torch.zeros_like(rw))
    return with_background(rw, threshold=bg_threshold)
