"""Triton kernels for ``dense_crf``: pydensecrf's permutohedral lattice, built with a hash table, and the mean-field
passes. Kernels only: the launch policy and the PyTorch glue (ranking the lattice points, the CSR, the
normalisation) live in ``grmseg.ops.impl.triton_crf``.

The lattice is the one ``csrc/cpu/dense_crf_cpu.cpp`` builds (and pydensecrf): the same elevation, rounding (half to
even), ranks, barycentric weights and keys. Per-pixel arrays of ``D + 1`` values are tiles ``[BLOCK, DP]`` (``DP`` a
power of two >= D + 1, columns > D unused), so every step is a whole-tile operation.

* ``crf_lattice_kernel``: per pixel its ``D + 1`` entries (key, barycentric weight), each inserted into an
  open-addressing table of packed 63-bit keys (``tkey [cap + 1]`` int64, -1 empty, slot ``cap`` a dummy holding -2
  that never matches; see ``_pack``): one 64-bit CAS claims an empty slot and publishes the key at once, so there
  is no half-written slot to wait for; the entry id goes to ``towner [cap + 1]`` by atomic min. After the launch
  each key's slot holds its first entry, whatever the schedule. ``slot_of[e]`` is the slot of entry ``e``.
* ``crf_neighbours_kernel``: the blur neighbours of each lattice point (key lookups, read only).
* ``crf_splat_kernel`` (partial sums over fixed chunks of ``CHUNK`` CSR entries, in entry order) and
  ``crf_gather_kernel`` (each point's partial sums, in order): the splat as two deterministic gathers.
* ``crf_blur_kernel``: one blur pass along one lattice axis.
* ``crf_update_kernel``: the slice of both kernels, ``Q = p exp(m - max m) / sum`` per pixel.
"""

from __future__ import annotations

import triton
import triton.language as tl

#: 1.5 * 2**23: (x + magic) - magic rounds to nearest, ties to even, for |x| < 2**22
ROUND_MAGIC = tl.constexpr(12582912.0)


@triton.jit
def _mix32(h):
    """lowbias32: a uint32 finaliser."""
    h = h ^ (h >> 16)
    h = h * 0x7FEB352D
    h = h ^ (h >> 15)
    h = h * tl.full([], 0x846CA68B, tl.uint32)
    return h ^ (h >> 16)


@triton.jit
def _slot(word, mask):
    """The home slot of packed keys ``word`` (int64)."""
    lo = (word & 0xFFFFFFFF).to(tl.uint32)
    hi = (word >> 32).to(tl.uint32)
    return (_mix32(lo ^ _mix32(hi)) & mask).to(tl.int32)


@triton.jit
def _pack(key, cols, D: tl.constexpr, BITS: tl.constexpr):
    """int32 keys ``[BLOCK, DP]`` (columns >= D unused) -> ``(word int64 [BLOCK], out of range [BLOCK])``.

    Every coordinate of a key is congruent to the same r mod D + 1 (the vertex's remainder), so a key is r (3 bits)
    and the D values ``(key_c - r) / (D + 1)`` (BITS bits each, two's complement): 63 bits, never -1 (empty)."""
    kc = cols[None, :] < D
    k0 = tl.sum(tl.where(cols[None, :] == 0, key, 0), axis=1)
    r = ((k0 % (D + 1)) + (D + 1)) % (D + 1)
    a = tl.where(kc, (key - r[:, None]) // (D + 1), 0)
    lim = 1 << (BITS - 1)
    out = tl.max((kc & ((a < -lim) | (a >= lim))).to(tl.int32), axis=1) > 0
    field = (a.to(tl.int64) & ((1 << BITS) - 1)) << (3 + BITS * cols[None, :]).to(tl.int64)
    return r.to(tl.int64) + tl.sum(tl.where(kc, field, 0), axis=1), out


@triton.jit
def _unpack(word, cols, D: tl.constexpr, BITS: tl.constexpr):
    """Packed keys ``[BLOCK]`` -> int32 keys ``[BLOCK, DP]`` (columns >= D zero)."""
    r = (word & 7).to(tl.int32)
    field = (word[:, None] >> (3 + BITS * cols[None, :]).to(tl.int64)) & ((1 << BITS) - 1)
    a = tl.where(field >= (1 << (BITS - 1)), field - (1 << BITS), field).to(tl.int32)
    return tl.where(cols[None, :] < D, a * (D + 1) + r[:, None], 0)


@triton.jit
def crf_lattice_kernel(feat, scale, tkey, towner, slot_of, bary, bad, NP, mask, dummy,
                       D: tl.constexpr, DP: tl.constexpr, BITS: tl.constexpr, BLOCK: tl.constexpr):
    """Entries of pixels ``[pid BLOCK, (pid + 1) BLOCK)`` of ``feat [NP, D]`` into the table; ``bary [NP, D + 1]``,
    ``slot_of [NP, D + 1]``; ``bad[0] = 1`` when a key leaves the int16 range or its packed fields."""
    pid = tl.program_id(0)
    pix = pid * BLOCK + tl.arange(0, BLOCK)
    valid = pix < NP
    cols = tl.arange(0, DP)
    colv = cols[None, :] <= D
    # elevate (y = E f), in pydensecrf's order
    el = tl.zeros([BLOCK, DP], dtype=tl.float32)
    sm = tl.zeros([BLOCK], dtype=tl.float32)
    for jj in tl.static_range(D):
        cf = tl.load(feat + pix * D + (D - 1 - jj), mask=valid, other=0.0) * tl.load(scale + (D - 1 - jj))
        el = tl.where(cols[None, :] == D - jj, (sm - (D - jj) * cf)[:, None], el)
        sm = sm + cf
    el = tl.where(cols[None, :] == 0, sm[:, None], el)
    # the nearest 0-coloured lattice point, and the simplex (ranks)
    v = (el * (1.0 / (D + 1)) + ROUND_MAGIC) - ROUND_MAGIC
    v = tl.where(colv, v, 0.0)
    rem0 = v * (D + 1)
    total = tl.sum(v, axis=1).to(tl.int32)
    dif = el - rem0
    ia = cols[None, :, None]
    ib = cols[None, None, :]
    da = dif[:, :, None]
    db = dif[:, None, :]
    pair = ((ib > ia) & (da < db)) | ((ib < ia) & (db >= da))
    rank = tl.sum((pair & (ib <= D)).to(tl.int32), axis=2) + total[:, None]
    low = rank < 0
    high = rank > D
    rank = tl.where(low, rank + (D + 1), tl.where(high, rank - (D + 1), rank))
    rem0 = tl.where(low, rem0 + (D + 1), tl.where(high, rem0 - (D + 1), rem0))
    # barycentric coordinates
    w = tl.where(colv, (el - rem0) * (1.0 / (D + 1)), 0.0)
    b_last = -tl.sum(tl.where(colv & (rank == 0), w, 0.0), axis=1)  # barycentric[D + 1]
    for r in tl.static_range(D + 1):
        up = tl.sum(tl.where(colv & (D - rank == r), w, 0.0), axis=1)
        down = tl.sum(tl.where(colv & (D - rank + 1 == r), w, 0.0), axis=1)
        b = up - down
        if r == 0:
            b = b + (1.0 + b_last)
        e = pix * (D + 1) + r
        tl.store(bary + e, b, mask=valid)
        # the key of vertex r, packed, and its slot: a CAS claims an empty slot (publishing the key with it),
        # a slot holding the key is found; either way the owner becomes min(owner, e)
        kf = rem0 + tl.where(rank <= D - r, r, r - (D + 1)).to(tl.float32)
        wide = tl.max(((cols[None, :] < D) & (tl.abs(kf) > 32767.0)).to(tl.int32), axis=1) > 0
        key = tl.where(cols[None, :] < D, kf.to(tl.int32), 0)
        word, out = _pack(key, cols, D, BITS)
        over = tl.max((valid & (out | wide)).to(tl.int32), axis=0)
        tl.store(bad, 1, mask=over > 0)
        slot = _slot(word, mask)
        active = valid
        found = tl.zeros([BLOCK], dtype=tl.int32)
        go = tl.max(active.to(tl.int32), axis=0)
        while go > 0:
            hs = tl.where(active, slot, dummy)
            prev = tl.atomic_cas(tkey + hs, tl.full([BLOCK], -1, tl.int64), word)
            hit = active & ((prev == -1) | (prev == word))
            tl.atomic_min(towner + hs, e, mask=hit)
            found = tl.where(hit, hs, found)
            active = active & ~hit
            slot = tl.where(active, (slot + 1) & mask, slot)
            go = tl.max(active.to(tl.int32), axis=0)
        tl.store(slot_of + e, found, mask=valid)


@triton.jit
def _find(word, tkey, mask, valid, BLOCK: tl.constexpr):
    """The slots of packed keys ``[BLOCK]`` in the table, -1 where absent (read only)."""
    slot = _slot(word, mask)
    found = tl.full([BLOCK], -1, tl.int32)
    active = valid
    go = tl.max(active.to(tl.int32), axis=0)
    while go > 0:
        k = tl.load(tkey + slot, mask=active, other=-1)
        match = active & (k == word)
        found = tl.where(match, slot, found)
        active = active & (k != -1) & ~match
        slot = tl.where(active, (slot + 1) & mask, slot)
        go = tl.max(active.to(tl.int32), axis=0)
    return found


@triton.jit
def crf_neighbours_kernel(tkey, slot_point, point_slot, blur, M, mask,
                          D: tl.constexpr, DP: tl.constexpr, BITS: tl.constexpr, BLOCK: tl.constexpr):
    """``blur [D + 1, M, 2]``: the value rows (point + 1, 0 for none) of the two neighbours of each point along each
    axis j: its key - 1 everywhere and + D at coordinate j, and + 1 everywhere and - D at j (pydensecrf's n1, n2)."""
    pid = tl.program_id(0)
    m = pid * BLOCK + tl.arange(0, BLOCK)
    valid = m < M
    cols = tl.arange(0, DP)
    keyc = cols[None, :] < D
    slot = tl.load(point_slot + m, mask=valid, other=0)
    key = _unpack(tl.load(tkey + slot, mask=valid, other=0), cols, D, BITS)
    for j in tl.static_range(D + 1):
        n1 = tl.where(keyc, tl.where(cols[None, :] == j, key + D, key - 1), 0)
        n2 = tl.where(keyc, tl.where(cols[None, :] == j, key - D, key + 1), 0)
        w1, out1 = _pack(n1, cols, D, BITS)
        w2, out2 = _pack(n2, cols, D, BITS)
        s1 = _find(w1, tkey, mask, valid & ~out1, BLOCK)  # a neighbour outside the fields is not in the table
        s2 = _find(w2, tkey, mask, valid & ~out2, BLOCK)
        r1 = tl.where(s1 >= 0, tl.load(slot_point + s1, mask=valid & (s1 >= 0), other=-1) + 1, 0)
        r2 = tl.where(s2 >= 0, tl.load(slot_point + s2, mask=valid & (s2 >= 0), other=-1) + 1, 0)
        tl.store(blur + (j * M + m) * 2, r1, mask=valid)
        tl.store(blur + (j * M + m) * 2 + 1, r2, mask=valid)


@triton.jit
def crf_splat_kernel(q, seg_pix, seg_w, cstart, cend, part, NC, KP: tl.constexpr, CHUNK: tl.constexpr,
                     BLOCK: tl.constexpr):
    """``part [NC, KP]``: over each chunk of CSR entries ``[cstart, cend)`` (<= CHUNK of one point), in order, the sum
    of ``w q[pixel]`` (``q [N, KP]``)."""
    pid = tl.program_id(0)
    c = pid * BLOCK + tl.arange(0, BLOCK)
    valid = c < NC
    cols = tl.arange(0, KP)
    s0 = tl.load(cstart + c, mask=valid, other=0)
    s1 = tl.load(cend + c, mask=valid, other=0)
    acc = tl.zeros([BLOCK, KP], dtype=tl.float32)
    for t in range(CHUNK):
        idx = s0 + t
        ok = valid & (idx < s1)
        pix = tl.load(seg_pix + idx, mask=ok, other=0)
        w = tl.load(seg_w + idx, mask=ok, other=0.0)
        vals = tl.load(q + pix[:, None] * KP + cols[None, :], mask=ok[:, None], other=0.0)
        acc += w[:, None] * vals
    tl.store(part + c[:, None] * KP + cols[None, :], acc, mask=valid[:, None])


@triton.jit
def crf_gather_kernel(part, pfirst, V, M, KP: tl.constexpr, BLOCK: tl.constexpr):
    """``V[m + 1] = sum`` of the partial sums ``part[pfirst[m] : pfirst[m + 1]]`` of point m, in order."""
    pid = tl.program_id(0)
    m = pid * BLOCK + tl.arange(0, BLOCK)
    valid = m < M
    cols = tl.arange(0, KP)
    f0 = tl.load(pfirst + m, mask=valid, other=0)
    n = tl.load(pfirst + m + 1, mask=valid, other=0) - f0
    acc = tl.zeros([BLOCK, KP], dtype=tl.float32)
    for k in range(tl.max(n, axis=0)):
        ok = valid & (k < n)
        acc += tl.load(part + (f0 + k)[:, None] * KP + cols[None, :], mask=ok[:, None], other=0.0)
    tl.store(V + (m + 1)[:, None] * KP + cols[None, :], acc, mask=valid[:, None])


@triton.jit
def crf_blur_kernel(src, dst, blur, M, j, KP: tl.constexpr, BLOCK: tl.constexpr):
    """One blur pass along axis ``j``: ``dst[m + 1] = src[m + 1] + 0.5 (src[n1] + src[n2])`` (row 0 stays zero)."""
    pid = tl.program_id(0)
    m = pid * BLOCK + tl.arange(0, BLOCK)
    valid = m < M
    cols = tl.arange(0, KP)
    n1 = tl.load(blur + (j * M + m) * 2, mask=valid, other=0)
    n2 = tl.load(blur + (j * M + m) * 2 + 1, mask=valid, other=0)
    v0 = tl.load(src + (m + 1)[:, None] * KP + cols[None, :], mask=valid[:, None], other=0.0)
    v1 = tl.load(src + n1[:, None] * KP + cols[None, :], mask=valid[:, None], other=0.0)
    v2 = tl.load(src + n2[:, None] * KP + cols[None, :], mask=valid[:, None], other=0.0)
    tl.store(dst + (m + 1)[:, None] * KP + cols[None, :], v0 + 0.5 * (v1 + v2), mask=valid[:, None])


@triton.jit
def _slice(acc, off, wts, V, pix, valid, cols, D1: tl.constexpr, KP: tl.constexpr):
    for j in tl.static_range(D1):
        o = tl.load(off + pix * D1 + j, mask=valid, other=0)
        w = tl.load(wts + pix * D1 + j, mask=valid, other=0.0)
        acc += w[:, None] * tl.load(V + o[:, None] * KP + cols[None, :], mask=valid[:, None], other=0.0)
    return acc


@triton.jit
def crf_update_kernel(q, u, out, off_g, w_g, V_g, off_b, w_b, V_b, N, K, clip,
                      HAS_G: tl.constexpr, HAS_B: tl.constexpr, WRITE_OUT: tl.constexpr,
                      KP: tl.constexpr, BLOCK: tl.constexpr):
    """Pixels ``[pid BLOCK, ...)``: ``m = slice_g + slice_b`` (the slice weights hold ``w alpha n``), then
    ``Q = p exp(m - max m) / sum`` with ``p = clip(u [K, N], clip, 1)``, into ``q [N, KP]`` (zero padding) and, with
    WRITE_OUT, ``out [K, N]``."""
    pid = tl.program_id(0)
    pix = pid * BLOCK + tl.arange(0, BLOCK)
    valid = pix < N
    cols = tl.arange(0, KP)
    cm = cols[None, :] < K
    m = tl.zeros([BLOCK, KP], dtype=tl.float32)
    if HAS_G:
        m = _slice(m, off_g, w_g, V_g, pix, valid, cols, 3, KP)
    if HAS_B:
        m = _slice(m, off_b, w_b, V_b, pix, valid, cols, 6, KP)
    top = tl.max(tl.where(cm, m, float("-inf")), axis=1)
    p = tl.load(u + cols[None, :] * N + pix[:, None], mask=valid[:, None] & cm, other=0.0)
    p = tl.minimum(tl.maximum(p, clip), 1.0)
    e = tl.where(cm, p * tl.exp(m - top[:, None]), 0.0)
    qv = e / tl.sum(e, axis=1)[:, None]
    tl.store(q + pix[:, None] * KP + cols[None, :], qv, mask=valid[:, None])
    if WRITE_OUT:
        tl.store(out + cols[None, :] * N + pix[:, None], qv, mask=valid[:, None] & cm)
