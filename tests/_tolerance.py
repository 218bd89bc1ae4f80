"""The tolerance rule of DESIGN.md, written once for every backend test.

* float32 results are compared with the float64 oracle: ``|actual - oracle| <= atol + rtol |oracle|`` with
  ``rtol = 1e-4`` and ``atol = 1e-4 * max(1, max |oracle|)``.
* float16 / bfloat16 results must be at most ``factor`` (2) times as far from the float64 oracle as a plain
  PyTorch computation run in the same dtype (``plain``), plus one unit of rounding of the output scale
  (``eps(dtype) * max(1, max |oracle|)``), so a plain computation that happens to be exact does not demand
  more than exact rounding.
* float64 results match the oracle to ``1e-10`` relative.

Usage::

    assert_close(actual, oracle64, plain=plain_same_dtype, name="h")
"""

from __future__ import annotations

import torch
from torch import Tensor

FP32_RTOL = 1e-4
FP32_ATOL = 1e-4
HALF_FACTOR = 2.0


def _scale(oracle: Tensor) -> float:
    return max(1.0, oracle.abs().max().item()) if oracle.numel() else 1.0


def max_error(actual: Tensor, oracle: Tensor) -> float:
    """``max |actual - oracle|`` computed in float64 (0 for empty tensors)."""
    if actual.numel() == 0:
        return 0.0
    return (actual.detach().double().cpu() - oracle.detach().double().cpu()).abs().max().item()


def assert_close(
    actual: Tensor,
    oracle: Tensor,
    plain: Tensor | None = None,
    *,
    name: str = "result",
    factor: float = HALF_FACTOR,
) -> None:
    """Check ``actual`` (any float dtype) against the float64 ``oracle`` with the rule of this module.

    Args:
        actual: the backend's result.
        oracle: the same quantity computed in float64 (e.g. ``grmseg.reference`` on float64 inputs).
        plain: for fp16/bf16 ``actual``: the same computation done by plain PyTorch in that dtype.
        name: what is compared, for the failure message.
        factor: allowed ratio of the backend's error to the plain computation's error (half dtypes).
    """
    assert actual.shape == oracle.shape, f"{name}: shape {tuple(actual.shape)} != oracle {tuple(oracle.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    a64, o64 = actual.detach().double().cpu(), oracle.detach().double().cpu()
    scale = _scale(o64)
    if actual.dtype == torch.float64:
        torch.testing.assert_close(a64, o64, rtol=1e-10, atol=1e-10 * scale, msg=lambda m: f"{name}: {m}")
        return
    if actual.dtype == torch.float32:
        torch.testing.assert_close(
            a64, o64, rtol=FP32_RTOL, atol=FP32_ATOL * scale, msg=lambda m: f"{name} (float32 vs float64): {m}"
        )
        return
    assert plain is not None, f"{name}: a {actual.dtype} result needs the plain same-dtype computation"
    assert plain.dtype == actual.dtype, f"{name}: plain computation is {plain.dtype}, result is {actual.dtype}"
    err = max_error(actual, o64)
    plain_err = max_error(plain, o64)
    allowed = factor * plain_err + torch.finfo(actual.dtype).eps * scale
    assert err <= allowed, (
        f"{name} ({actual.dtype}): max error {err:.3g} vs float64 exceeds {factor} x the plain {actual.dtype} "
        f"PyTorch error {plain_err:.3g} + {torch.finfo(actual.dtype).eps * scale:.3g} (allowed {allowed:.3g})"
    )
