"""The Triton backend: launch policy for the kernels in ``grmseg.triton`` (see ``grmseg.ops._backends``).

Everything that is policy lives here, not in the kernel files: grids, block sizes, the autotune configs (CUDA)
and the fixed config of the interpreter (CPU), how the pixel axis is split across programs, and the final
deterministic reductions of the per-program fp32 partial sums (``torch.sum`` over the split axis: a fixed
order, no atomics).

Availability: CUDA tensors whenever triton imports; CPU tensors only under Triton's interpreter
(``TRITON_INTERPRET=1``, set before the first kernel runs; the tests set it when no GPU is visible).

Numerics: fp32 accumulation for every dtype; fp16/bf16 ``tl.dot`` operands stay half on a GPU (the softmax
weights are rounded to the input dtype before the second product, as a same-dtype PyTorch computation does);
fp32 products use ``FP32_PRECISION``. Outputs come back in the dtype of the matching input.
Fallbacks to ``grmseg.reference`` (same math, so results stay correct): float64 inputs (the kernels have no
fp64 path; ``gradcheck`` then checks the reference formulas), more than ``MAX_K`` nodes, and empty tensors.
Under the interpreter bf16 ``tl.dot`` is wrong, so bf16 operands are cast to fp32 first (``UPCAST``).

Environment: ``GRMSEG_TRITON_AUTOTUNE=0`` turns autotuning off on CUDA (fixed default config).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from types import ModuleType

import torch
from torch import Tensor

from grmseg import reference as _ref

NAME = "triton"

#: The largest number of nodes the kernels take (the node axis lives in one block of registers).
MAX_K = 128
#: ``tl.dot`` input precision for fp32 operands on a GPU: "tf32x3" keeps ~fp32 accuracy on the tensor cores;
#: "ieee" is exact fp32 FMA (slower); plain "tf32" is not accurate enough for the fp32 tolerance (1e-4).
FP32_PRECISION = "tf32x3"
#: Pixels per split are a multiple of this (the largest BLOCK_P), so only the last tile of a split is partial.
_SPLIT_ALIGN = 128
#: A split covers at least this many pixels: fewer splits mean fewer fp32 partials to write and sum.
_MIN_PIXELS_PER_SPLIT = 256
_INT32_MAX = 2**31 - 1
_ACTIVATION_CODE = {"none": 0, "relu": 1, "leaky_relu": 2}
_KERNELS = frozenset(
    {
        "grm_project_forward",
        "grm_project_backward",
        "grm_reproject_forward",
        "grm_reproject_backward",
        "graph_conv_forward",
        "graph_conv_backward",
    }
)


# ------------------------------------------------------------------------------------------- availability
@functools.cache
def _load() -> tuple[ModuleType | None, ModuleType | None, str]:
    """``(triton, grmseg.triton, "")`` or ``(None, None, why)``; imported on first use, not at module import."""
    try:
        import triton

        import grmseg.triton as kernels_module
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken triton install raising at import
        return None, None, f"triton does not import: {exc}"
    return triton, kernels_module, ""


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def _interpreter_policy(device: torch.device) -> bool:
    """Whether launches take the interpreter's fixed config: few programs with large blocks, no autotuning."""
    return device.type != "cuda" or _interpreting()


def status(device_type: str) -> tuple[bool, str]:
    """CUDA: available when triton imports. CPU: only under Triton's interpreter (``TRITON_INTERPRET=1``)."""
    _, _, why = _load()
    if why:
        return False, why
    if device_type == "cuda":
        return True, ""
    if device_type == "cpu":
        if _interpreting():
            return True, ""
        return False, "Triton runs on CUDA tensors; set TRITON_INTERPRET=1 to run its interpreter on CPU tensors"
    return False, f"Triton does not run on {device_type} tensors"


def kernels(device_type: str) -> frozenset[str]:
    """The six GRM kernels (projection, reprojection, graph convolution; forward and backward), plus the WSSS
    kernels of ``grmseg.ops.impl.triton_wsss`` and the dense CRF of ``grmseg.ops.impl.triton_crf`` when those
    modules import."""
    return _KERNELS | _WSSS_KERNELS | _CRF_KERNELS if device_type in ("cpu", "cuda") else frozenset()


def _adopt(module: str, names: str) -> frozenset[str]:
    """Expose the kernels that the launch policy module ``grmseg.ops.impl.<module>`` lists in ``<names>`` (none when
    the module does not import)."""
    try:
        mod = importlib.import_module(f"grmseg.ops.impl.{module}")
    except ImportError:  # not part of this build
        return frozenset()
    adopted = frozenset(getattr(mod, names))
    for name in adopted:
        globals()[name] = getattr(mod, name)
    return adopted


# The WSSS kernels (cam, affinities, random walk) and the dense CRF have their own launch policy modules.
_WSSS_KERNELS = _adopt("triton_wsss", "WSSS_KERNELS")
_CRF_KERNELS = _adopt("triton_crf", "CRF_KERNELS")


# ------------------------------------------------------------------------------------------------ policy
def _next_pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def _block_k(k: int) -> int:
    """The node axis padded to a power of two >= 16 (the smallest ``tl.dot`` dimension)."""
    return max(16, _next_pow2(k))


def _needs_int64(*tensors: Tensor) -> bool:
    """Whether an element offset inside one of ``tensors`` (or a contiguous output like it) can pass 2**31 - 1."""
    for t in tensors:
        if t.numel() > _INT32_MAX:
            return True
        if sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride(), strict=True)) > _INT32_MAX:
            return True
    return False


def _fallback(*tensors: Tensor | None, k: int) -> bool:
    """Cases the kernels leave to the reference: float64, K > MAX_K, empty tensors."""
    present = [t for t in tensors if t is not None]
    return k > MAX_K or any(t.dtype == torch.float64 or t.numel() == 0 for t in present)


def _common(t: Tensor) -> dict:
    """Constexprs every launch takes: UPCAST (bf16 dots under the interpreter) and the fp32 dot precision."""
    interp = _interpreting()
    return {
        "UPCAST": interp and t.dtype == torch.bfloat16,
        "PRECISION": "ieee" if interp else FP32_PRECISION,
    }


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _splits(batch: int, pixels: int, device: torch.device) -> tuple[int, int]:
    """``(num_splits, pixels_per_split)``: enough programs to fill the GPU, few enough partial sums."""
    if _interpreter_policy(device):
        return 1, pixels  # the interpreter: one program per batch (and channel block) walks every tile
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    want = -(-2 * sms // batch)
    most = max(1, pixels // _MIN_PIXELS_PER_SPLIT)
    per = -(-pixels // max(1, min(want, most)))
    per = -(-per // _SPLIT_ALIGN) * _SPLIT_ALIGN
    return -(-pixels // per), per


def _autotune_on(device: torch.device) -> bool:
    return not _interpreter_policy(device) and os.environ.get("GRMSEG_TRITON_AUTOTUNE", "1") != "0"


def _config(**kwargs) -> object:
    triton = _load()[0]
    num_warps = kwargs.pop("num_warps", 4)
    num_stages = kwargs.pop("num_stages", 2)
    return triton.Config(kwargs, num_warps=num_warps, num_stages=num_stages)


@functools.cache
def _tuned(kernel_name: str, configs_key: tuple, key: tuple[str, ...]) -> object:
    """A ``triton.autotune`` wrapper of ``grmseg.triton.<kernel_name>`` over the configs in ``configs_key``."""
    triton, kmod, _ = _load()
    configs = [_config(**dict(c)) for c in configs_key]
    return triton.autotune(configs=configs, key=list(key))(getattr(kmod, kernel_name))


def _freeze(configs: list[dict]) -> tuple:
    return tuple(tuple(sorted(c.items())) for c in configs)


#: Rough register budget: fp32 values a program may keep live per thread before spilling.
_LIVE_PER_THREAD = 160


def _fits(live_fp32: int, num_warps: int) -> bool:
    return live_fp32 <= num_warps * 32 * _LIVE_PER_THREAD


#: The widest channel block a program keeps whole (then ``x`` is loaded once per tile: ``FUSED``).
_FUSED_MAX_C = 512


def _pixel_live(block_k: int, block_co: int, block_p: int, block_c: int, tiles: int, fused: bool) -> int:
    """Rough count of 32-bit registers a split-kernel program needs: ``tiles`` fp32 accumulators, the fp32
    logits/softmax/gradient tiles, and (counted at half size, the dtype the kernels are tuned for) ``tiles``
    input tiles ``[BLOCK_CO, BLOCK_P]`` plus the weight block (fused) or the channel chunk."""
    extra = block_k * block_co if fused else block_c * block_p
    return tiles * block_k * block_co + (2 + tiles) * block_k * block_p + (tiles * block_co * block_p + extra) // 2


def _pixel_configs(block_k: int, channels: int, accumulators: int) -> list[dict]:
    """Autotune configs for the split kernels: BLOCK_P pixels per tile, BLOCK_C channels per logit chunk,
    BLOCK_CO channels owned by a program (its ``accumulators`` fp32 ``[BLOCK_K, BLOCK_CO]`` blocks stay in
    registers). ``FUSED`` configs own every channel and load ``x`` once per tile; narrower ones recompute the
    logits per channel block (re-reading ``x`` from L2). Configs that would clearly spill are left out."""
    c_pow2 = max(16, _next_pow2(channels))
    block_c = 64 if block_k <= 64 else 32
    widths = [(c_pow2, True)] if c_pow2 <= _FUSED_MAX_C else []
    widths += [(co, False) for co in (256, 128, 64, 32) if co < c_pow2]
    out = []
    for block_co, fused in widths:
        for block_p in (128, 64, 32):
            for num_warps in (4, 8):
                if _fits(_pixel_live(block_k, block_co, block_p, block_c, accumulators, fused), num_warps):
                    out.append({"BLOCK_P": block_p, "BLOCK_C": block_c, "BLOCK_CO": block_co, "FUSED": fused,
                                "num_warps": num_warps, "num_stages": 2})
                    break  # the fewest warps that fit
    if not out:
        out.append({"BLOCK_P": 32, "BLOCK_C": 32, "BLOCK_CO": 32, "FUSED": False, "num_warps": 8, "num_stages": 2})
    return out[:6]


def _pixel_fixed(block_k: int, channels: int, accumulators: int, device: torch.device) -> dict:
    """The fixed config: large blocks under the interpreter (each program instance costs ~1 ms there); on
    CUDA without autotuning, a fused config when one fits, else the widest channel block up to 128."""
    c_pow2 = max(16, _next_pow2(channels))
    if _interpreter_policy(device):
        fused = c_pow2 <= 256
        return {"BLOCK_P": 128, "BLOCK_C": 64, "BLOCK_CO": c_pow2 if fused else 256, "FUSED": fused,
                "num_warps": 4, "num_stages": 1}
    configs = _pixel_configs(block_k, channels, accumulators)
    # fused only up to 256 channels: its whole-C operand blocks must also fit shared memory for fp32 inputs
    return max(configs, key=lambda cfg: (cfg["FUSED"] and cfg["BLOCK_CO"] <= 256, min(cfg["BLOCK_CO"], 128),
                                         cfg["BLOCK_P"], -cfg["num_warps"]))


def _launch_pixel_kernel(kernel_name: str, device: torch.device, block_k: int, channels: int, accumulators: int,
                         programs_per_cb: int, args: tuple, consts: dict) -> None:
    """Launch a kernel whose grid is (channel blocks x ``programs_per_cb``), autotuned on CUDA."""
    triton, kmod, _ = _load()
    if _autotune_on(device):
        fn = _tuned(kernel_name, _freeze(_pixel_configs(block_k, channels, accumulators)), ("C", "P", "K"))
        fn[lambda meta: (triton.cdiv(channels, meta["BLOCK_CO"]) * programs_per_cb,)](*args, **consts)
        return
    cfg = _pixel_fixed(block_k, channels, accumulators, device)
    grid = (triton.cdiv(channels, cfg["BLOCK_CO"]) * programs_per_cb,)
    getattr(kmod, kernel_name)[grid](*args, **consts, **cfg)


def _reduce(part: Tensor, dims: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Sum fp32 partials over ``dims`` in a fixed order (deterministic) and cast to ``dtype``."""
    if all(part.shape[d] == 1 for d in dims):
        return part.reshape([n for d, n in enumerate(part.shape) if d not in dims]).to(dtype)
    return part.sum(dims).to(dtype)


def _device_guard(t: Tensor) -> contextlib.AbstractContextManager:
    """Make ``t``'s GPU current while launching (Triton launches on the current device's current stream)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


# ------------------------------------------------------------------------------------------- grm_project
def grm_project_forward(x: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel-to-node voting, see :func:`grmseg.reference.grm_project`.

    Args:
        x: ``[B, C, P]`` (any strides).  w: ``[K, C]``.  b: ``[K]``.  Same dtype and device.

    Returns:
        ``h [B, K, C]`` and ``m [B, K]``, contiguous, in the dtype of ``x``.
    """
    bsz, c, p = x.shape
    k = w.shape[0]
    if _fallback(x, w, b, k=k):
        return _ref.grm_project(x, w, b)
    splits, per = _splits(bsz, p, x.device)
    h_part = torch.empty(splits, bsz, k, c, device=x.device, dtype=torch.float32)
    m_part = torch.empty(splits, bsz, k, device=x.device, dtype=torch.float32)
    block_k = _block_k(k)
    args = (x, w, b, h_part, m_part, bsz, c, p, k, per, splits,
            x.stride(0), x.stride(1), x.stride(2), w.stride(0), w.stride(1), b.stride(0))
    consts = {"BLOCK_K": block_k, "INT64": _needs_int64(x), **_common(x)}
    with _device_guard(x):
        _launch_pixel_kernel("grm_project_fwd_kernel", x.device, block_k, c, 1, splits * bsz, args, consts)
    return _reduce(h_part, (0,), x.dtype), _reduce(m_part, (0,), x.dtype)


def grm_project_backward(gh: Tensor, gm: Tensor, x: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`grm_project_forward`; the assignment is recomputed from ``x``, never stored.

    Args:
        gh: ``[B, K, C]``.  gm: ``[B, K]``.  x, w, b: the forward inputs.

    Returns:
        ``(gx [B, C, P], gw [K, C], gb [K])``, contiguous, in the dtypes of ``x``, ``w``, ``b``.
    """
    bsz, c, p = x.shape
    k = w.shape[0]
    if _fallback(gh, gm, x, w, b, k=k):
        return _ref.grm_project_backward(gh, gm, x, w, b)
    splits, per = _splits(bsz, p, x.device)
    gx = torch.empty(bsz, c, p, device=x.device, dtype=x.dtype)
    gw_part = torch.empty(splits, bsz, k, c, device=x.device, dtype=torch.float32)
    gb_part = torch.empty(splits, bsz, k, device=x.device, dtype=torch.float32)
    block_k = _block_k(k)
    args = (gh, gm, x, w, b, gx, gw_part, gb_part, bsz, c, p, k, per, splits,
            gh.stride(0), gh.stride(1), gh.stride(2), gm.stride(0), gm.stride(1),
            x.stride(0), x.stride(1), x.stride(2), w.stride(0), w.stride(1), b.stride(0))
    consts = {"BLOCK_K": block_k, "INT64": _needs_int64(x, gx), **_common(x)}
    with _device_guard(x):
        _launch_pixel_kernel("grm_project_bwd_kernel", x.device, block_k, c, 1, splits * bsz, args, consts)
    return gx, _reduce(gw_part, (0, 1), w.dtype), _reduce(gb_part, (0, 1), b.dtype)


# ----------------------------------------------------------------------------------------- grm_reproject
def _reproject_fwd_configs(block_k: int, channels: int) -> list[dict]:
    """Configs for the reprojection forward: BLOCK_P pixels per program, BLOCK_C channels per chunk; ``FUSED``
    ones take every channel in one chunk and load ``x`` once."""
    c_pow2 = max(16, _next_pow2(channels))
    candidates = [(bp, c_pow2, True) for bp in (128, 64, 32)] if c_pow2 <= _FUSED_MAX_C else []
    candidates += [(128, 64, False), (64, 64, False), (128, 32, False), (256, 32, False), (32, 64, False)]
    out = []
    for block_p, block_c, fused in candidates:
        for num_warps in (4, 8):
            if _fits(2 * block_k * block_p + (3 * block_c * block_p + 2 * block_c * block_k) // 2, num_warps):
                out.append({"BLOCK_P": block_p, "BLOCK_C": block_c, "FUSED": fused, "num_warps": num_warps,
                            "num_stages": 2})
                break
    return out[:6] or [{"BLOCK_P": 32, "BLOCK_C": 32, "FUSED": False, "num_warps": 8, "num_stages": 2}]


def _reproject_fwd_fixed(block_k: int, channels: int, device: torch.device) -> dict:
    """The fixed reprojection-forward config: the interpreter's, or CUDA's first config when not autotuning."""
    c_pow2 = max(16, _next_pow2(channels))
    if _interpreter_policy(device):
        fused = c_pow2 <= 256
        return {"BLOCK_P": 128, "BLOCK_C": c_pow2 if fused else 64, "FUSED": fused, "num_warps": 4, "num_stages": 1}
    return _reproject_fwd_configs(block_k, channels)[0]


def grm_reproject_forward(x: Tensor, q: Tensor, v: Tensor) -> Tensor:
    """Node-to-pixel mapping with the residual, see :func:`grmseg.reference.grm_reproject`.

    Args:
        x: ``[B, C, P]``.  q, v: ``[B, K, C]``.  Same dtype and device.

    Returns:
        ``y [B, C, P]``, contiguous, in the dtype of ``x``.
    """
    bsz, c, p = x.shape
    k = q.shape[1]
    if _fallback(x, q, v, k=k):
        return _ref.grm_reproject(x, q, v)
    triton, kmod, _ = _load()
    y = torch.empty(bsz, c, p, device=x.device, dtype=x.dtype)
    block_k = _block_k(k)
    consts = {"BLOCK_K": block_k, "INT64": _needs_int64(x, y), **_common(x)}

    args = (x, q, v, y, c, p, k, x.stride(0), x.stride(1), x.stride(2), q.stride(0), q.stride(1), q.stride(2),
            v.stride(0), v.stride(1), v.stride(2))
    with _device_guard(x):
        if _autotune_on(x.device):
            fn = _tuned("grm_reproject_fwd_kernel", _freeze(_reproject_fwd_configs(block_k, c)), ("C", "P", "K"))
            fn[lambda meta: (triton.cdiv(p, meta["BLOCK_P"]) * bsz,)](*args, **consts)
        else:
            cfg = _reproject_fwd_fixed(block_k, c, x.device)
            kmod.grm_reproject_fwd_kernel[(triton.cdiv(p, cfg["BLOCK_P"]) * bsz,)](*args, **consts, **cfg)
    return y


def grm_reproject_backward(gy: Tensor, x: Tensor, q: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`grm_reproject_forward`; the assignment is recomputed from ``x``, never stored.

    Args:
        gy: ``[B, C, P]``.  x, q, v: the forward inputs.

    Returns:
        ``(gx [B, C, P], gq [B, K, C], gv [B, K, C])``, contiguous, in the dtypes of ``x``, ``q``, ``v``.
    """
    bsz, c, p = x.shape
    k = q.shape[1]
    if _fallback(gy, x, q, v, k=k):
        return _ref.grm_reproject_backward(gy, x, q, v)
    splits, per = _splits(bsz, p, x.device)
    gx = torch.empty(bsz, c, p, device=x.device, dtype=x.dtype)
    gq_part = torch.empty(splits, bsz, k, c, device=x.device, dtype=torch.float32)
    gv_part = torch.empty(splits, bsz, k, c, device=x.device, dtype=torch.float32)
    block_k = _block_k(k)
    args = (gy, x, q, v, gx, gq_part, gv_part, bsz, c, p, k, per, splits,
            gy.stride(0), gy.stride(1), gy.stride(2), x.stride(0), x.stride(1), x.stride(2),
            q.stride(0), q.stride(1), q.stride(2), v.stride(0), v.stride(1), v.stride(2))
    consts = {"BLOCK_K": block_k, "INT64": _needs_int64(x, gy, gx), **_common(x)}
    with _device_guard(x):
        _launch_pixel_kernel("grm_reproject_bwd_kernel", x.device, block_k, c, 2, splits * bsz, args, consts)
    return gx, _reduce(gq_part, (0,), q.dtype), _reduce(gv_part, (0,), v.dtype)


# -------------------------------------------------------------------------------------------- graph_conv
def _graph_configs(block_k: int, first: str, second: str) -> list[dict]:
    """Configs for a graph_conv kernel whose output block is [BLOCK_K, ``first``] and loop chunk ``second``."""
    out = []
    for blk, chunk, nw in ((64, 32, 4), (128, 32, 8), (32, 64, 4), (64, 64, 8)):
        if block_k * blk <= 16384:
            out.append({first: blk, second: chunk, "num_warps": nw, "num_stages": 2})
    return out or [{first: 32, second: 32, "num_warps": 4, "num_stages": 2}]


def _graph_fixed(device: torch.device, block_k: int) -> dict:
    """The fixed graph_conv config (the interpreter's, or CUDA's when not autotuning; always backward's first
    kernel, whose D block sets the shape of the adjacency partials)."""
    if _interpreter_policy(device):
        return {"BLOCK_F": 64, "BLOCK_D": 64, "num_warps": 4, "num_stages": 1}
    blk = 64 if block_k <= 64 else 32
    return {"BLOCK_F": 32, "BLOCK_D": blk, "num_warps": 4, "num_stages": 2}


def graph_conv_forward(z: Tensor, adj: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> Tensor:
    """One GCN layer ``act(adj (z weight) + bias)``, see :func:`grmseg.reference.graph_conv`.

    Args:
        z: ``[B, K, F]``.  adj: ``[K, K]``.  weight: ``[F, D]``.  bias: ``[D]`` or None.
        activation: ``"relu"``, ``"leaky_relu"`` (slope 0.2) or ``"none"``.

    Returns:
        ``[B, K, D]``, contiguous, in the dtype of ``z``.
    """
    bsz, k, f = z.shape
    d = weight.shape[1]
    if _fallback(z, adj, weight, bias, k=k) or activation not in _ACTIVATION_CODE:
        return _ref.graph_conv(z, adj, weight, bias, activation)
    triton, kmod, _ = _load()
    out = torch.empty(bsz, k, d, device=z.device, dtype=z.dtype)
    block_k = _block_k(k)
    has_bias = bias is not None
    bias_arg = bias if has_bias else weight
    args = (z, adj, weight, bias_arg, out, k, f, d,
            z.stride(0), z.stride(1), z.stride(2), adj.stride(0), adj.stride(1),
            weight.stride(0), weight.stride(1), bias.stride(0) if has_bias else 0)
    consts = {"HAS_BIAS": has_bias, "ACTIVATION": _ACTIVATION_CODE[activation], "BLOCK_K": block_k, **_common(z)}
    with _device_guard(z):
        if _autotune_on(z.device):
            fn = _tuned("graph_conv_fwd_kernel", _freeze(_graph_configs(block_k, "BLOCK_D", "BLOCK_F")),
                        ("K", "F", "D"))
            fn[lambda meta: (triton.cdiv(d, meta["BLOCK_D"]) * bsz,)](*args, **consts)
        else:
            cfg = _graph_fixed(z.device, block_k)
            kmod.graph_conv_fwd_kernel[(triton.cdiv(d, cfg["BLOCK_D"]) * bsz,)](*args, **consts, **cfg)
    return out


def graph_conv_backward(
    gout: Tensor,
    out: Tensor,
    z: Tensor,
    adj: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    activation: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Gradients of :func:`graph_conv_forward`; ``out`` (the forward output) gives the activation mask.

    Args:
        gout, out: ``[B, K, D]``.  z: ``[B, K, F]``.  adj: ``[K, K]``.  weight: ``[F, D]``.  bias: ``[D]`` or None.

    Returns:
        ``(gz [B, K, F], gadj [K, K], gweight [F, D], gbias [D] or None)``, contiguous, in the input dtypes.
    """
    bsz, k, f = z.shape
    d = weight.shape[1]
    if _fallback(gout, out, z, adj, weight, bias, k=k) or activation not in _ACTIVATION_CODE:
        return _ref.graph_conv_backward(gout, out, z, adj, weight, bias, activation)
    triton, kmod, _ = _load()
    block_k = _block_k(k)
    common = _common(z)
    fixed = _graph_fixed(z.device, block_k)
    # kernel 1's D block fixes the shape of the adjacency partials, so it is not tuned
    block_d1 = fixed["BLOCK_D"]
    num_db = triton.cdiv(d, block_d1)
    gzw = torch.empty(bsz, k, d, device=z.device, dtype=torch.float32)
    gadj_part = torch.empty(bsz, num_db, k, k, device=z.device, dtype=torch.float32)
    gbias_part = torch.empty(bsz, d, device=z.device, dtype=torch.float32)
    gz = torch.empty(bsz, k, f, device=z.device, dtype=z.dtype)
    gweight = torch.empty(f, d, device=z.device, dtype=weight.dtype)
    tune = _autotune_on(z.device)
    with _device_guard(z):
        kmod.graph_conv_bwd_pre_kernel[(num_db * bsz,)](
            gout, out, z, adj, weight, gzw, gadj_part, gbias_part, bsz, k, f, d,
            gout.stride(0), gout.stride(1), gout.stride(2), out.stride(0), out.stride(1), out.stride(2),
            z.stride(0), z.stride(1), z.stride(2), adj.stride(0), adj.stride(1), weight.stride(0), weight.stride(1),
            ACTIVATION=_ACTIVATION_CODE[activation], BLOCK_K=block_k, **common, **fixed,
        )
        z_args = (gzw, weight, gz, k, f, d, weight.stride(0), weight.stride(1))
        w_args = (z, gzw, gweight, bsz, k, f, d, z.stride(0), z.stride(1), z.stride(2))
        if tune:
            fz = _tuned("graph_conv_bwd_z_kernel", _freeze(_graph_configs(block_k, "BLOCK_F", "BLOCK_D")),
                        ("K", "F", "D"))
            fz[lambda meta: (triton.cdiv(f, meta["BLOCK_F"]) * bsz,)](*z_args, BLOCK_K=block_k, **common)
            fw = _tuned("graph_conv_bwd_w_kernel", _freeze(_graph_configs(block_k, "BLOCK_F", "BLOCK_D")),
                        ("K", "F", "D"))
            fw[lambda meta: (triton.cdiv(f, meta["BLOCK_F"]) * triton.cdiv(d, meta["BLOCK_D"]),)](
                *w_args, BLOCK_K=block_k, **common
            )
        else:
            kmod.graph_conv_bwd_z_kernel[(triton.cdiv(f, fixed["BLOCK_F"]) * bsz,)](
                *z_args, BLOCK_K=block_k, **common, **fixed
            )
            grid_w = (triton.cdiv(f, fixed["BLOCK_F"]) * triton.cdiv(d, fixed["BLOCK_D"]),)
            kmod.graph_conv_bwd_w_kernel[grid_w](*w_args, BLOCK_K=block_k, **common, **fixed)
    gadj = _reduce(gadj_part, (0, 1), adj.dtype)
    gbias = _reduce(gbias_part, (0,), bias.dtype) if bias is not None else None
    return gz, gadj, gweight, gbias
