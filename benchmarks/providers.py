"""Who runs a case: one provider per backend available on the device, plus the reference under torch.compile.

Providers are discovered from :func:`grmseg.ops.backends`, so a backend that lands later (``triton``, ``csrc``)
adds its rows without touching the harness. An eager provider calls the public op with ``backend=<name>``;
where that backend lacks a kernel, the op layer runs ``reference`` instead, and the row says so (``ran``,
from :func:`grmseg.ops.selected`). ``reference+compile`` is the plain-PyTorch math of ``grmseg.reference``
under ``torch.compile`` with ordinary autograd: what a user gets without grmseg's kernels.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import grmseg
import grmseg.ops
import grmseg.reference
from benchmarks import external
from benchmarks.cases import Case, Inputs

REFERENCE = "reference"
COMPILED = "reference+compile"
BACKEND_ENV = "GRMSEG_BACKEND"


@dataclass(frozen=True)
class Provider:
    """A row source.

    Attributes:
        name: the row's provider name (``"reference"``, ``"triton"``, ``"csrc"``, ``"reference+compile"``, or an
            external baseline's, e.g. ``"pydensecrf"``).
        backend: the op-layer backend it asks for ("" for an external baseline).
        compiled: whether it runs the reference math under ``torch.compile``.
        external: whether it is a library outside grmseg (:mod:`benchmarks.external`): rows for its op only.
    """

    name: str
    backend: str
    compiled: bool = False
    external: bool = False


def discover(device: torch.device, compile: bool = True) -> list[Provider]:
    """Every backend available for ``device`` (reference first), the external baselines whose library imports,
    then ``reference+compile`` if ``compile``."""
    status = grmseg.ops.backends()
    names = [n for n, s in status.items() if s.available.get(device.type, False)]
    names.sort(key=lambda n: n != REFERENCE)
    providers = [Provider(n, n) for n in names]
    providers += [Provider(n, "", external=True) for n in external.names() if external.available(n)]
    if compile:
        providers.append(Provider(COMPILED, REFERENCE, compiled=True))
    return providers


def applies(case: Case, provider: Provider) -> bool:
    """Whether ``provider`` has a row for ``case`` (an external baseline only for its own op)."""
    return not provider.external or external.find(case.op.name, provider.name) is not None


def ran_backend(case: Case, provider: Provider, device: torch.device) -> str:
    """The backend(s) that actually run ``case`` for ``provider`` (``"a+b"`` when the kernels differ)."""
    if provider.compiled:
        return COMPILED
    if provider.external:
        return provider.name
    chosen = {grmseg.ops.selected(k, device, provider.backend) for k in case.op.kernels(case.phase)}
    return "+".join(sorted(chosen)) or provider.backend


def row_label(provider: Provider, ran: str) -> str:
    """What the table shows for a row: the provider when it ran its own kernels only; ``"triton->reference"``
    when another backend ran them all; ``"triton(+reference)"`` when some kernels came from another backend."""
    if ran == provider.name:
        return provider.name
    names = ran.split("+")
    if provider.name in names:
        return f"{provider.name}(+{'+'.join(n for n in names if n != provider.name)})"
    return f"{provider.name}->{ran}"


@contextlib.contextmanager
def forced_backend(name: str) -> Iterator[None]:
    """Set ``$GRMSEG_BACKEND`` for the duration (how a whole module, ``grmseg.GRM``, is pinned to a backend)."""
    old = os.environ.get(BACKEND_ENV)
    os.environ[BACKEND_ENV] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(BACKEND_ENV, None)
        else:
            os.environ[BACKEND_ENV] = old


@dataclass
class Bench:
    """The callables for one case and provider.

    Attributes:
        timed: what the timer repeats (for ``bwd``: the backward alone, on a retained graph).
        memory: one fresh run of the phase for the peak-memory probe (for ``bwd``: forward + backward).
        note: what the row should say besides its numbers (an external baseline's agreement with grmseg).
    """

    timed: Callable[[], Any]
    memory: Callable[[], Any]
    note: str = ""


def _as_tuple(out: Any) -> tuple[Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _like(t: Tensor, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=gen).to(device=t.device, dtype=t.dtype)


def _forward(case: Case, provider: Provider, inputs: Inputs) -> Callable[[], Any]:
    args = [inputs[name] for name in case.op.args]
    kwargs = {name: inputs[name] for name in case.op.keywords}
    if provider.compiled:
        fn = torch.compile(getattr(grmseg.reference, case.op.name), dynamic=False)
        return lambda: fn(*args, **kwargs)
    op = getattr(grmseg.ops, case.op.name)
    backend = provider.backend
    return lambda: op(*args, **kwargs, backend=backend)


def _external(case: Case, provider: Provider, inputs: Inputs) -> Bench:
    baseline = external.find(case.op.name, provider.name)
    run = baseline.make(inputs)
    ours = _forward(case, Provider("auto", "auto"), inputs)()
    return Bench(timed=run, memory=run, note=baseline.agreement(inputs, run(), ours))


def _layer(case: Case, provider: Provider, inputs: Inputs) -> Bench:
    module: torch.nn.Module = inputs["module"]
    x: Tensor = inputs["x"]
    wrt = [x, *(p for p in module.parameters() if p.requires_grad)]
    run = torch.compile(module, dynamic=False) if provider.compiled else module
    gy = _like(x, seed=1)

    def step() -> Any:
        with forced_backend(provider.backend):
            y = run(x)
            return torch.autograd.grad(y, wrt, gy, allow_unused=True)

    return Bench(timed=step, memory=step)


def build(case: Case, provider: Provider, inputs: Inputs) -> Bench:
    """The callables that benchmark ``case`` with ``provider`` on ``inputs`` (from ``case.inputs``).

    For ``bwd`` this runs the forward once, keeps its graph, and times ``torch.autograd.grad`` on it.
    """
    if case.op.name == "grm_layer":
        return _layer(case, provider, inputs)
    if provider.external:
        return _external(case, provider, inputs)
    forward = _forward(case, provider, inputs)
    if case.phase == "fwd":
        return Bench(timed=forward, memory=forward)
    wrt = [inputs[name] for name in case.op.grad_args]
    outs = _as_tuple(forward())
    grads = [_like(o, seed=1 + i) for i, o in enumerate(outs)]

    def backward() -> Any:
        return torch.autograd.grad(outs, wrt, grads, retain_graph=True)

    def forward_backward() -> Any:
        return torch.autograd.grad(_as_tuple(forward()), wrt, grads)

    return Bench(timed=backward, memory=forward_backward)
