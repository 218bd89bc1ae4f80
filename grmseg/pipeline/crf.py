"""Dense CRF post-processing in the pipeline (:func:`grmseg.ops.dense_crf`, pydensecrf's model).

* :func:`crf_labels`: IRN's ``crf_inference_label`` for the confident regions: a hard label map as unary
  (probability ``gt_prob`` 0.7 for its label), Gaussian sxy 3 / weight 3, bilateral sxy 50 / srgb 5 / weight 10,
  10 iterations.
* :func:`crf_probabilities`: PSA's / DeepLab's CRF of class scores (pseudo masks, predictions): the scores
  normalised to probabilities over the classes, the op's defaults (Gaussian 3 / 3, bilateral 80 / 13 / 10), 10
  iterations.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["IRN_LABEL_CRF", "crf_labels", "crf_probabilities", "image_tensor", "label_unary"]

IRN_LABEL_CRF = {"iterations": 10, "gaussian_sxy": 3.0, "gaussian_weight": 3.0, "bilateral_sxy": 50.0,
                 "bilateral_srgb": 5.0, "bilateral_weight": 10.0}


def image_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """uint8 ``[H, W, 3]`` -> uint8 ``[1, 3, H, W]`` (the CRF op's image)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device)


def label_unary(labels: Tensor, num_labels: int, gt_prob: float = 0.7) -> Tensor:
    """Class probabilities of a hard label map (pydensecrf's ``unary_from_labels``): ``gt_prob`` for the label,
    ``(1 - gt_prob) / (n - 1)`` for each other. ``labels [H, W]`` in ``0..n-1`` -> ``[n, H, W]`` float32."""
    if not 0 < gt_prob < 1:
        raise ValueError(f"argument 'gt_prob' must be in (0, 1), got {gt_prob}")
    other = (1.0 - gt_prob) / max(num_labels - 1, 1)
    out = torch.full((num_labels, *labels.shape), other, dtype=torch.float32, device=labels.device)
    return out.scatter_(0, labels[None].long(), gt_prob)


def crf_labels(image: np.ndarray, labels: Tensor, num_labels: int, gt_prob: float = 0.7) -> Tensor:
    """IRN's ``crf_inference_label`` of a hard label map on the image.

    Args:
        image: uint8 ``[H, W, 3]``.  labels: ``[H, W]`` in ``0..n-1``.  num_labels: n.  gt_prob: label confidence.

    Returns:
        ``[H, W]`` int64: the argmax of the CRF marginals.
    """
    from grmseg import ops

    if num_labels < 2:
        return labels.long()
    unary = label_unary(labels, num_labels, gt_prob)[None]
    return ops.dense_crf(unary, image_tensor(image, unary.device), **IRN_LABEL_CRF)[0].argmax(0)


def crf_probabilities(scores: Tensor, image: np.ndarray, iterations: int = 10) -> Tensor:
    """The dense CRF of non-negative class scores ``[1, C, H, W]`` (normalised over C, floored at 1e-5) on the
    uint8 image ``[H, W, 3]``, with the op's default kernels. Returns the marginals ``[1, C, H, W]`` float32."""
    from grmseg import ops

    p = scores.float().clamp_min(0)
    p = (p / p.sum(dim=1, keepdim=True).clamp_min(1e-12)).clamp_min(1e-5)
    p = p / p.sum(dim=1, keepdim=True)
    return ops.dense_crf(p, image_tensor(image, p.device), iterations=iterations)
