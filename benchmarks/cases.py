"""What the harness runs: one :class:`OpDef` per op (inputs, shape label, bytes moved) and the size sets.

A :class:`Case` is one op, phase, shape and dtype. Phases: ``fwd`` (the op), ``bwd`` (the backward of the
differentiable ops, timed on a retained graph; its peak memory is that of a whole forward + backward) and
``fwd+bwd`` (the ``grm_layer`` case: the ``grmseg.GRM`` layer, forward and backward together).

Bytes moved are the minimum a kernel must read and write once: every input it reads and every output it writes
(for backward: the incoming gradients, the saved inputs it reads, and the gradients it writes). GB/s is that
over the median time, so it is comparable across backends and against the device's peak bandwidth.

Useful flops are those of the op's math, counted the same for every backend (a multiply-add is 2): the
GEMM-shaped products of the GRM ops (2 B K C P each; forward 2 of them, backward 5, the layer 14), of graph_conv
(backward: twice the forward) and cam (every class, as the reference computes it), the sub-abs-add of
local_affinity per channel and offset, one max per path point of boundary_affinity, and the 2 (1 + 2D) flops
per class, pixel and step of random_walk (the neighbours and the pixel itself), the lattice splat and slice of
dense_crf (see :func:`_flops_dense_crf`). GFLOP/s is that over the median
time; on the CPU the rows also give it as a fraction of the machine's own sgemm rate measured in the same run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from grmseg.reference import CRF_REFERENCE_MAX_PIXELS, affinity_offsets, path_offsets

Params = dict[str, Any]
Inputs = dict[str, Any]

PHASES = ("fwd", "bwd", "fwd+bwd")
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


def _nbytes(*tensors: Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _elems(dtype: torch.dtype, *shape: int) -> int:
    """Bytes of a tensor of ``shape`` in ``dtype``."""
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def _randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=gen) * scale


def _rand(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(*shape, generator=gen)


# ------------------------------------------------------------------------------------------------ input builders
# Each builder returns the op's arguments by name (CPU, float32) plus the static (non-tensor) arguments;
# :meth:`Case.inputs` moves the tensors to the device and dtype.
def _build_grm_project(p: Params, gen: torch.Generator) -> Inputs:
    b, c, k, n = p["B"], p["C"], p["K"], p["H"] * p["W"]
    return {"x": _randn(gen, b, c, n), "w": _randn(gen, k, c, scale=c**-0.5), "b": _randn(gen, k, scale=0.1)}


def _build_grm_reproject(p: Params, gen: torch.Generator) -> Inputs:
    b, c, k, n = p["B"], p["C"], p["K"], p["H"] * p["W"]
    return {
        "x": _randn(gen, b, c, n),
        "q": _randn(gen, b, k, c, scale=c**-0.5),
        "v": _randn(gen, b, k, c, scale=0.1),
    }


def _normalised_adjacency(gen: torch.Generator, k: int) -> Tensor:
    a = (_rand(gen, k, k) > 0.7).float()
    a = ((a + a.T) > 0).float() + torch.eye(k)
    d = a.sum(dim=1).rsqrt()
    return d[:, None] * a * d[None, :]


def _build_graph_conv(p: Params, gen: torch.Generator) -> Inputs:
    b, k, f, d = p["B"], p["K"], p["F"], p["D"]
    return {
        "z": _randn(gen, b, k, f),
        "adj": _normalised_adjacency(gen, k),
        "weight": _randn(gen, f, d, scale=f**-0.5),
        "bias": _randn(gen, d, scale=0.1),
        "activation": "leaky_relu",
    }


def _build_cam(p: Params, gen: torch.Generator) -> Inputs:
    b, c, k = p["B"], p["C"], p["K"]
    labels = (_rand(gen, b, k) > 0.7).float()
    labels[:, 0] = 1.0  # every image has at least one class
    return {
        "feat": torch.relu(_randn(gen, b, c, p["H"], p["W"])),
        "weight": _randn(gen, k, c, scale=c**-0.5),
        "labels": labels,
    }


def _build_local_affinity(p: Params, gen: torch.Generator) -> Inputs:
    return {"feat": _randn(gen, p["B"], p["C"], p["H"], p["W"], scale=0.5), "radius": p["r"]}


def _build_boundary_affinity(p: Params, gen: torch.Generator) -> Inputs:
    return {"boundary": _rand(gen, p["B"], 1, p["H"], p["W"]) ** 4, "radius": p["r"]}


def _build_random_walk(p: Params, gen: torch.Generator) -> Inputs:
    num_offsets = len(affinity_offsets(p["r"]))
    return {
        "cam": _rand(gen, p["B"], p["K"], p["H"], p["W"]),
        "aff": 0.1 + 0.9 * _rand(gen, p["B"], num_offsets, p["H"], p["W"]),
        "beta": float(p["beta"]),
        "steps": int(p["steps"]),
    }


def _build_dense_crf(p: Params, gen: torch.Generator) -> Inputs:
    """A photo-like image and a segmentation net's probabilities: K regions (the cells of random seeds), each with
    its own colour, a smooth shading and pixel noise; logits that favour each pixel's region, noisy, computed at
    stride 8 and upsampled (as a network's output is)."""
    b, k, h, w = p["B"], p["K"], p["H"], p["W"]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    seeds = _rand(gen, b, 2 * k, 2) * torch.tensor([h, w])
    d2 = (ys[None, None] - seeds[:, :, 0, None, None]) ** 2 + (xs[None, None] - seeds[:, :, 1, None, None]) ** 2
    cell = d2.argmin(dim=1)  # [B, H, W], 2K cells
    label = cell % k
    colour = _rand(gen, b, 2 * k, 3) * 200 + 20
    img = torch.gather(colour, 1, cell.reshape(b, -1, 1).expand(-1, -1, 3)).reshape(b, h, w, 3).permute(0, 3, 1, 2)
    shade = 30 * torch.sin(xs / (w / 3) + _rand(gen, b, 1, 1, 1) * 6) * torch.cos(ys / (h / 2))
    img = (img + shade + _randn(gen, b, 3, h, w, scale=8.0)).clamp(0, 255).round().to(torch.uint8)
    onehot = torch.nn.functional.one_hot(label, k).permute(0, 3, 1, 2).float()
    logits = torch.nn.functional.avg_pool2d(3.0 * onehot, 8, ceil_mode=True)
    logits = logits + _randn(gen, *logits.shape, scale=1.0)
    logits = torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return {"unary": logits.softmax(dim=1), "image": img, "iterations": p["iterations"]}


def _build_grm_layer(p: Params, gen: torch.Generator) -> Inputs:
    return {"x": _randn(gen, p["B"], p["C"], p["H"], p["W"])}


# ------------------------------------------------------------------------------------------------- bytes moved
def _bytes_grm_project(t: Inputs, phase: str) -> int:
    x, w, b = t["x"], t["w"], t["b"]
    bsz, c, _ = x.shape
    k = w.shape[0]
    h_m = _elems(x.dtype, bsz, k, c) + _elems(x.dtype, bsz, k)
    if phase == "fwd":  # read x, w, b; write h, m
        return _nbytes(x, w, b) + h_m
    # read gh, gm, x, w, b; write gx, gw, gb
    return h_m + _nbytes(x, w, b) + _nbytes(x, w, b)


def _bytes_grm_reproject(t: Inputs, phase: str) -> int:
    x, q, v = t["x"], t["q"], t["v"]
    if phase == "fwd":  # read x, q, v; write y
        return _nbytes(x, q, v) + _nbytes(x)
    # read gy, x, q, v; write gx, gq, gv
    return _nbytes(x) + _nbytes(x, q, v) + _nbytes(x, q, v)


def _bytes_graph_conv(t: Inputs, phase: str) -> int:
    z, adj, weight, bias = t["z"], t["adj"], t["weight"], t["bias"]
    out = _elems(z.dtype, z.shape[0], z.shape[1], weight.shape[1])
    if phase == "fwd":  # read z, adj, weight, bias; write out
        return _nbytes(z, adj, weight, bias) + out
    # read gout, out, z, adj, weight, bias; write gz, gadj, gweight, gbias
    return 2 * out + 2 * _nbytes(z, adj, weight, bias)


def _bytes_cam(t: Inputs, phase: str) -> int:
    feat, weight = t["feat"], t["weight"]
    bsz, _, h, w = feat.shape
    return _nbytes(feat, weight, t["labels"]) + _elems(feat.dtype, bsz, weight.shape[0], h, w)


def _bytes_local_affinity(t: Inputs, phase: str) -> int:
    feat = t["feat"]
    bsz, _, h, w = feat.shape
    return _nbytes(feat) + _elems(feat.dtype, bsz, len(affinity_offsets(t["radius"])), h, w)


def _bytes_boundary_affinity(t: Inputs, phase: str) -> int:
    bd = t["boundary"]
    bsz, _, h, w = bd.shape
    return _nbytes(bd) + _elems(bd.dtype, bsz, len(affinity_offsets(t["radius"])), h, w)


def _bytes_random_walk(t: Inputs, phase: str) -> int:
    # Once: read cam and aff, write the result. (256 steps re-read them; this is the floor, not the traffic.)
    return _nbytes(t["cam"], t["aff"]) + _nbytes(t["cam"])


def _bytes_dense_crf(t: Inputs, phase: str) -> int:
    # Once: read the probabilities and the image, write Q. (Every iteration re-reads; this is the floor.)
    return _nbytes(t["unary"], t["image"]) + _nbytes(t["unary"])


def _bytes_grm_layer(t: Inputs, phase: str) -> int:
    x = t["x"]
    params = sum(_nbytes(p) for p in t["module"].parameters())
    fwd = 2 * _nbytes(x) + params  # read x and the parameters, write y
    bwd = 3 * _nbytes(x) + 2 * params  # read gy, x and the parameters; write gx and the parameter gradients
    return fwd + bwd


# ------------------------------------------------------------------------------------------------- useful flops
def _grm_product(x: Tensor, k: int) -> float:
    bsz, c, n = x.shape
    return 2.0 * bsz * k * c * n


def _flops_grm_project(t: Inputs, phase: str) -> float:
    return (2 if phase == "fwd" else 5) * _grm_product(t["x"], t["w"].shape[0])


def _flops_grm_reproject(t: Inputs, phase: str) -> float:
    return (2 if phase == "fwd" else 5) * _grm_product(t["x"], t["q"].shape[1])


def _flops_graph_conv(t: Inputs, phase: str) -> float:
    bsz, k, f = t["z"].shape
    d = t["weight"].shape[1]
    fwd = 2.0 * bsz * k * f * d + 2.0 * bsz * k * k * d
    return fwd if phase == "fwd" else 2 * fwd


def _flops_cam(t: Inputs, phase: str) -> float:
    bsz, c, h, w = t["feat"].shape
    return 2.0 * bsz * t["weight"].shape[0] * c * h * w


def _flops_local_affinity(t: Inputs, phase: str) -> float:
    bsz, c, h, w = t["feat"].shape
    return 3.0 * bsz * c * len(affinity_offsets(t["radius"])) * h * w


def _flops_boundary_affinity(t: Inputs, phase: str) -> float:
    bsz, _, h, w = t["boundary"].shape
    points = sum(len(path_offsets(dy, dx)) for dy, dx in affinity_offsets(t["radius"]))
    return float(bsz * h * w * points)


def _flops_random_walk(t: Inputs, phase: str) -> float:
    bsz, k, h, w = t["cam"].shape
    return 2.0 * t["steps"] * bsz * k * h * w * (1 + 2 * t["aff"].shape[1])


def _flops_dense_crf(t: Inputs, phase: str) -> float:
    # Per iteration, pixel and class: the splat and the slice of both permutohedral lattices (bilateral d = 5,
    # spatial d = 2: 2 (d + 1) flops each); the blur is left out (its vertex count depends on the image).
    bsz, k, h, w = t["unary"].shape
    return 2.0 * 2 * (6 + 3) * t["iterations"] * bsz * k * h * w


def _flops_grm_layer(t: Inputs, phase: str) -> float:
    x = t["x"]
    return 14 * 2.0 * x.shape[0] * t["module"].num_nodes * x.shape[1] * x.shape[2] * x.shape[3]


# ------------------------------------------------------------------------------------------------- shape labels
def _label_grm(p: Params) -> str:
    return f"B{p['B']} C{p['C']} {p['H']}x{p['W']} K{p['K']}"


def _label_graph_conv(p: Params) -> str:
    return f"B{p['B']} K{p['K']} F{p['F']}->D{p['D']}"


def _label_cam(p: Params) -> str:
    return f"B{p['B']} C{p['C']} {p['H']}x{p['W']} K{p['K']}"


def _label_local_affinity(p: Params) -> str:
    return f"B{p['B']} C{p['C']} {p['H']}x{p['W']} r{p['r']}"


def _label_boundary_affinity(p: Params) -> str:
    return f"B{p['B']} {p['H']}x{p['W']} r{p['r']}"


def _label_dense_crf(p: Params) -> str:
    return f"B{p['B']} K{p['K']} {p['H']}x{p['W']} it{p['iterations']}"


def _label_random_walk(p: Params) -> str:
    return f"B{p['B']} K{p['K']} {p['H']}x{p['W']} r{p['r']} beta{p['beta']:g} s{p['steps']}"


# ------------------------------------------------------------------------------------------------------ op defs
@dataclass(frozen=True)
class OpDef:
    """One op as the harness sees it.

    Attributes:
        name: the op's name: ``grmseg.ops.<name>`` and ``grmseg.reference.<name>`` take ``args`` positionally
            (``grm_layer`` is the exception: it benchmarks the ``grmseg.GRM`` module).
        args: the argument names, in call order.
        grad_args: the arguments that receive gradients in the ``bwd`` phase; empty for inference ops.
        build: ``(params, generator) -> inputs`` (CPU, float32 tensors and static arguments by name).
        label: ``params -> "B8 C512 64x64 K21"``.
        bytes_moved: ``(inputs on the device, phase) -> bytes``.
        flops: ``(inputs on the device, phase) -> useful flops`` (see the module docstring).
        kernels: the op-layer kernel names behind a phase (for :func:`grmseg.ops.selected`).
        keywords: the arguments passed by keyword (after ``args``), to ``grmseg.ops`` and the reference alike.
        keep_dtype: tensor arguments that keep their own dtype (``labels``, an uint8 ``image``), not the case's.
    """

    name: str
    args: tuple[str, ...]
    grad_args: tuple[str, ...]
    build: Callable[[Params, torch.Generator], Inputs]
    label: Callable[[Params], str]
    bytes_moved: Callable[[Inputs, str], int]
    flops: Callable[[Inputs, str], float]
    kernels: Callable[[str], tuple[str, ...]] = field(default=lambda phase: ())
    keywords: tuple[str, ...] = ()
    keep_dtype: tuple[str, ...] = ()

    @property
    def differentiable(self) -> bool:
        """Whether the op has a backward phase."""
        return bool(self.grad_args)

    def phases(self) -> tuple[str, ...]:
        """The phases benchmarked for this op."""
        if self.name == "grm_layer":
            return ("fwd+bwd",)
        return ("fwd", "bwd") if self.differentiable else ("fwd",)


def _op_kernels(name: str) -> Callable[[str], tuple[str, ...]]:
    return lambda phase: (f"{name}_forward",) if phase == "fwd" else (f"{name}_backward",)


def _layer_kernels(phase: str) -> tuple[str, ...]:
    return tuple(f"{op}_{d}" for op in ("grm_project", "graph_conv", "grm_reproject") for d in ("forward", "backward"))


OPS: dict[str, OpDef] = {
    op.name: op
    for op in (
        OpDef("grm_project", ("x", "w", "b"), ("x", "w", "b"), _build_grm_project, _label_grm, _bytes_grm_project,
              _flops_grm_project, _op_kernels("grm_project")),
        OpDef("grm_reproject", ("x", "q", "v"), ("x", "q", "v"), _build_grm_reproject, _label_grm,
              _bytes_grm_reproject, _flops_grm_reproject, _op_kernels("grm_reproject")),
        OpDef("graph_conv", ("z", "adj", "weight", "bias", "activation"), ("z", "adj", "weight", "bias"),
              _build_graph_conv, _label_graph_conv, _bytes_graph_conv, _flops_graph_conv, _op_kernels("graph_conv")),
        OpDef("cam", ("feat", "weight", "labels"), (), _build_cam, _label_cam, _bytes_cam, _flops_cam,
              _op_kernels("cam"), keep_dtype=("labels",)),
        OpDef("local_affinity", ("feat", "radius"), (), _build_local_affinity, _label_local_affinity,
              _bytes_local_affinity, _flops_local_affinity, _op_kernels("local_affinity")),
        OpDef("boundary_affinity", ("boundary", "radius"), (), _build_boundary_affinity, _label_boundary_affinity,
              _bytes_boundary_affinity, _flops_boundary_affinity, _op_kernels("boundary_affinity")),
        OpDef("random_walk", ("cam", "aff", "beta", "steps"), (), _build_random_walk, _label_random_walk,
              _bytes_random_walk, _flops_random_walk, _op_kernels("random_walk")),
        OpDef("dense_crf", ("unary", "image"), (), _build_dense_crf, _label_dense_crf, _bytes_dense_crf,
              _flops_dense_crf, _op_kernels("dense_crf"), keywords=("iterations",), keep_dtype=("image",)),
        OpDef("grm_layer", ("x",), ("x",), _build_grm_layer, _label_grm, _bytes_grm_layer, _flops_grm_layer,
              _layer_kernels),
    )
}


# ---------------------------------------------------------------------------------------------------- size sets
@dataclass(frozen=True)
class SizeSet:
    """Shapes per op, with the dtypes each shape runs in, and how large the dense random-walk oracle may get.

    Attributes:
        name: ``"cuda"``, ``"cpu"`` or ``"quick"``.
        shapes: ``{op: [(params, dtype names), ...]}``.
        dense_max_pixels: the largest ``h * w`` for which the dense ``N x N`` reference random walk is run.
    """

    name: str
    shapes: dict[str, list[tuple[Params, tuple[str, ...]]]]
    dense_max_pixels: int


_BOTH = ("bf16", "fp32")
_FP32 = ("fp32",)
_WALK = {"r": 5, "beta": 8.0, "steps": 256}
# issue 14: pydensecrf's usual image sizes (VOC's 500x375 and a 240x320 crop), 21 classes, 10 iterations
_CRF = [({"B": 1, "K": 21, "H": h, "W": w, "iterations": 10}, ("fp32",)) for h, w in ((240, 320), (375, 500))]

SIZE_SETS: dict[str, SizeSet] = {
    # The issue's targets: GRM at B=8, C=512, 64x64, K=21/81 in bf16 and fp32; GCN layers of the segmentation
    # GRM (2048 -> 256) and of the classification head (300 -> 1024 -> 2048); IRN's random walk at 128x128.
    "cuda": SizeSet(
        "cuda",
        {
            "grm_project": [({"B": 8, "C": 512, "H": 64, "W": 64, "K": k}, _BOTH) for k in (21, 81)],
            "grm_reproject": [({"B": 8, "C": 512, "H": 64, "W": 64, "K": k}, _BOTH) for k in (21, 81)],
            "graph_conv": [({"B": 8, "K": k, "F": 2048, "D": 256}, _BOTH) for k in (21, 81)]
            + [({"B": 1, "K": 81, "F": 1024, "D": 2048}, _BOTH)],
            "cam": [({"B": 8, "C": 2048, "H": 32, "W": 32, "K": k}, _BOTH) for k in (20, 80)],
            "local_affinity": [({"B": 8, "C": 448, "H": 64, "W": 64, "r": 5}, _BOTH)],
            "boundary_affinity": [({"B": 8, "H": 128, "W": 128, "r": 5}, _FP32)],
            "random_walk": [({"B": 1, "K": 21, "H": s, "W": s, **_WALK}, _FP32) for s in (64, 128)],
            "dense_crf": _CRF,
            "grm_layer": [({"B": 8, "C": 512, "H": 64, "W": 64, "K": k}, _BOTH) for k in (21, 81)],
        },
        dense_max_pixels=128 * 128,
    ),
    # A whole CPU run (reference eager + compile) in a few minutes on a couple of cores.
    "cpu": SizeSet(
        "cpu",
        {
            "grm_project": [({"B": 2, "C": 256, "H": 64, "W": 64, "K": 21}, _FP32)],
            "grm_reproject": [({"B": 2, "C": 256, "H": 64, "W": 64, "K": 21}, _FP32)],
            "graph_conv": [
                ({"B": 2, "K": 21, "F": 2048, "D": 256}, _FP32),
                ({"B": 1, "K": 21, "F": 300, "D": 1024}, _FP32),
            ],
            "cam": [({"B": 2, "C": 512, "H": 32, "W": 32, "K": 20}, _FP32)],
            "local_affinity": [({"B": 2, "C": 128, "H": 32, "W": 32, "r": 5}, _FP32)],
            "boundary_affinity": [({"B": 2, "H": 64, "W": 64, "r": 5}, _FP32)],
            # issue 5's CPU target is at 64x64 (dense oracle ~10 s a run here); 128x128 has no dense row (1 GiB)
            "random_walk": [({"B": 1, "K": 21, "H": s, "W": s, **_WALK}, _FP32) for s in (32, 64, 128)],
            "dense_crf": _CRF,
            "grm_layer": [({"B": 2, "C": 256, "H": 64, "W": 64, "K": 21}, _FP32)],
        },
        dense_max_pixels=64 * 64,
    ),
    # The issue's headline rows only (make gpu-check-quick): the GRM layer forward + backward and the projection /
    # reprojection forward in bf16 at B=8, C=512, 64x64, K=21, and the 256-step random walk at 128x128, K=21
    # (no dense reference: its 16384 x 16384 matrix powers alone take longer than the quick check's budget).
    "headline": SizeSet(
        "headline",
        {
            "grm_layer": [({"B": 8, "C": 512, "H": 64, "W": 64, "K": 21}, ("bf16",))],
            "grm_project": [({"B": 8, "C": 512, "H": 64, "W": 64, "K": 21}, ("bf16",))],
            "grm_reproject": [({"B": 8, "C": 512, "H": 64, "W": 64, "K": 21}, ("bf16",))],
            "random_walk": [({"B": 1, "K": 21, "H": 128, "W": 128, **_WALK}, _FP32)],
        },
        dense_max_pixels=64 * 64,
    ),
    # Tiny: exercises every code path in seconds (the test suite runs this).
    "quick": SizeSet(
        "quick",
        {
            "grm_project": [({"B": 1, "C": 16, "H": 8, "W": 8, "K": 5}, _FP32)],
            "grm_reproject": [({"B": 1, "C": 16, "H": 8, "W": 8, "K": 5}, _FP32)],
            "graph_conv": [({"B": 1, "K": 5, "F": 16, "D": 8}, _FP32)],
            "cam": [({"B": 1, "C": 16, "H": 8, "W": 8, "K": 4}, _FP32)],
            "local_affinity": [({"B": 1, "C": 8, "H": 8, "W": 8, "r": 3}, _FP32)],
            "boundary_affinity": [({"B": 1, "H": 8, "W": 8, "r": 3}, _FP32)],
            "random_walk": [({"B": 1, "K": 3, "H": 8, "W": 8, "r": 3, "beta": 8.0, "steps": 4}, _FP32)],
            "dense_crf": [({"B": 1, "K": 5, "H": 12, "W": 17, "iterations": 3}, _FP32)],
            "grm_layer": [({"B": 1, "C": 16, "H": 8, "W": 8, "K": 5}, _FP32)],
        },
        dense_max_pixels=64 * 64,
    ),
}


# --------------------------------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One op at one phase, shape and dtype."""

    op: OpDef
    phase: str
    params: Params
    dtype: torch.dtype
    dense_max_pixels: int

    @property
    def shape(self) -> str:
        """The shape label, e.g. ``"B8 C512 64x64 K21"``."""
        return self.op.label(self.params)

    @property
    def dtype_name(self) -> str:
        """``"fp32"``, ``"bf16"`` or ``"fp16"``."""
        return DTYPE_NAMES.get(self.dtype, str(self.dtype).replace("torch.", ""))

    def inputs(self, device: torch.device, seed: int = 0) -> Inputs:
        """The op's arguments on ``device`` in the case's dtype (``op.keep_dtype`` ones and static args as they are).

        The ``bwd`` phase's ``grad_args`` require grad; ``grm_layer`` also gets its module under ``"module"``.
        """
        gen = torch.Generator().manual_seed(seed)
        raw = self.op.build(self.params, gen)
        needs_grad = self.phase != "fwd"
        out: Inputs = {}
        for name, value in raw.items():
            if isinstance(value, Tensor):
                dtype = value.dtype if name in self.op.keep_dtype else self.dtype
                value = value.to(device=device, dtype=dtype)
                if needs_grad and name in self.op.grad_args:
                    value.requires_grad_(True)
            out[name] = value
        if self.op.name == "grm_layer":
            out["module"] = make_grm_layer(self.params, device, self.dtype, seed)
        return out

    def bytes_moved(self, inputs: Inputs) -> int:
        """The minimal bytes read and written once by this phase of the op (see the module docstring)."""
        return self.op.bytes_moved(inputs, self.phase)

    def flops(self, inputs: Inputs) -> float:
        """The useful flops of this phase of the op (see the module docstring)."""
        return self.op.flops(inputs, self.phase)

    def dense_reference_skip(self, device: torch.device) -> str | None:
        """Why the dense reference (random walk, CRF) is not run at this size (None when it is)."""
        if self.op.name == "dense_crf":
            n = self.params["H"] * self.params["W"]
            if n > CRF_REFERENCE_MAX_PIXELS:
                return f"dense reference skipped: N={n} pixels > {CRF_REFERENCE_MAX_PIXELS} (exact [N, N] kernels)"
            return None
        if self.op.name != "random_walk":
            return None
        n = self.params["H"] * self.params["W"]
        if n > self.dense_max_pixels:
            return f"dense reference skipped: N={n} pixels > {self.dense_max_pixels}"
        need = 6 * self.params["B"] * n * n * 4  # dense A, A^beta, T and matrix_power's temporaries, fp32
        if device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            if need > total // 2:
                return f"dense reference skipped: needs ~{need / 2**30:.1f} GiB of {total / 2**30:.0f} GiB"
        return None


def make_grm_layer(params: Params, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """``grmseg.GRM(C, K)`` on ``device`` in ``dtype``. Raises AttributeError when ``grmseg.GRM`` does not exist."""
    import grmseg

    layer_cls = grmseg.GRM
    torch.manual_seed(seed)
    return layer_cls(params["C"], params["K"]).to(device=device, dtype=dtype)


def grm_layer_available() -> tuple[bool, str]:
    """Whether ``grmseg.GRM`` exists (it is optional for the harness), and why not."""
    import grmseg

    if getattr(grmseg, "GRM", None) is None:
        return False, "grm_layer skipped: grmseg.GRM does not exist yet"
    return True, ""


def make_cases(
    size_set: SizeSet,
    ops: Iterable[str] | None = None,
    dtypes: Iterable[str] | None = None,
    phases: Iterable[str] | None = None,
) -> list[Case]:
    """Every case of ``size_set`` for ``ops`` (all when None), in ``dtypes`` (each shape's own when None), in
    ``phases`` (each op's own when None; an op none of whose phases is asked for is left out).

    Raises:
        ValueError: for an unknown op, dtype or phase name.
    """
    keep_phases = None if phases is None else list(phases)
    for ph in keep_phases or ():
        if ph not in PHASES:
            raise ValueError(f"unknown phase {ph!r}; choose from {list(PHASES)}")
    names = list(OPS) if ops is None else list(ops)
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; choose from {list(OPS)}")
    dtype_override = None if dtypes is None else list(dtypes)
    for d in dtype_override or ():
        if d not in DTYPES:
            raise ValueError(f"unknown dtype {d!r}; choose from {sorted(DTYPES)}")
    cases = []
    for name in names:
        op = OPS[name]
        for params, own_dtypes in size_set.shapes.get(name, []):
            for dname in dtype_override or own_dtypes:
                for phase in op.phases():
                    if keep_phases is not None and phase not in keep_phases:
                        continue
                    cases.append(Case(op, phase, dict(params), DTYPES[dname], size_set.dense_max_pixels))
    return cases
