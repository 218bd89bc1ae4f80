"""Direct loop implementations of every op, written from DESIGN.md independently of grmseg.reference.

Slow on purpose: plain Python loops over tiny float64 tensors, used to check the reference itself.
"""

from __future__ import annotations

import math

import torch


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def grm_project(x, w, b):
    bsz, c, p = x.shape
    k = w.shape[0]
    h = torch.zeros(bsz, k, c, dtype=torch.float64)
    m = torch.zeros(bsz, k, dtype=torch.float64)
    for bi in range(bsz):
        for pi in range(p):
            logits = [float(b[ki]) + sum(float(w[ki, ci] * x[bi, ci, pi]) for ci in range(c)) for ki in range(k)]
            a = softmax(logits)
            for ki in range(k):
                m[bi, ki] += a[ki]
                for ci in range(c):
                    h[bi, ki, ci] += a[ki] * float(x[bi, ci, pi])
    return h, m


def grm_reproject(x, q, v):
    bsz, c, p = x.shape
    k = q.shape[1]
    y = x.clone().double()
    for bi in range(bsz):
        for pi in range(p):
            logits = [sum(float(q[bi, ki, ci] * x[bi, ci, pi]) for ci in range(c)) for ki in range(k)]
            a = softmax(logits)
            for ci in range(c):
                y[bi, ci, pi] += sum(float(v[bi, ki, ci]) * a[ki] for ki in range(k))
    return y


def graph_conv(z, adj, weight, bias, activation):
    bsz, k, f = z.shape
    d = weight.shape[1]
    out = torch.zeros(bsz, k, d, dtype=torch.float64)
    for bi in range(bsz):
        for i in range(k):
            for di in range(d):
                acc = 0.0 if bias is None else float(bias[di])
                for j in range(k):
                    acc += float(adj[i, j]) * sum(float(z[bi, j, fi] * weight[fi, di]) for fi in range(f))
                if activation == "relu":
                    acc = max(acc, 0.0)
                elif activation == "leaky_relu":
                    acc = acc if acc > 0 else 0.2 * acc
                out[bi, i, di] = acc
    return out


def cam(feat, weight, labels):
    bsz, c, h, w = feat.shape
    k = weight.shape[0]
    out = torch.zeros(bsz, k, h, w, dtype=torch.float64)
    for bi in range(bsz):
        for ki in range(k):
            vals = [[max(0.0, sum(float(weight[ki, ci] * feat[bi, ci, i, j]) for ci in range(c))) for j in range(w)]
                    for i in range(h)]
            top = max(max(row) for row in vals)
            present = labels is None or float(labels[bi, ki]) != 0
            for i in range(h):
                for j in range(w):
                    out[bi, ki, i, j] = vals[i][j] / (top + 1e-5) if present else 0.0
    return out


def offsets(radius):
    """Written from DESIGN.md: (0, x) for 1 <= x < r, then (y, x) for 1 <= y < r, -r < x < r, x^2 + y^2 < r^2."""
    out = [(0, x) for x in range(1, radius)]
    out += [(y, x) for y in range(1, radius) for x in range(-radius + 1, radius) if x * x + y * y < radius * radius]
    return out


def local_affinity(feat, radius):
    bsz, c, h, w = feat.shape
    offs = offsets(radius)
    out = torch.zeros(bsz, len(offs), h, w, dtype=torch.float64)
    for bi in range(bsz):
        for d, (dy, dx) in enumerate(offs):
            for i in range(h):
                for j in range(w):
                    i2, j2 = i + dy, j + dx
                    if 0 <= i2 < h and 0 <= j2 < w:
                        diff = sum(abs(float(feat[bi, ci, i, j] - feat[bi, ci, i2, j2])) for ci in range(c)) / c
                        out[bi, d, i, j] = math.exp(-diff)
    return out


# IRN's path sets, worked out by hand: the pixels (y, x) of the offset's box with (dy x - dx y)^2 < dy^2 + dx^2.
HAND_PATHS = {
    (0, 1): {(0, 0), (0, 1)},
    (0, 3): {(0, 0), (0, 1), (0, 2), (0, 3)},
    (1, 0): {(0, 0), (1, 0)},
    (1, 1): {(0, 0), (0, 1), (1, 0), (1, 1)},  # (x - y)^2 <= 1 < 2 everywhere in the box
    (1, 2): {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)},  # (x - 2y)^2 <= 4 < 5
    (2, 3): {(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3), (2, 2), (2, 3)},  # (2x - 3y)^2 < 13
    (3, -1): {(0, 0), (0, -1), (1, 0), (1, -1), (2, 0), (2, -1), (3, 0), (3, -1)},  # (3x + y)^2 <= 9 < 10
    (4, -2): {(0, 0), (0, -1), (1, 0), (1, -1), (2, 0), (2, -1), (2, -2), (3, -1), (3, -2), (4, -1), (4, -2)},
    # (3x - 4y)^2 < 25: (1, 3) and (2, 1) lie at distance exactly 1 and are left out
    (3, 4): {(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 2), (2, 3), (2, 4), (3, 3), (3, 4)},
}


def segment(dy, dx):
    """IRN's path of (dy, dx) as a set: the pixels of the offset's box at distance < 1 from the segment."""
    length = math.hypot(dy, dx)
    box = [(y, x) for y in range(min(0, dy), max(0, dy) + 1) for x in range(min(0, dx), max(0, dx) + 1)]
    return {(y, x) for y, x in box if abs(dy * x - dx * y) / length < 1.0}


def boundary_affinity(boundary, radius):
    bsz, _, h, w = boundary.shape
    offs = offsets(radius)
    out = torch.zeros(bsz, len(offs), h, w, dtype=torch.float64)
    for bi in range(bsz):
        for d, (dy, dx) in enumerate(offs):
            for i in range(h):
                for j in range(w):
                    if 0 <= i + dy < h and 0 <= j + dx < w:
                        top = max(float(boundary[bi, 0, i + py, j + px]) for py, px in segment(dy, dx))
                        out[bi, d, i, j] = 1.0 - top
    return out


def random_walk(cam, aff, beta, steps, radius):
    """``steps`` local passes y_j <- sum_{i in N(j)} y_i A_ij^beta / d_j, with neighbour lists built by hand."""
    bsz, k, h, w = cam.shape
    offs = offsets(radius)
    out = torch.zeros(bsz, k, h, w, dtype=torch.float64)
    for bi in range(bsz):
        neigh = {(i, j): [((i, j), 1.0)] for i in range(h) for j in range(w)}
        for d, (dy, dx) in enumerate(offs):
            for i in range(h):
                for j in range(w):
                    if 0 <= i + dy < h and 0 <= j + dx < w:
                        a = float(aff[bi, d, i, j]) ** beta
                        neigh[(i + dy, j + dx)].append(((i, j), a))
                        neigh[(i, j)].append(((i + dy, j + dx), a))
        y = {p: [float(cam[bi, ki, p[0], p[1]]) for ki in range(k)] for p in neigh}
        for _ in range(steps):
            new = {}
            for pj, lst in neigh.items():
                dj = sum(a for _, a in lst)
                new[pj] = [sum(y[pi][ki] * a for pi, a in lst) / dj for ki in range(k)]
            y = new
        for (i, j), vals in y.items():
            for ki in range(k):
                out[bi, ki, i, j] = vals[ki]
    return out
