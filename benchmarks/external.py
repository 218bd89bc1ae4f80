"""Baselines outside grmseg, timed beside its backends: other libraries that compute the same op.

One entry per (op, baseline name). A baseline is a provider row for its op only (other ops get no row for it), and
it is offered only when its library imports. Each one also reports, untimed, how its result compares with
grmseg's (``agreement``): that goes into the row's note.

* ``dense_crf`` / ``pydensecrf``: pydensecrf's ``DenseCRF2D`` (the ``pydensecrf2`` package on PyPI), the library
  every WSSS pipeline uses: single-threaded C++ on the host CPU (CUDA inputs are copied to the host, inside the
  timed call, as a user of it would). The op's targets (issue 14) are set against it.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

Inputs = dict[str, Any]


@dataclass(frozen=True)
class Baseline:
    """An external implementation of one op.

    Attributes:
        op: the grmseg op it computes.  name: the provider name of its rows.  module: what must import.
        make: ``inputs -> (callable timed, callable returning its result)``.
        agreement: ``(inputs, its result, grmseg's result) -> note``.
    """

    op: str
    name: str
    module: str
    make: Callable[[Inputs], Callable[[], Any]]
    agreement: Callable[[Inputs, Any, Tensor], str]


def _pydensecrf_run(inputs: Inputs) -> Callable[[], Tensor]:
    import numpy as np
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    unary, image, iterations = inputs["unary"], inputs["image"], inputs["iterations"]
    b, k, h, w = unary.shape

    def run() -> Tensor:
        p = unary.detach().float().cpu().numpy()
        rgb = image.detach().cpu().permute(0, 2, 3, 1).to(torch.uint8).numpy()
        out = []
        for bi in range(b):
            d = dcrf.DenseCRF2D(w, h, k)
            d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(p[bi])))
            d.addPairwiseGaussian(sxy=3.0, compat=3.0)
            d.addPairwiseBilateral(sxy=80.0, srgb=13.0, rgbim=np.ascontiguousarray(rgb[bi]), compat=10.0)
            out.append(np.array(d.inference(iterations)).reshape(k, h, w))
        return torch.from_numpy(np.stack(out))

    return run


def _crf_agreement(inputs: Inputs, theirs: Tensor, ours: Tensor) -> str:
    ours = ours.detach().float().cpu()
    agree = (theirs.argmax(dim=1) == ours.argmax(dim=1)).double().mean().item()
    return f"labels agree with grmseg on {100 * agree:.3f}% of pixels, max |dQ| {(theirs - ours).abs().max():.2g}"


BASELINES: tuple[Baseline, ...] = (
    Baseline("dense_crf", "pydensecrf", "pydensecrf.densecrf", _pydensecrf_run, _crf_agreement),
)


@functools.cache
def available(name: str) -> bool:
    """Whether the library of baseline ``name`` imports."""
    for b in BASELINES:
        if b.name == name:
            try:
                importlib.import_module(b.module)
            except ImportError:
                return False
            return True
    return False


def names() -> tuple[str, ...]:
    """Every baseline's provider name."""
    return tuple(dict.fromkeys(b.name for b in BASELINES))


def find(op: str, name: str) -> Baseline | None:
    """The baseline ``name`` of ``op``, or None."""
    return next((b for b in BASELINES if b.op == op and b.name == name), None)
