"""Input checks shared by the public ops: clear errors that name the argument, expected and received.

Shape and device problems raise ValueError, dtype problems TypeError. Nothing is broadcast or cast.
The checks only read shapes, dtypes and devices, so they trace cleanly under ``torch.compile``; the value checks
(:func:`probabilities`, :func:`image_values`) read the data and are called inside the custom ops, at run time.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(op: str, name: str, t: object, ndim: int, dims: str) -> Tensor:
    """Check that ``t`` is a floating tensor of rank ``ndim``; ``dims`` names the axes, e.g. ``"[B, C, P]"``."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: argument '{name}' must be a torch.Tensor {dims}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{op}: argument '{name}' must have shape {dims} (rank {ndim}), got {list(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: argument '{name}' must be a floating tensor (fp16/bf16/fp32/fp64), got {t.dtype}")
    return t


def same_dtype(op: str, ref_name: str, ref: Tensor, **others: Tensor | None) -> None:
    """Every tensor in ``others`` has the dtype of ``ref``."""
    for name, t in others.items():
        if t is not None and t.dtype != ref.dtype:
            raise TypeError(
                f"{op}: argument '{name}' must have the dtype of '{ref_name}' ({ref.dtype}), got {t.dtype}"
            )


def same_device(op: str, ref_name: str, ref: Tensor, **others: Tensor | None) -> None:
    """Every tensor in ``others`` is on the device of ``ref``."""
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(
                f"{op}: argument '{name}' must be on the device of '{ref_name}' ({ref.device}), got {t.device}"
            )


def dim(op: str, name: str, t: Tensor, axis: int, expected: int, what: str) -> None:
    """``t.shape[axis] == expected``; ``what`` says where ``expected`` comes from, e.g. ``"C of x"``."""
    if t.shape[axis] != expected:
        raise ValueError(
            f"{op}: argument '{name}' has shape {list(t.shape)}; its dim {axis} must equal {what} "
            f"= {expected}, got {t.shape[axis]}"
        )


def non_empty(op: str, name: str, t: Tensor, dims: str) -> None:
    """No zero-sized axis (an empty batch, no channels, no pixels)."""
    if t.numel() == 0:
        raise ValueError(f"{op}: argument '{name}' {dims} must not be empty, got shape {list(t.shape)}")


def positive_int(op: str, name: str, value: object, minimum: int = 1, maximum: int | None = None) -> int:
    """An ``int`` (not bool) ``>= minimum`` (and ``<= maximum``)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{op}: argument '{name}' must be an int, got {type(value).__name__} {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{op}: argument '{name}' must be an int {bound}, got {value!r}")
    return value


def number(op: str, name: str, value: object, *, positive: bool = False) -> float:
    """A finite real number (not bool), ``> 0`` when ``positive``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{op}: argument '{name}' must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{op}: argument '{name}' must be > 0, got {value!r}")
    return float(value)


def probabilities(op: str, name: str, t: Tensor) -> None:
    """Every value of ``t`` is finite and in ``[0, 1]`` (one pass: NaN and inf show in the min or the max)."""
    if t.numel() == 0:
        return
    lo, hi = (v.item() for v in torch.aminmax(t.detach()))
    if not (lo >= 0.0 and hi <= 1.0):  # False for NaN too
        raise ValueError(
            f"{op}: argument '{name}' must hold probabilities (finite, in [0, 1]), got values in [{lo}, {hi}]"
        )


def image_values(op: str, name: str, t: Tensor) -> None:
    """A uint8 image, or a float image whose values are finite and in ``[0, 255]``."""
    if t.dtype == torch.uint8 or t.numel() == 0:
        return
    lo, hi = (v.item() for v in torch.aminmax(t.detach()))
    if not (lo >= 0.0 and hi <= 255.0):
        raise ValueError(f"{op}: argument '{name}' must be RGB in 0..255 (finite), got values in [{lo}, {hi}]")
