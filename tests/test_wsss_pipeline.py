"""Pseudo masks (background, argmax, confident regions, random-walk refinement) and CAM aggregation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from grmseg import reference
from grmseg.pipeline.pseudo_masks import (
    IGNORE_INDEX,
    background_channel,
    confident_masks,
    propagate,
    pseudo_masks,
    scores_to_labels,
    with_background,
)


def _cams():
    """[1, 3, 1, 5]: pixel 0 class 0 strong, 1 class 1 medium, 2 weak, 3 nothing, 4 class 2 strong."""
    c = torch.zeros(1, 3, 1, 5)
    c[0, 0, 0, 0] = 0.9
    c[0, 1, 0, 1] = 0.2
    c[0, 0, 0, 2] = 0.07
    c[0, 2, 0, 4] = 0.6
    return c


def test_background_threshold_and_power():
    c = _cams()
    assert torch.equal(background_channel(c, threshold=0.25), torch.full((1, 1, 1, 5), 0.25))
    psa = background_channel(c, alpha=2.0)
    torch.testing.assert_close(psa[0, 0, 0], (1 - c.amax(1)[0, 0]) ** 2)
    assert with_background(c, threshold=0.1).shape == (1, 4, 1, 5)
    with pytest.raises(ValueError, match="exactly one"):
        background_channel(c)
    with pytest.raises(ValueError, match="exactly one"):
        background_channel(c, threshold=0.2, alpha=2.0)


def test_pseudo_masks_labels_and_class_indices():
    c = _cams()
    assert pseudo_masks(c, bg_threshold=0.1).tolist() == [[[1, 2, 0, 0, 3]]]
    assert pseudo_masks(c, bg_threshold=0.3).tolist() == [[[1, 0, 0, 0, 3]]]
    # class 2 absent from the labels: it never wins
    assert pseudo_masks(c, torch.tensor([[1, 1, 0]]), bg_threshold=0.1).tolist() == [[[1, 2, 0, 0, 0]]]
    # channels are the image's present classes, with their dataset indices (IRN's keys)
    assert pseudo_masks(c, bg_threshold=0.1, class_indices=[5, 9, 15]).tolist() == [[[5, 9, 0, 0, 15]]]
    per_image = torch.tensor([[4, 7, 11], [1, 2, 3]])
    two = torch.cat([c, c])
    assert pseudo_masks(two, bg_threshold=0.1, class_indices=per_image)[:, 0, 0].tolist() == [4, 1]
    # PSA background: (1 - 0.07)^16 > 0.07 at pixel 2, (1 - 0.6)^16 < 0.6 at pixel 4
    assert pseudo_masks(c, bg_alpha=16.0).tolist() == [[[1, 2, 0, 0, 3]]]


def test_no_foreground_label_is_all_background():
    c = torch.rand(2, 4, 6, 7)
    labels = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]])
    out = pseudo_masks(c, labels, bg_threshold=0.25)
    assert (out[0] == 0).all()
    assert set(out[1].unique().tolist()) <= {0, 2}
    conf = confident_masks(c, labels)
    assert (conf[0] == 0).all(), "no foreground class: every pixel is confident background"
    empty = torch.zeros(1, 0, 3, 3)
    assert (pseudo_masks(empty, bg_threshold=0.25) == 0).all()


def test_scores_to_labels_ties_and_nan():
    s = torch.tensor([[[[0.5]], [[0.5]], [[float("nan")]]]])  # [1, 3, 1, 1]: bg ties class 1, class 2 NaN
    assert scores_to_labels(s).item() == 0
    with pytest.raises(ValueError, match="labels"):
        scores_to_labels(s, torch.ones(1, 5))


def test_confident_masks_irn_and_psa():
    c = _cams()
    irn = confident_masks(c, conf_fg=0.30, conf_bg=0.05)
    assert irn.tolist() == [[[1, IGNORE_INDEX, IGNORE_INDEX, 0, 3]]]
    recam = confident_masks(c, conf_fg=0.35, conf_bg=0.10)
    assert recam.tolist() == [[[1, IGNORE_INDEX, 0, 0, 3]]]
    psa = confident_masks(c, conf_fg=None, conf_bg=None, fg_alpha=4.0, bg_alpha=24.0)
    # fg: 0.9 > 0.1^4, 0.2 < 0.8^4 = 0.41, 0.6 > 0.4^4; bg: 0.07 < 0.93^24 = 0.17, 0.2 > 0.8^24
    assert psa.tolist() == [[[1, IGNORE_INDEX, 0, 0, 3]]]
    assert confident_masks(c, ignore_index=-1)[0, 0, 1] == -1


def test_propagate_irn_and_psa():
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(2, 3, 9, 11, generator=g)
    bd = torch.rand(2, 1, 9, 11, generator=g) ** 3
    aff = reference.boundary_affinity(bd, 5)
    irn = propagate(cams, aff, beta=10.0, steps=7, bg_threshold=0.25, boundary=bd, backend="reference")
    assert irn.shape == (2, 4, 9, 11) and torch.isfinite(irn).all()
    assert (irn[:, 0] == 0.25).all() and irn[:, 1:].amax() == 1
    walked = reference.random_walk(cams * (1 - bd), aff, 10.0, 7)
    torch.testing.assert_close(irn[:, 1:], walked / walked.flatten(1).amax(1)[:, None, None, None])
    # IRN on the image: upsample by exactly the stride, crop, then divide by the maximum of the upsampled walk
    up = propagate(cams, aff, beta=10.0, steps=7, bg_threshold=0.25, boundary=bd, stride=4, image_size=(34, 43),
                   backend="reference")
    by_hand = F.interpolate(walked, scale_factor=4, mode="bilinear", align_corners=False)[..., :34, :43]
    torch.testing.assert_close(up[:, 1:], by_hand / by_hand.flatten(1).amax(1)[:, None, None, None])
    assert up.shape == (2, 4, 34, 43) and (up[:, 0] == 0.25).all()
    # PSA: background (1 - max)^alpha of the full-size CAMs, average-pooled with them onto the grid, walked
    full = torch.rand(2, 3, 34, 43, generator=g)
    psa = propagate(full, aff, beta=8.0, steps=7, bg_threshold=None, bg_alpha=16.0, stride=4, image_size=(34, 43),
                    backend="csrc")
    scores = with_background(full, alpha=16.0)
    pooled = F.avg_pool2d(F.pad(scores, (0, 1, 0, 2)), 4)
    assert pooled.shape[-2:] == (9, 11)
    expected = reference.random_walk(pooled, aff, 8.0, 7)
    expected = F.interpolate(expected, scale_factor=4, mode="bilinear", align_corners=False)[..., :34, :43]
    torch.testing.assert_close(psa, expected, rtol=1e-4, atol=1e-5)
    masks = scores_to_labels(irn)
    assert masks.shape == (2, 9, 11) and masks.max() <= 3
    zero = propagate(torch.zeros(1, 2, 9, 11), aff[:1], beta=10.0, steps=3, bg_threshold=0.25, backend="reference")
    assert (scores_to_labels(zero) == 0).all() and torch.isfinite(zero).all()


