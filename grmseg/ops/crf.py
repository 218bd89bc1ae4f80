"""Public dense CRF op: mean-field inference of the fully connected CRF (pydensecrf's DenseCRF2D)."""

from __future__ import annotations

import torch
from torch import Tensor

from grmseg.ops import _library
from grmseg.ops import _validate as check
from grmseg.ops._backends import check_backend_name

IMAGE_DTYPES = (torch.uint8, *check.FLOAT_DTYPES)


def dense_crf(
    unary: Tensor,
    image: Tensor,
    *,
    iterations: int = 10,
    gaussian_sxy: float = 3.0,
    gaussian_weight: float = 3.0,
    bilateral_sxy: float = 80.0,
    bilateral_srgb: float = 13.0,
    bilateral_weight: float = 10.0,
    backend: str = "auto",
) -> Tensor:
    """Refine class probabilities with a fully connected CRF (Kraehenbuehl & Koltun 2011).

    The model and the inference of pydensecrf's ``DenseCRF2D``::

        d = DenseCRF2D(W, H, K)
        d.setUnaryEnergy(unary_from_softmax(p))                   # -log p, p clipped to [1e-5, 1]
        d.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_weight)
        d.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=image, compat=bilateral_weight)
        Q = d.inference(iterations)

    (Potts compatibility, symmetric kernel normalisation, the Gaussian kernel's messages added before the
    bilateral one's). The exact model is :func:`grmseg.reference.dense_crf`; the ``csrc`` (CPU) and ``triton``
    (CUDA) backends filter the messages through a permutohedral lattice, as pydensecrf does, with the same
    lattice (their marginals match pydensecrf's to float rounding; that includes a quirk of its SIMD build: when
    ``H W`` is not a multiple of 4 its lattice also holds the vertices of the zero feature vector), and
    deterministically (csrc: the same bits for any thread count). A kernel whose weight is 0 is left out.
    Everything is computed in float32.

    Args:
        unary: ``[B, K, H, W]`` class probabilities (finite, in ``[0, 1]``; they need not sum to 1), any float
            dtype.
        image: ``[B, 3, H, W]`` RGB, uint8 or float in ``0..255`` (floats are used as they are, not rounded).
        iterations: mean-field steps (>= 0; 0 returns the normalised, clipped probabilities).
        gaussian_sxy, gaussian_weight: scale (pixels, > 0) and weight of the position-only kernel.
        bilateral_sxy, bilateral_srgb, bilateral_weight: position scale (pixels, > 0), colour scale (> 0) and
            weight of the bilateral kernel.
        backend: ``"auto"`` (csrc on the CPU, triton on CUDA), or a backend name (as for
            :func:`grmseg.ops.grm_project`); ``"reference"`` is the exact dense O((H W)^2) computation, for small
            images only.

    Returns:
        ``[B, K, H, W]`` marginals Q (each pixel's sum over K is 1) in the dtype of ``unary``. Inference op: no
        autograd formula (a backward pass raises).
    """
    op = "dense_crf"
    check.tensor(op, "unary", unary, 4, "[B, K, H, W]")
    check.non_empty(op, "unary", unary, "[B, K, H, W]")
    if not isinstance(image, Tensor):
        raise TypeError(f"{op}: argument 'image' must be a torch.Tensor [B, 3, H, W], got {type(image).__name__}")
    if image.dim() != 4:
        raise ValueError(f"{op}: argument 'image' must have shape [B, 3, H, W] (rank 4), got {list(image.shape)}")
    if image.dtype not in IMAGE_DTYPES:
        raise TypeError(f"{op}: argument 'image' must be uint8 or a float dtype (0..255), got {image.dtype}")
    check.dim(op, "image", image, 0, unary.shape[0], "B of unary")
    check.dim(op, "image", image, 1, 3, "3 (RGB)")
    check.dim(op, "image", image, 2, unary.shape[2], "H of unary")
    check.dim(op, "image", image, 3, unary.shape[3], "W of unary")
    check.same_device(op, "unary", unary, image=image)
    check.positive_int(op, "iterations", iterations, minimum=0)
    gs = check.number(op, "gaussian_sxy", gaussian_sxy, positive=True)
    gw = check.number(op, "gaussian_weight", gaussian_weight)
    bs = check.number(op, "bilateral_sxy", bilateral_sxy, positive=True)
    br = check.number(op, "bilateral_srgb", bilateral_srgb, positive=True)
    bw = check.number(op, "bilateral_weight", bilateral_weight)
    check_backend_name(backend)
    return _library.dense_crf(unary, image, iterations, gs, gw, bs, br, bw, backend)
