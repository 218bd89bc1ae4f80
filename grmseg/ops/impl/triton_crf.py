"""Triton launch policy and PyTorch glue for ``dense_crf`` (kernels: ``grmseg.triton.dense_crf``).

Meant to be imported by the Triton backend ``grmseg.ops.impl.triton`` (``CRF_KERNELS`` names what it adds); the
function follows the backend contract of ``grmseg.ops._backends``. The computation is the csrc CPU kernel's
(``csrc/cpu/dense_crf_cpu.cpp``: pydensecrf's lattice, symmetric normalisation folded into the weights), split
between Triton kernels (the hash-table lattice build, the neighbour lookups, the splat, blur and update passes) and
PyTorch on the device (features, ranking the lattice points by first entry, the splat CSR, the normalisation):

* lattice points: a table slot's owner is the first entry of its key; sorting the owners gives pydensecrf's point
  order (``torch.argsort`` of distinct integers: deterministic);
* splat CSR: the entries stably sorted by lattice point, so each point's entries stay in entry order, cut into
  chunks of at most ``CHUNK`` entries (partial sums, then each point's partials in order: no atomics, and a point
  with thousands of entries does not serialise one program);
* the table has ``>= 2 (N + 1)(D + 1)`` slots, so it cannot fill up; its keys are packed into 63 bits (D fields
  of ``60 // D`` bits; pydensecrf's default settings need about 8), a little narrower than pydensecrf's int16
  keys for the bilateral kernel (|key| < 12288; wider settings raise, the csrc backend takes them).

Everything is float32 and deterministic (fixed summation orders; the same result on every run). Under the
interpreter (``TRITON_INTERPRET=1``, CPU tensors) the blocks are large and the programs few.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from grmseg import reference as _ref

__all__ = ["CRF_KERNELS", "dense_crf_forward"]

#: The kernel names (``grmseg.ops._backends`` contract) this module implements.
CRF_KERNELS = frozenset({"dense_crf_forward"})
_INT32_MAX = 2**31 - 1


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def _kernels():
    from grmseg.triton import dense_crf

    return dense_crf


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _blocks(interp: bool, kp: int) -> dict[str, int]:
    """Block sizes: few, large programs under the interpreter. On a GPU, tiles of ~512 (update) to ~1024 (splat,
    gather, blur) elements, 16 / 64 pixels for the lattice build (D = 5 / 2: its rank tile is [BLOCK, DP, DP]) and 32
    points for the neighbour lookups:
    sizes that compile for sm_90 without register spills (checked with cuobjdump at K = 2 .. 128)."""
    if interp:
        return {"lattice5": 1024, "lattice2": 1024, "neighbours": 1024, "points": 1024, "pixels": 1024, "chunk": 64}
    return {
        "lattice5": 16,
        "lattice2": 64,
        "neighbours": 32,
        "points": max(4, min(128, 1024 // kp)),
        "pixels": max(4, min(128, 512 // kp)),
        "chunk": 16,
    }


def _scales(d: int) -> Tensor:
    """pydensecrf's diagonal of the elevation matrix, rounded as its float code rounds it."""
    inv_std_dev = float(torch.tensor(math.sqrt(2.0 / 3.0) * (d + 1), dtype=torch.float32))
    return torch.tensor([1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std_dev for i in range(d)], dtype=torch.float32)


def _features(h: int, w: int, sxy: float, rgb: Tensor | None, srgb: float, device: torch.device) -> Tensor:
    """``[N + 1, d]`` float32: ``(x, y) / sxy`` (then ``rgb / srgb``) per pixel, and the zero row (the phantom pixel
    of pydensecrf's padding, see ``build_lattice`` in the C++ kernel)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    sxy32 = torch.tensor(sxy, dtype=torch.float32, device=device)
    cols = [xs.reshape(-1) / sxy32, ys.reshape(-1) / sxy32]
    if rgb is not None:
        srgb32 = torch.tensor(srgb, dtype=torch.float32, device=device)
        cols += [rgb[c].reshape(-1) / srgb32 for c in range(3)]
    f = torch.stack(cols, dim=1)
    return torch.cat([f, f.new_zeros(1, f.shape[1])])


class _Lattice:
    """One kernel's lattice on the device: slice offsets and weights per entry, blur neighbours, splat chunks."""

    def __init__(self, feat: Tensor, n: int, weight: float, kp: int, blocks: dict[str, int]) -> None:
        k = _kernels()
        dev = feat.device
        d = feat.shape[1]
        d1, dp = d + 1, _next_pow2(d + 1)
        np_ = n + (1 if n % 4 else 0)  # with pydensecrf's phantom pixel
        e_all = np_ * d1
        cap = _next_pow2(max(1024, 2 * e_all))
        if cap * dp > _INT32_MAX or e_all > _INT32_MAX // 2 or n * kp > _INT32_MAX:
            raise ValueError(f"dense_crf: the image has too many pixels ({n}) for the Triton lattice")
        bits = (63 - 3) // d  # the packed key's field width (grmseg.triton.dense_crf._pack)
        tkey = torch.full((cap + 1,), -1, dtype=torch.int64, device=dev)
        tkey[cap] = -2  # the dummy slot of inactive lanes: never claimed, never matched
        towner = torch.full((cap + 1,), _INT32_MAX, dtype=torch.int32, device=dev)
        slot_of = torch.empty(e_all, dtype=torch.int32, device=dev)
        bary = torch.empty(e_all, dtype=torch.float32, device=dev)
        bad = torch.zeros(1, dtype=torch.int32, device=dev)
        feat = feat[:np_].contiguous()
        bl = blocks[f"lattice{d}"]
        k.crf_lattice_kernel[(_cdiv(np_, bl),)](
            feat, _scales(d).to(dev), tkey, towner, slot_of, bary, bad, np_, cap - 1, cap,
            D=d, DP=dp, BITS=bits, BLOCK=bl,
        )
        if bad.item():
            raise RuntimeError(
                "dense_crf: lattice coordinates overflow int16 (or the Triton lattice's packed keys, "
                f"{bits}-bit fields of key / {d + 1}): the features (positions / sxy, colours / srgb) span too wide "
                "a range; use larger gaussian_sxy / bilateral_sxy / bilateral_srgb"
            )
        # lattice points in first-entry order (pydensecrf's)
        slots = torch.nonzero(tkey[:cap] != -1).squeeze(1)
        point_slot = slots[torch.argsort(towner[slots])].to(torch.int32)
        m = point_slot.numel()
        slot_point = torch.full((cap,), -1, dtype=torch.int32, device=dev)
        slot_point[point_slot.long()] = torch.arange(m, dtype=torch.int32, device=dev)
        self.m = m
        self.blur = torch.empty(d1, m, 2, dtype=torch.int32, device=dev)
        bn = blocks["neighbours"]
        k.crf_neighbours_kernel[(_cdiv(m, bn),)](
            tkey, slot_point, point_slot, self.blur, m, cap - 1, D=d, DP=dp, BITS=bits, BLOCK=bn
        )
        del tkey, towner
        # entries of the real pixels -> value rows; the splat CSR (entry order within each point)
        point = slot_point[slot_of[: n * d1].long()].long()
        self.offset = (point + 1).to(torch.int32)
        bary = bary[: n * d1]
        perm = torch.argsort(point, stable=True)
        counts = torch.bincount(point, minlength=m)
        seg = torch.zeros(m + 1, dtype=torch.int64, device=dev)
        seg[1:] = torch.cumsum(counts, 0)
        self.seg_pix = torch.div(perm, d1, rounding_mode="floor").to(torch.int32)
        seg_w = bary[perm]
        chunk = blocks["chunk"]
        nchunks = torch.div(counts + chunk - 1, chunk, rounding_mode="floor")
        self.pfirst = torch.zeros(m + 1, dtype=torch.int64, device=dev)
        self.pfirst[1:] = torch.cumsum(nchunks, 0)
        nc = int(self.pfirst[-1].item())
        owner_pt = torch.repeat_interleave(torch.arange(m, device=dev), nchunks)
        cstart = seg[owner_pt] + chunk * (torch.arange(nc, device=dev) - self.pfirst[owner_pt])
        self.cstart = cstart.to(torch.int32)
        self.cend = torch.minimum(cstart + chunk, seg[owner_pt + 1]).to(torch.int32)
        self.pfirst = self.pfirst.to(torch.int32)
        self.nc, self.d1, self.kp, self.blocks = nc, d1, kp, blocks
        # the symmetric normalisation n = (alpha filter(1) + 1e-20)^-1/2, folded into the weights
        alpha = 1.0 / (1.0 + 2.0 ** (-d))
        ones = torch.ones(n, 1, dtype=torch.float32, device=dev)
        self.seg_w = seg_w
        v1 = self.filter(ones, 1)
        alpha32 = torch.tensor(alpha, dtype=torch.float32, device=dev)
        acc = (bary.view(n, d1) * v1[self.offset.long().view(n, d1), 0] * alpha32).sum(dim=1)
        norm = (acc + _ref.CRF_NORM_EPS).rsqrt()
        self.seg_w = (seg_w * norm[self.seg_pix.long()]).contiguous()
        self.slice_w = (bary.view(n, d1) * (weight * alpha32 * norm)[:, None]).reshape(-1).contiguous()

    def filter(self, q: Tensor, kp: int) -> Tensor:
        """Splat (``q [N, kp]``, CSR weights) and blur: the lattice values ``[M + 1, kp]`` (row 0 zero)."""
        k = _kernels()
        dev = q.device
        bp = self.blocks["points"]
        part = torch.empty(max(1, self.nc), kp, dtype=torch.float32, device=dev)
        if self.nc:
            k.crf_splat_kernel[(_cdiv(self.nc, bp),)](
                q, self.seg_pix, self.seg_w, self.cstart, self.cend, part, self.nc,
                KP=kp, CHUNK=self.blocks["chunk"], BLOCK=bp,
            )
        a = torch.zeros(self.m + 1, kp, dtype=torch.float32, device=dev)
        b = torch.zeros_like(a)
        grid = (_cdiv(self.m, bp),)
        k.crf_gather_kernel[grid](part, self.pfirst, a, self.m, KP=kp, BLOCK=bp)
        for j in range(self.d1):
            k.crf_blur_kernel[grid](a, b, self.blur, self.m, j, KP=kp, BLOCK=bp)
            a, b = b, a
        return a


def dense_crf_forward(
    unary: Tensor, image: Tensor, iterations: int, gaussian_sxy: float, gaussian_weight: float,
    bilateral_sxy: float, bilateral_srgb: float, bilateral_weight: float,
) -> Tensor:
    """Mean-field marginals ``[B, K, H, W]`` of the dense CRF, in the dtype of ``unary`` (see the module docstring).

    Args:
        unary: ``[B, K, H, W]`` probabilities (validated by the op layer).  image: ``[B, 3, H, W]`` 0..255.
        iterations, gaussian_*, bilateral_*: as :func:`grmseg.ops.dense_crf`.
    """
    bsz, k, h, w = unary.shape
    n = h * w
    dev = unary.device
    kern = _kernels()
    kp = _next_pow2(k)
    blocks = _blocks(dev.type != "cuda" or _interpreting(), kp)
    u = unary.to(torch.float32).reshape(bsz, k, n).contiguous()
    img = image.to(torch.float32).reshape(bsz, 3, n)
    lg = None
    if gaussian_weight != 0:
        lg = _Lattice(_features(h, w, gaussian_sxy, None, 0.0, dev), n, gaussian_weight, kp, blocks)
    out = torch.empty(bsz, k, n, dtype=torch.float32, device=dev)
    dummy = torch.zeros(1, dtype=torch.float32, device=dev)
    for bi in range(bsz):
        lb = None
        if bilateral_weight != 0:
            feat = _features(h, w, bilateral_sxy, img[bi], bilateral_srgb, dev)
            lb = _Lattice(feat, n, bilateral_weight, kp, blocks)
        p = u[bi].clamp(_ref.CRF_PROB_CLIP, 1.0)
        q = torch.zeros(n, kp, dtype=torch.float32, device=dev)
        q[:, :k] = (p / p.sum(dim=0, keepdim=True)).t()
        if iterations == 0:
            out[bi] = q[:, :k].t()
        for it in range(iterations):
            vg = lg.filter(q, kp) if lg is not None else dummy
            vb = lb.filter(q, kp) if lb is not None else dummy
            bp = blocks["pixels"]
            kern.crf_update_kernel[(_cdiv(n, bp),)](
                q, u[bi], out[bi],
                lg.offset if lg is not None else dummy, lg.slice_w if lg is not None else dummy, vg,
                lb.offset if lb is not None else dummy, lb.slice_w if lb is not None else dummy, vb,
                n, k, _ref.CRF_PROB_CLIP,
                HAS_G=lg is not None, HAS_B=lb is not None, WRITE_OUT=it + 1 == iterations, KP=kp, BLOCK=bp,
            )
    return out.reshape(bsz, k, h, w).to(unary.dtype)
