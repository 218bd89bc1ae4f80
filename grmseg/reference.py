"""Plain PyTorch for every grmseg op: the specification and the test oracle.

Every function here is differentiable with ordinary autograd, so ``torch.autograd.gradcheck`` checks the
explicit ``*_backward`` formulas below, and every fast backend is tested against these functions.
Shapes follow ``DESIGN.md``: B batch, C channels, P = H*W pixels, K nodes/classes, D affinity offsets.

Half-precision inputs are computed in float32 and the results are cast back to the input dtype, which is
the accumulation rule every backend follows. float32 and float64 inputs are computed in their own dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "ACTIVATIONS",
    "affinity_offsets",
    "boundary_affinity",
    "cam",
    "crf_features",
    "dense_crf",
    "graph_conv",
    "graph_conv_backward",
    "grm_project",
    "grm_project_backward",
    "grm_project_backward_kept",
    "grm_project_keep",
    "grm_reproject",
    "grm_reproject_backward",
    "grm_reproject_backward_kept",
    "grm_reproject_keep",
    "local_affinity",
    "path_offsets",
    "radius_from_offsets",
    "random_walk",
    "transition_matrix",
]

ACTIVATIONS = ("relu", "leaky_relu", "none")
LEAKY_SLOPE = 0.2
CAM_EPS = 1e-5
#: dense_crf: probabilities are clipped to [CRF_PROB_CLIP, 1] before -log (pydensecrf.utils.unary_from_softmax).
CRF_PROB_CLIP = 1e-5
#: dense_crf: the symmetric kernel normalisation is (sum_j k_ij + CRF_NORM_EPS)^-1/2 (pydensecrf's DenseKernel).
CRF_NORM_EPS = 1e-20
#: dense_crf: the exact reference builds [H W, H W] kernels; larger images are refused (use the lattice backends).
CRF_REFERENCE_MAX_PIXELS = 128 * 128


def _acc(t: Tensor) -> Tensor:
    """The accumulation dtype view of ``t``: float32 for fp16/bf16, unchanged otherwise."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


# ----------------------------------------------------------------------------------------------------------
# GRM projection: pixels vote over K nodes.
# ----------------------------------------------------------------------------------------------------------
def _project_assignment(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    s = torch.einsum("kc,bcp->bkp", w, x) + b[None, :, None]
    return s.softmax(dim=1)


def grm_project(x: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel-to-node voting.

    Args:
        x: ``[B, C, P]`` pixel features.
        w: ``[K, C]`` voting weights.
        b: ``[K]`` voting bias.

    Returns:
        ``h [B, K, C]`` with ``h[k, c] = sum_p a[k, p] x[c, p]`` and ``m [B, K]`` with ``m[k] = sum_p a[k, p]``,
        where ``a = softmax_K(w x + b)``.
    """
    h, m, _ = grm_project_keep(x, w, b)
    return h, m


def grm_project_keep(x: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`grm_project` that also returns its assignment, for :func:`grm_project_backward_kept`.

    Returns:
        ``h [B, K, C]``, ``m [B, K]`` (dtype of ``x``) and ``a [B, K, P] = softmax_K(w x + b)`` in the
        accumulation dtype (float32 for half inputs, else the dtype of ``x``).
    """
    x_, w_, b_ = _acc(x), _acc(w), _acc(b)
    a = _project_assignment(x_, w_, b_)
    h = torch.einsum("bkp,bcp->bkc", a, x_)
    m = a.sum(dim=-1)
    return h.to(x.dtype), m.to(x.dtype), a


def grm_project_backward(
    gh: Tensor, gm: Tensor, x: Tensor, w: Tensor, b: Tensor, gx_base: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Explicit gradients of :func:`grm_project`; recomputes the ``[B, K, P]`` assignment from ``x``.

    Args:
        gh: ``[B, K, C]`` gradient of ``h``.  gm: ``[B, K]`` gradient of ``m``.
        x, w, b: the forward inputs.
        gx_base: ``[B, C, P]`` or None: a gradient of ``x`` from elsewhere, added to ``gx``.

    Returns:
        ``(gx [B, C, P], gw [K, C], gb [K])`` in the dtypes of ``x``, ``w``, ``b``.
    """
    a = _project_assignment(_acc(x), _acc(w), _acc(b))
    return grm_project_backward_kept(gh, gm, x, a, w, b, gx_base)


def grm_project_backward_kept(
    gh: Tensor, gm: Tensor, x: Tensor, a: Tensor, w: Tensor, b: Tensor, gx_base: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`grm_project_backward` from the assignment ``a [B, K, P]`` kept by :func:`grm_project_keep`.

    ``b`` only gives the dtype of ``gb``. Returns ``(gx, gw, gb)`` as :func:`grm_project_backward`.
    """
    x_, w_, gh_, gm_, a_ = _acc(x), _acc(w), _acc(gh), _acc(gm), _acc(a)
    ga = torch.einsum("bkc,bcp->bkp", gh_, x_) + gm_[:, :, None]
    gs = a_ * (ga - (a_ * ga).sum(dim=1, keepdim=True))
    gx = torch.einsum("bkc,bkp->bcp", gh_, a_) + torch.einsum("kc,bkp->bcp", w_, gs)
    if gx_base is not None:
        gx = gx + _acc(gx_base)
    gw = torch.einsum("bkp,bcp->kc", gs, x_)
    gb = gs.sum(dim=(0, 2))
    return gx.to(x.dtype), gw.to(w.dtype), gb.to(b.dtype)


# ----------------------------------------------------------------------------------------------------------
# GRM reprojection: nodes map back to pixels, residual included.
# ----------------------------------------------------------------------------------------------------------
def _reproject_assignment(x: Tensor, q: Tensor) -> Tensor:
    return torch.einsum("bkc,bcp->bkp", q, x).softmax(dim=1)


def grm_reproject(x: Tensor, q: Tensor, v: Tensor) -> Tensor:
    """Node-to-pixel mapping with the residual fused.

    Args:
        x: ``[B, C, P]`` pixel features.
        q: ``[B, K, C]`` node keys (already scaled).
        v: ``[B, K, C]`` node values.

    Returns:
        ``y [B, C, P] = x + v^T softmax_K(q x)``.
    """
    return grm_reproject_keep(x, q, v)[0]


def grm_reproject_keep(x: Tensor, q: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`grm_reproject` that also returns its assignment, for :func:`grm_reproject_backward_kept`.

    Returns:
        ``y [B, C, P]`` (dtype of ``x``) and ``a [B, K, P] = softmax_K(q x)`` in the accumulation dtype.
    """
    x_, q_, v_ = _acc(x), _acc(q), _acc(v)
    a = _reproject_assignment(x_, q_)
    y = x_ + torch.einsum("bkc,bkp->bcp", v_, a)
    return y.to(x.dtype), a


def grm_reproject_backward(gy: Tensor, x: Tensor, q: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Explicit gradients of :func:`grm_reproject`; recomputes the assignment from ``x``.

    Args:
        gy: ``[B, C, P]`` gradient of ``y``.  x, q, v: the forward inputs.

    Returns:
        ``(gx [B, C, P], gq [B, K, C], gv [B, K, C])`` in the dtypes of ``x``, ``q``, ``v``.
    """
    return grm_reproject_backward_kept(gy, x, _reproject_assignment(_acc(x), _acc(q)), q, v)


def grm_reproject_backward_kept(
    gy: Tensor, x: Tensor, a: Tensor, q: Tensor, v: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`grm_reproject_backward` from the assignment ``a [B, K, P]`` kept by :func:`grm_reproject_keep`."""
    ge, gq, gv = grm_reproject_backward_kept_joint(gy, x, a, q, v)
    gx = _acc(gy) + torch.einsum("bkc,bkp->bcp", _acc(q), ge)
    return gx.to(x.dtype), gq, gv


def grm_reproject_backward_kept_joint(
    gy: Tensor, x: Tensor, a: Tensor, q: Tensor, v: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`grm_reproject_backward_kept` less its ``gx``, for a joint backward with the projection of ``x``.

    Returns:
        ``(ge [B, K, P], gq, gv)``: ``ge`` the gradient of the logits ``q x`` in the accumulation dtype (the
        reprojection's ``gx`` is ``gy + q^T ge``, added by :func:`grm_project_backward_kept_joint`), ``gq`` and
        ``gv`` as :func:`grm_reproject_backward`.
    """
    x_, v_, gy_, a_ = _acc(x), _acc(v), _acc(gy), _acc(a)
    ga = torch.einsum("bkc,bcp->bkp", v_, gy_)
    ge = a_ * (ga - (a_ * ga).sum(dim=1, keepdim=True))
    gq = torch.einsum("bkp,bcp->bkc", ge, x_)
    gv = torch.einsum("bkp,bcp->bkc", a_, gy_)
    return ge, gq.to(q.dtype), gv.to(v.dtype)


def grm_project_backward_kept_joint(
    gh: Tensor, gm: Tensor, x: Tensor, a: Tensor, w: Tensor, b: Tensor, gy: Tensor, ge: Tensor, q: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`grm_project_backward_kept` that also adds the reprojection's ``gx = gy + q^T ge`` (``gy [B, C, P]``,
    ``ge [B, K, P]`` from :func:`grm_reproject_backward_kept_joint`, ``q [B, K, C]``) to its ``gx``: the whole
    gradient of an ``x`` that was both projected and reprojected. Returns ``(gx, gw, gb)``."""
    gx_base = _acc(gy) + torch.einsum("bkc,bkp->bcp", _acc(q), _acc(ge))
    return grm_project_backward_kept(gh, gm, x, a, w, b, gx_base)


# ----------------------------------------------------------------------------------------------------------
# Graph convolution over the K nodes.
# ----------------------------------------------------------------------------------------------------------
def _activate(pre: Tensor, activation: str) -> Tensor:
    if activation == "relu":
        return torch.relu(pre)
    if activation == "leaky_relu":
        return torch.nn.functional.leaky_relu(pre, LEAKY_SLOPE)
    if activation == "none":
        return pre
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def graph_conv(
    z: Tensor, adj: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str = "leaky_relu"
) -> Tensor:
    """One GCN layer: ``act(adj (z weight) + bias)``.

    Args:
        z: ``[B, K, F]`` node features.
        adj: ``[K, K]`` normalised adjacency.
        weight: ``[F, D]``.  bias: ``[D]`` or None.
        activation: ``"relu"``, ``"leaky_relu"`` (slope 0.2) or ``"none"``.

    Returns:
        ``[B, K, D]``.
    """
    z_, adj_, w_ = _acc(z), _acc(adj), _acc(weight)
    pre = torch.matmul(adj_, torch.matmul(z_, w_))
    if bias is not None:
        pre = pre + _acc(bias)
    return _activate(pre, activation).to(z.dtype)


def graph_conv_backward(
    gout: Tensor,
    out: Tensor,
    z: Tensor,
    adj: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    activation: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Explicit gradients of :func:`graph_conv`. ``out`` is the forward output (its sign gives the mask).

    Returns:
        ``(gz [B, K, F], gadj [K, K], gweight [F, D], gbias [D] or None)``.
    """
    gout_, out_, z_, adj_, w_ = _acc(gout), _acc(out), _acc(z), _acc(adj), _acc(weight)
    if activation == "relu":
        gpre = gout_ * (out_ > 0)
    elif activation == "leaky_relu":
        gpre = torch.where(out_ > 0, gout_, gout_ * LEAKY_SLOPE)
    elif activation == "none":
        gpre = gout_
    else:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    zw = torch.matmul(z_, w_)
    gzw = torch.matmul(adj_.transpose(0, 1), gpre)
    gz = torch.matmul(gzw, w_.transpose(0, 1))
    gweight = torch.einsum("bkf,bkd->fd", z_, gzw)
    gadj = torch.einsum("bid,bjd->ij", gpre, zw)
    gbias = None if bias is None else gpre.sum(dim=(0, 1)).to(bias.dtype)
    return gz.to(z.dtype), gadj.to(adj.dtype), gweight.to(weight.dtype), gbias


# ----------------------------------------------------------------------------------------------------------
# Class activation maps.
# ----------------------------------------------------------------------------------------------------------
def cam(feat: Tensor, weight: Tensor, labels: Tensor | None = None) -> Tensor:
    """Class activation maps normalised per (image, class).

    Args:
        feat: ``[B, C, h, w]`` backbone features.
        weight: ``[K, C]`` classifier weights.
        labels: ``[B, K]`` multi-hot image labels (any dtype; non-zero means present) or None.

    Returns:
        ``[B, K, h, w]``: ``relu(weight feat) / (spatial max + 1e-5)``, zero for classes absent from ``labels``.
    """
    c = torch.relu(torch.einsum("kc,bchw->bkhw", _acc(weight), _acc(feat)))
    c = c / (c.amax(dim=(2, 3), keepdim=True) + CAM_EPS)
    if labels is not None:  # absent classes are 0 by definition, even where a NaN made the others NaN
        c = torch.where((labels != 0)[:, :, None, None], c, torch.zeros((), dtype=c.dtype, device=c.device))
    return c.to(feat.dtype)


# ----------------------------------------------------------------------------------------------------------
# Affinities (PSA, IRN) and the random walk.
# ----------------------------------------------------------------------------------------------------------
MAX_RADIUS = 64
"""The largest affinity radius of every backend (6330 offsets; IRN trains at 10, infers at 5)."""


def affinity_offsets(radius: int) -> list[tuple[int, int]]:
    """The PSA half-plane offsets ``(dy, dx)`` for ``radius``, in the order every op uses.

    ``{(0, x): 1 <= x < r}`` then ``{(y, x): 1 <= y < r, -r < x < r, x^2 + y^2 < r^2}`` row by row;
    34 offsets for ``r = 5``, none for ``r = 1``. ``1 <= radius <= MAX_RADIUS`` (64).
    """
    if not isinstance(radius, int) or isinstance(radius, bool) or not 1 <= radius <= MAX_RADIUS:
        raise ValueError(f"radius must be an int in [1, {MAX_RADIUS}], got {radius!r}")
    offsets = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dx * dx + dy * dy < radius * radius:
                offsets.append((dy, dx))
    return offsets


def radius_from_offsets(num_offsets: int, max_radius: int = MAX_RADIUS) -> int:
    """The radius whose offset set has ``num_offsets`` entries (the count grows strictly with the radius)."""
    for r in range(1, max_radius + 1):
        n = len(affinity_offsets(r))
        if n == num_offsets:
            return r
        if n > num_offsets:
            break
    raise ValueError(
        f"aff has {num_offsets} offsets, which is no radius's offset count for radius 1..{max_radius} "
        f"(r=1: 0, r=2: 4, r=3: 12, r=5: 34, ...)"
    )


def _shift(t: Tensor, dy: int, dx: int) -> tuple[Tensor, Tensor]:
    """``t[..., i + dy, j + dx]`` at every ``(i, j)`` (zero outside) and the in-bounds mask ``[h, w]``."""
    h, w = t.shape[-2:]
    out = torch.zeros_like(t)
    valid = torch.zeros(h, w, dtype=torch.bool, device=t.device)
    i0, i1 = max(0, -dy), min(h, h - dy)
    j0, j1 = max(0, -dx), min(w, w - dx)
    if i0 < i1 and j0 < j1:
        out[..., i0:i1, j0:j1] = t[..., i0 + dy : i1 + dy, j0 + dx : j1 + dx]
        valid[i0:i1, j0:j1] = True
    return out, valid


def local_affinity(feat: Tensor, radius: int) -> Tensor:
    """PSA affinity ``exp(-mean_c |f(p) - f(p + o_d)|)`` for every offset ``o_d``; 0 where ``p + o_d`` is outside.

    Args:
        feat: ``[B, C, h, w]``.  radius: >= 1.

    Returns:
        ``[B, D, h, w]`` with D = ``len(affinity_offsets(radius))``.
    """
    f = _acc(feat)
    planes = []
    for dy, dx in affinity_offsets(radius):
        shifted, valid = _shift(f, dy, dx)
        aff = torch.exp(-(f - shifted).abs().mean(dim=1))
        planes.append(torch.where(valid, aff, torch.zeros_like(aff)))  # outside the map: 0, even next to a NaN
    if not planes:
        return feat.new_zeros(feat.shape[0], 0, *feat.shape[2:])
    return torch.stack(planes, dim=1).to(feat.dtype)


def path_offsets(dy: int, dx: int) -> list[tuple[int, int]]:
    """The path pixels of the offset ``(dy, dx)``, relative to its start: IRN's path (its ``PathIndex``).

    Every pixel ``(y, x)`` of the bounding box of the segment from ``(0, 0)`` to ``(dy, dx)`` whose squared
    perpendicular distance to the segment, ``(dy x - dx y)^2 / (dy^2 + dx^2)``, is ``< 1`` (tested exactly, in
    integers: ``(dy x - dx y)^2 < dy^2 + dx^2``). Both end points are on it. Wider than a rasterised line: 242
    pixels over the 34 offsets of radius 5 (a thin line has 130).

    Returns:
        The pixels sorted by ``(|y| + |x|, y, x)``: ``(0, 0)`` first, ``(dy, dx)`` last (the only box pixel with
        the largest ``|y| + |x|``). ``[(0, 0)]`` for ``(0, 0)``.
    """
    length_sq = dy * dy + dx * dx
    pts = [
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        if length_sq == 0 or (dy * x - dx * y) ** 2 < length_sq
    ]
    return sorted(pts, key=lambda p: (abs(p[0]) + abs(p[1]), p[0], p[1]))


def boundary_affinity(boundary: Tensor, radius: int) -> Tensor:
    """IRN affinity ``1 - max`` of the boundary map over the path pixels of ``o_d`` (``path_offsets``) from ``p``.

    Args:
        boundary: ``[B, 1, h, w]`` boundary probabilities.  radius: >= 1.

    Returns:
        ``[B, D, h, w]``; 0 where ``p + o_d`` is outside the map.
    """
    bd = _acc(boundary)[:, 0]
    planes = []
    for dy, dx in affinity_offsets(radius):
        _, valid = _shift(bd, dy, dx)
        path_max = torch.stack([_shift(bd, py, px)[0] for py, px in path_offsets(dy, dx)]).amax(dim=0)
        planes.append(torch.where(valid, 1.0 - path_max, torch.zeros_like(path_max)))
    if not planes:
        return boundary.new_zeros(boundary.shape[0], 0, *boundary.shape[2:])
    return torch.stack(planes, dim=1).to(boundary.dtype)


def transition_matrix(aff: Tensor, beta: float) -> Tensor:
    """The dense column-normalised transition matrix ``T [B, N, N]`` of ``A^beta`` (the oracle only).

    ``A`` is symmetric with ``A[p, p + o_d] = A[p + o_d, p] = aff[d, p]`` for in-bounds pairs and unit diagonal.
    """
    bsz, num_offsets, h, w = aff.shape
    n = h * w
    a = _acc(aff)
    idx = torch.arange(n, device=aff.device).view(h, w)
    mats = []
    for bi in range(bsz):
        dense = torch.eye(n, dtype=a.dtype, device=aff.device)
        for d, (dy, dx) in enumerate(affinity_offsets(radius_from_offsets(num_offsets))):
            shifted_idx, valid = _shift(idx, dy, dx)
            src, dst = idx[valid], shifted_idx[valid]
            vals = a[bi, d][valid]
            dense = dense.index_put((src, dst), vals).index_put((dst, src), vals)
        powered = dense.pow(beta)
        mats.append(powered / powered.sum(dim=0, keepdim=True))
    return torch.stack(mats)


def random_walk(cam: Tensor, aff: Tensor, beta: float, steps: int) -> Tensor:
    """Random-walk propagation ``cam_vec @ T^steps`` with the dense ``N x N`` matrix (PSA/IRN's definition).

    Args:
        cam: ``[B, K, h, w]`` scores.
        aff: ``[B, D, h, w]`` affinities for the offsets of ``affinity_offsets(r)`` (r inferred from D).
        beta: power applied to the affinities.  steps: number of propagation steps (>= 0).

    Returns:
        ``[B, K, h, w]``. Memory is O(N^2): this is the oracle for small maps, not the product.
    """
    bsz, k, h, w = cam.shape
    t = transition_matrix(aff, beta)
    vec = _acc(cam).reshape(bsz, k, h * w)
    out = torch.matmul(vec, torch.linalg.matrix_power(t, steps))
    return out.reshape(bsz, k, h, w).to(cam.dtype)


# ----------------------------------------------------------------------------------------------------------
# Fully connected CRF (Kraehenbuehl & Koltun 2011), the model of pydensecrf's DenseCRF2D.
# ----------------------------------------------------------------------------------------------------------
def crf_features(image: Tensor, sxy: float, srgb: float | None = None) -> Tensor:
    """The kernel features of every pixel, row-major: ``(x / sxy, y / sxy)`` and, with ``srgb``, the colours
    ``(r, g, b) / srgb`` after them (pydensecrf's addPairwiseGaussian / addPairwiseBilateral).

    Args:
        image: ``[B, 3, H, W]`` (uint8 or float, 0..255); only its shape is used without ``srgb``.
        sxy: position scale (pixels).  srgb: colour scale, or None for the Gaussian (position-only) kernel.

    Returns:
        ``[B, H*W, 2]`` or ``[B, H*W, 5]`` in float32 (float64 for a float64 image).
    """
    bsz, _, h, w = image.shape
    dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    ys, xs = torch.meshgrid(
        torch.arange(h, device=image.device, dtype=dtype), torch.arange(w, device=image.device, dtype=dtype),
        indexing="ij",
    )
    pos = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1) / torch.tensor(sxy, dtype=dtype)
    pos = pos.expand(bsz, h * w, 2)
    if srgb is None:
        return pos.contiguous()
    rgb = image.to(dtype).reshape(bsz, 3, h * w).transpose(1, 2) / torch.tensor(srgb, dtype=dtype)
    return torch.cat([pos, rgb], dim=2)


def _crf_kernel(feat: Tensor) -> tuple[Tensor, Tensor]:
    """Dense ``k_ij = exp(-|f_i - f_j|^2 / 2)`` (``[N, N]``, diagonal included) and ``n_i = (sum_j k_ij)^-1/2``."""
    sq = torch.zeros(feat.shape[0], feat.shape[0], dtype=feat.dtype, device=feat.device)
    for c in range(feat.shape[1]):  # exact differences (no |a|^2 + |b|^2 - 2ab cancellation)
        sq += (feat[:, None, c] - feat[None, :, c]) ** 2
    k = torch.exp(-0.5 * sq)
    return k, (k.sum(dim=1) + CRF_NORM_EPS).rsqrt()


def dense_crf(
    unary: Tensor,
    image: Tensor,
    iterations: int = 10,
    gaussian_sxy: float = 3.0,
    gaussian_weight: float = 3.0,
    bilateral_sxy: float = 80.0,
    bilateral_srgb: float = 13.0,
    bilateral_weight: float = 10.0,
) -> Tensor:
    """Mean-field inference of the fully connected CRF with exact dense messages (the oracle, small images only).

    The model of pydensecrf's ``DenseCRF2D`` with ``setUnaryEnergy(-log p)`` (p clipped to
    ``[CRF_PROB_CLIP, 1]``), ``addPairwiseGaussian(gaussian_sxy, gaussian_weight)`` and
    ``addPairwiseBilateral(bilateral_sxy, bilateral_srgb, image, bilateral_weight)`` (Potts compatibility,
    symmetric normalisation), then ``inference(iterations)``::

        Q_0 = softmax_K(log p)
        Q_t = softmax_K(log p + sum_kernels weight * n * (k @ (n * Q_{t-1})))

    with ``k_ij = exp(-|f_i - f_j|^2 / 2)`` over the features of :func:`crf_features`, the diagonal ``j = i``
    included (pydensecrf's lattice filter cannot leave the pixel out) and ``n_i = (sum_j k_ij + 1e-20)^-1/2``.
    A kernel whose weight is 0 is left out. Memory is O((H W)^2) per image: this is the specification and the
    test oracle; :func:`grmseg.ops.dense_crf` is the product (permutohedral lattice).

    Args:
        unary: ``[B, K, H, W]`` class probabilities in ``[0, 1]``.
        image: ``[B, 3, H, W]`` RGB, uint8 or float in ``0..255``.
        iterations: mean-field steps (>= 0).  gaussian_*, bilateral_*: the kernels' scales and weights.

    Returns:
        ``[B, K, H, W]`` marginals Q in the dtype of ``unary`` (computed in float32 for fp16/bf16).
    """
    bsz, k, h, w = unary.shape
    if h * w > CRF_REFERENCE_MAX_PIXELS:
        raise ValueError(
            f"dense_crf: the exact reference builds dense [H*W, H*W] kernels and takes at most "
            f"{CRF_REFERENCE_MAX_PIXELS} pixels, got {h}x{w}; use the lattice backends (csrc on the CPU, triton on "
            "CUDA)"
        )
    logp = _acc(unary).clamp(CRF_PROB_CLIP, 1.0).log().reshape(bsz, k, h * w)
    if image.dtype == torch.float64 or logp.dtype == torch.float64:
        image = image.to(torch.float64)
    kernels = []
    if gaussian_weight != 0:
        kernels.append((crf_features(image, gaussian_sxy), gaussian_weight))
    if bilateral_weight != 0:
        kernels.append((crf_features(image, bilateral_sxy, bilateral_srgb), bilateral_weight))
    out = []
    for bi in range(bsz):
        dense = [(*_crf_kernel(feat[bi].to(logp.dtype)), weight) for feat, weight in kernels]
        q = logp[bi].softmax(dim=0)
        for _ in range(iterations):
            msg = torch.zeros_like(q)
            for kern, norm, weight in dense:
                msg = msg + weight * norm * ((norm * q) @ kern)
            q = (logp[bi] + msg).softmax(dim=0)
        out.append(q)
    return torch.stack(out).reshape(bsz, k, h, w).to(unary.dtype)
