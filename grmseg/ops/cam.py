"""Public CAM op."""

from __future__ import annotations

from torch import Tensor

from grmseg.ops import _library
from grmseg.ops import _validate as check
from grmseg.ops._backends import check_backend_name


def cam(feat: Tensor, weight: Tensor, labels: Tensor | None = None, *, backend: str = "auto") -> Tensor:
    """Class activation maps: ``relu(weight feat) / (spatial max per (b, k) + 1e-5)``, absent classes zeroed.

    Args:
        feat: ``[B, C, h, w]`` backbone features.
        weight: ``[K, C]`` classifier weights, same dtype and device as ``feat``.
        labels: ``[B, K]`` multi-hot image labels (bool, int or float; non-zero means present) or None.
        backend: as for :func:`grmseg.ops.grm_project`.

    Returns:
        ``[B, K, h, w]`` in ``[0, 1)``, in the dtype of ``feat``. Inference op: no autograd formula.
    """
    op = "cam"
    check.tensor(op, "feat", feat, 4, "[B, C, h, w]")
    check.tensor(op, "weight", weight, 2, "[K, C]")
    check.non_empty(op, "feat", feat, "[B, C, h, w]")
    check.non_empty(op, "weight", weight, "[K, C]")
    check.dim(op, "weight", weight, 1, feat.shape[1], "C of feat")
    check.same_dtype(op, "feat", feat, weight=weight)
    if labels is not None and not isinstance(labels, Tensor):
        raise TypeError(f"{op}: argument 'labels' must be a torch.Tensor [B, K] or None, got {type(labels).__name__}")
    check.same_device(op, "feat", feat, weight=weight, labels=labels)
    if labels is not None:
        if labels.dim() != 2:
            raise ValueError(f"{op}: argument 'labels' must have shape [B, K] (rank 2), got {list(labels.shape)}")
        check.dim(op, "labels", labels, 0, feat.shape[0], "B of feat")
        check.dim(op, "labels", labels, 1, weight.shape[0], "K of weight")
    check_backend_name(backend)
    return _library.cam(feat, weight, labels, backend)
