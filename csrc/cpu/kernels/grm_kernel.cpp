// The GRM kernels on the CPU, one instruction-set level per compilation (see csrc/cpu/capability.h).
//
// Per tile of kGrmTile pixels of one batch element (x, and gy, read once; in place when fp32/fp64 and
// pixel-contiguous), everything stays in cache:
//   grm_project forward     S = W X + b;  A = softmax_K(S);  h += A X^T;  m += rowsum(A)
//   grm_project backward    [S; G] = [W; GH] X + [b; gm];  A = softmax_K(S);  GS = A * (G - colsum(A * G))
//                           gx = [gx_base +] [GH^T W^T] [A; GS];  gw += GS X^T;  gb += rowsum(GS)
//   grm_reproject forward   E = Q X;  A = softmax_K(E);  y = X + V^T A
//   grm_reproject backward  E = Q X;  A = softmax_K(E);  GA = V GY;  gv += A GY^T;
//                           GE = A * (GA - colsum(A * GA));  gq += GE X^T;  gx = GY + Q^T GE
// The joint pair (grm_reproject then grm_project backward on the same x, as in grmseg.GRM): the reprojection stores
// GE ([B, K, P], acc type) instead of its gx, and the projection's gx product takes Q^T along: gx = GY +
// [Q^T GH^T W^T] [GE; A; GS], one pass over gx instead of two (for fp32 and fp64 bitwise the two passes' result:
// the same sums in the same order).
// With the assignment pointer set, the forwards also store A ([B, K, P], acc type) and the backwards read it
// instead of recomputing it (grm_project backward then multiplies X by GH alone, K rows instead of 2K; grm_reproject
// backward skips E = Q X and its softmax).
// The products are gemm_nn (reduction over C or K: broadcasts of the small matrix against pixel vectors) and
// gemm_nt (reduction over the tile's pixels, with horizontal sums per tile; the [K, C] partials are kept
// transposed, [C, K]), both register-blocked in csrc/cpu/kernels/gemm.h; the tiles that a gemm_nn walks down are
// copied into buffers with a padded row stride, by the first product that reads them where the map allows (see
// read_map_tile), else first (x of grm_reproject backward with the kept assignment, read by gemm_nt alone, is read
// in place); the softmax runs over K with the pixels in the vector lanes.

#include "cpu/kernels/grm_kernel.h"

#include "cpu/kernels/gemm.h"

namespace grmseg {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

constexpr int64_t kT = kGrmTile;
// grm_reproject forward walks half tiles: it has no gemm_nt, whose horizontal sums a shorter tile would make
// relatively dearer, and with half as much of x and y in L2 at once the next tile's prefetch no longer crowds out
// the current one (~5% on a Zen 3).
constexpr int64_t kReprojectTile = kT / 2;

// Pixels [p, p + np) of image bi of a map, to prefetch; nothing when the map is absent or not pixel-contiguous.
template <typename T>
Prefetch map_pixels(const MapView<T>& m, int64_t bi, int64_t p, int64_t np) {
  if (m.data == nullptr || m.sp != 1) return {};
  constexpr auto elem = static_cast<int64_t>(sizeof(T));
  return {reinterpret_cast<const char*>(m.data + bi * m.sb + p), m.sc * elem, np * elem};
}

struct TaskRange {
  int64_t bi, p_begin, p_end;
  TaskRange(const GrmSplit& s, int64_t task)
      : bi(task / s.chunks),
        p_begin((task % s.chunks) * s.chunk_px),
        p_end(std::min(s.P, (task % s.chunks) * s.chunk_px + s.chunk_px)) {}
};

// One tile of a task: pixels [p0, p0 + np) of image bi, nc = np rounded up to whole vectors; and where the tile after
// it in the walk (see for_each_tile) starts, pixel next_p0 of image next_bi (next_bi < 0: none), to prefetch.
struct Tile {
  int64_t bi, p0, np, nc, next_bi, next_p0;
};

// The tile after t in the walk (the one this thread most likely works on next), to prefetch.
template <typename T>
Prefetch next_tile(const MapView<T>& m, const GrmSplit& s, const Tile& t) {
  if (t.next_bi < 0) return {};
  return map_pixels(m, t.next_bi, t.next_p0, std::min(t.np, s.P - t.next_p0));
}

// Tile t of a map, to prefetch (for a product after this one).
template <typename T>
Prefetch this_tile(const MapView<T>& m, const Tile& t) {
  return map_pixels(m, t.bi, t.p0, t.np);
}

// Whether a kernel's [B, C, P] output map of T is large enough for streaming stores (see kStreamBytes).
template <typename T>
bool streams_output(const GrmSplit& s) {
  return s.B * s.C * s.P * static_cast<int64_t>(sizeof(T)) >= kStreamBytes;
}

// Slot `task` of a [tasks, n] array of partial sums, zeroed.
template <typename acc_t>
acc_t* zeroed_slot(acc_t* base, int64_t task, int64_t n) {
  acc_t* slot = base + task * n;
  std::fill(slot, slot + n, acc_t(0));
  return slot;
}

// Tile t of the [B, C, P] map m into buf ([C][tile_ld], the accumulation type).
template <typename T>
void load_map_tile(const MapView<T>& m, int64_t C, const Tile& t, acc_type<T>* buf) {
  load_tile<T, acc_type<T>>(m.data + t.bi * m.sb, m.sc, m.sp, C, t.p0, t.np, t.nc, buf, tile_ld<acc_type<T>>(kT));
}

// Tile t of the [B, C, P] map m read where it lies, rows of m.sc: the accumulation type, pixel-contiguous, whole
// vectors. Null otherwise (the tile is then copied, see load_map_tile).
template <typename T>
const acc_type<T>* map_tile_in_place(const MapView<T>& m, const Tile& t) {
  if constexpr (std::is_same_v<T, acc_type<T>>) {
    if (m.sp == 1 && t.np == t.nc) return m.data + t.bi * m.sb + t.p0;
  }
  return nullptr;
}

// How the first product of a tile reads tile t of the map m: where it lies, copying it into buf on the way (gemm_nn's
// pack), where map_tile_in_place allows; else from buf, copied there first (load_map_tile). Either way the tile is
// in buf (row stride tile_ld) once that product is done.
template <typename T>
struct TileRead {
  const acc_type<T>* b;  // the product's B operand
  int64_t ldb;           // its row stride
  acc_type<T>* pack;     // where that product copies it (null: copied already)
};

template <typename T>
TileRead<T> read_map_tile(const MapView<T>& m, int64_t C, const Tile& t, acc_type<T>* buf) {
  if (const acc_type<T>* in_place = map_tile_in_place(m, t)) return {in_place, m.sc, buf};
  load_map_tile<T>(m, C, t, buf);
  return {buf, tile_ld<acc_type<T>>(kT), nullptr};
}

// The last product of a tile, into the output map: out[:, p0 : p0 + np] = C0 + A B, with A [C, kd] (row stride kd),
// B a tile buffer of row stride ld and C0 rows of ldc0 (c0 null: no C0): into buf (row stride ld, which may be c0),
// and from there through store_tile, row by row (streaming stores written straight from the register blocks go to
// six rows at a time, which the write-combining buffers take at half the rate of whole rows: on a Zen 3 that made
// grm_reproject forward ~15% slower).
template <typename T, typename acc_t>
void product_to_map(int64_t C, int64_t kd, const acc_t* a, const acc_t* b, const acc_t* c0, int64_t ldc0, acc_t* buf,
                    int64_t ld, T* out, int64_t P, const Tile& t, bool stream, const Prefetch& next) {
  gemm_nn<acc_t>(C, t.nc, kd, a, kd, 1, b, ld, c0, ldc0, buf, ld, next);
  store_tile<T, acc_t>(buf, ld, out, P, t.p0, C, t.np, stream);
}

// Tile t of the assignment a ([B, K, P], acc type) into buf (K rows of stride ld, zero-padded to t.nc columns),
// and back.
template <typename acc_t>
void load_assignment_tile(const acc_t* a, int64_t K, int64_t P, const Tile& t, acc_t* buf, int64_t ld) {
  load_tile<acc_t, acc_t>(a + t.bi * K * P, P, 1, K, t.p0, t.np, t.nc, buf, ld);
}

template <typename acc_t>
void store_assignment_tile(const acc_t* buf, int64_t ld, acc_t* a, int64_t K, int64_t P, const Tile& t) {
  store_tile<acc_t, acc_t>(buf, ld, a + t.bi * K * P, P, t.p0, K, t.np);
}

// Calls on_tile(tile) for every tile of `width` pixels (a divisor of kT: chunks are whole tiles of kT) of every task
// in [begin, end), after on_task(task, image) for each task.
template <typename acc_t, typename OnTask, typename OnTile>
void for_each_tile(const GrmSplit& s, int64_t begin, int64_t end, const OnTask& on_task, const OnTile& on_tile,
                   int64_t width = kT) {
  for (int64_t task = begin; task < end; ++task) {
    const TaskRange t(s, task);
    on_task(task, t.bi);
    for (int64_t p0 = t.p_begin; p0 < t.p_end; p0 += width) {
      const int64_t np = std::min(width, t.p_end - p0);
      // the next tile: the next pixels, or the first ones of the next image
      const bool last = p0 + width >= s.P;
      const int64_t next_bi = !last ? t.bi : t.bi + 1 < s.B ? t.bi + 1 : -1;
      on_tile(Tile{t.bi, p0, np, round_up(np, kVL<acc_t>), next_bi, last ? 0 : p0 + width});
    }
  }
}

template <typename T>
void project_forward(const ProjectForwardArgs<T>& a, int64_t begin, int64_t end) {
  using acc_t = acc_type<T>;
  constexpr int64_t ld = tile_ld<acc_t>(kT);
  const GrmSplit& s = a.s;
  const int64_t C = s.C, K = s.K;
  Scratch<acc_t> xbuf(C * ld), sbuf(K * ld);
  acc_t *X = xbuf.data(), *S = sbuf.data();
  acc_t *ht = nullptr, *m = nullptr;
  const auto on_task = [&](int64_t task, int64_t) {
    ht = zeroed_slot(a.ht, task, C * K);
    m = zeroed_slot(a.m, task, K);
  };
  for_each_tile<acc_t>(s, begin, end, on_task, [&](const Tile& t) {
    const TileRead<T> xr = read_map_tile(a.x, C, t, X);
    fill_rows(S, K, ld, t.nc, a.b);
    gemm_nn<acc_t>(K, t.nc, C, a.w, C, 1, xr.b, xr.ldb, S, ld, S, ld, {}, xr.pack, ld);  // S = W X + b
    softmax_columns<acc_t>(S, K, ld, t.nc, t.np);                 // A
    if (a.a != nullptr) store_assignment_tile(S, ld, a.a, K, s.P, t);
    for (int64_t k = 0; k < K; ++k) m[k] += sum_vec<acc_t>(S + k * ld, t.nc);
    gemm_nt<acc_t>(K, C, t.nc, S, ld, X, ld, ht, K, next_tile(a.x, s, t));  // h^T += X A^T
  });
}

template <typename T>
void project_backward(const ProjectBackwardArgs<T>& a, int64_t begin, int64_t end) {
  using acc_t = acc_type<T>;
  constexpr int64_t ld = tile_ld<acc_t>(kT);
  const GrmSplit& s = a.s;
  const int64_t C = s.C, K = s.K, P = s.P;
  const bool stream = streams_output<T>(s);
  const bool joint = a.ge != nullptr;
  const int64_t nk = joint ? 3 * K : 2 * K;  // the reduction of gx's product
  Scratch<acc_t> xbuf(C * ld), zbuf(nk * ld);
  acc_t* X = xbuf.data();  // X, then gx
  // joint: GE in rows [0, K), first in gx's reduction, where its own product was (gy + Q^T GE, then the rest)
  acc_t* GE = zbuf.data();
  acc_t* Z = GE + (joint ? K * ld : 0);  // rows [0, K) of Z: S -> A; rows [K, 2K): G -> GS
  acc_t* G = Z + K * ld;
  acc_t *gwt = nullptr, *gb = nullptr;
  const auto on_task = [&](int64_t task, int64_t) {
    gwt = zeroed_slot(a.gwt, task, C * K);
    gb = zeroed_slot(a.gb, task, K);
  };
  const bool kept = a.a != nullptr;
  const int64_t nw = kept ? K : 2 * K;  // rows of wg and bg per batch element
  acc_t* Zw = kept ? G : Z;             // where their product goes
  for_each_tile<acc_t>(s, begin, end, on_task, [&](const Tile& t) {
    const acc_t* wg = a.wg + t.bi * nw * C;
    const acc_t* nt = a.nt + t.bi * C * nk;
    const TileRead<T> xr = read_map_tile(a.x, C, t, X);
    fill_rows(Zw, nw, ld, t.nc, a.bg + t.bi * nw);
    gemm_nn<acc_t>(nw, t.nc, C, wg, C, 1, xr.b, xr.ldb, Zw, ld, Zw, ld, {}, xr.pack,
                   ld);  // [S; G] = [W; GH] X + [b; gm] (kept: G only)
    if (kept) {
      load_assignment_tile(a.a, K, P, t, Z, ld);  // A
    } else {
      softmax_columns<acc_t>(Z, K, ld, t.nc, t.np);  // A
    }
    softmax_backward_columns<acc_t>(Z, G, K, ld, t.nc);  // GS
    gemm_nt<acc_t>(K, C, t.nc, G, ld, X, ld, gwt, K, this_tile(a.gx_base, t));  // gw^T += X GS^T
    for (int64_t k = 0; k < K; ++k) gb[k] += sum_vec<acc_t>(G + k * ld, t.nc);
    if (joint) load_assignment_tile(a.ge, K, P, t, GE, ld);  // GE of the reprojection
    // gx = [gx_base +] [(Q^T) GH^T W^T] [(GE;) A; GS], through X; gx_base read in place when it can be, else
    // copied into X
    const acc_t* base = nullptr;
    int64_t ldb = ld;
    if (a.gx_base.data != nullptr) {
      base = map_tile_in_place(a.gx_base, t);
      if (base != nullptr) {
        ldb = a.gx_base.sc;
      } else {
        load_map_tile<T>(a.gx_base, C, t, X);
        base = X;
      }
    }
    product_to_map<T, acc_t>(C, nk, nt, GE, base, ldb, X, ld, a.gx + t.bi * C * P, P, t, stream,
                             next_tile(a.x, s, t));
  });
  stream_fence();
}

template <typename T>
void reproject_forward(const ReprojectForwardArgs<T>& a, int64_t begin, int64_t end) {
  using acc_t = acc_type<T>;
  constexpr int64_t ld = tile_ld<acc_t>(kT);
  const GrmSplit& s = a.s;
  const int64_t C = s.C, K = s.K, P = s.P;
  const bool stream = streams_output<T>(s);
  Scratch<acc_t> xbuf(C * ld), sbuf(K * ld);
  acc_t *X = xbuf.data(), *S = sbuf.data();  // X, then y
  for_each_tile<acc_t>(s, begin, end, [](int64_t, int64_t) {}, [&](const Tile& t) {
    const TileRead<T> xr = read_map_tile(a.x, C, t, X);
    gemm_nn<acc_t>(K, t.nc, C, a.q + t.bi * K * C, C, 1, xr.b, xr.ldb, nullptr, 0, S, ld, {}, xr.pack,
                   ld);  // E = Q X
    softmax_columns<acc_t>(S, K, ld, t.nc, t.np);                                      // A
    if (a.a != nullptr) store_assignment_tile(S, ld, a.a, K, P, t);
    // y = X + V^T A, in place in X, then to y
    product_to_map<T, acc_t>(C, K, a.vt + t.bi * C * K, S, X, ld, X, ld, a.y + t.bi * C * P, P, t, stream,
                             next_tile(a.x, s, t));
  }, kReprojectTile);
  stream_fence();
}

template <typename T>
void reproject_backward(const ReprojectBackwardArgs<T>& a, int64_t begin, int64_t end) {
  using acc_t = acc_type<T>;
  constexpr int64_t ld = tile_ld<acc_t>(kT);
  const GrmSplit& s = a.s;
  const int64_t C = s.C, K = s.K, P = s.P;
  const bool stream = streams_output<T>(s);
  Scratch<acc_t> xbuf(C * ld), gbuf(C * ld), sbuf(2 * K * ld);
  acc_t *X = xbuf.data(), *GY = gbuf.data();  // GY, then gx
  acc_t* S = sbuf.data();                      // E -> A
  acc_t* G = S + K * ld;                       // GA -> GE
  acc_t *gqt = nullptr, *gvt = nullptr;
  const auto on_task = [&](int64_t task, int64_t) {
    gqt = zeroed_slot(a.gqt, task, C * K);
    gvt = zeroed_slot(a.gvt, task, C * K);
  };
  for_each_tile<acc_t>(s, begin, end, on_task, [&](const Tile& t) {
    const acc_t* q = a.q + t.bi * K * C;
    const bool kept = a.a != nullptr;
    // With the kept assignment only gq's product reads x, row by row (the rows' power-of-two distance does not
    // matter there): in place where the tile can be, prefetched during gv's product; else copied.
    const acc_t* xt = kept ? map_tile_in_place(a.x, t) : nullptr;
    const bool x_in_place = xt != nullptr;
    const int64_t ldx = x_in_place ? a.x.sc : ld;
    const TileRead<T> gyr = read_map_tile(a.gy, C, t, GY);
    if (kept) {
      if (!x_in_place) load_map_tile<T>(a.x, C, t, X);
      load_assignment_tile(a.a, K, P, t, S, ld);  // A (kept)
    } else {
      const TileRead<T> xr = read_map_tile(a.x, C, t, X);
      gemm_nn<acc_t>(K, t.nc, C, q, C, 1, xr.b, xr.ldb, nullptr, 0, S, ld, {}, xr.pack, ld);  // E = Q X
      softmax_columns<acc_t>(S, K, ld, t.nc, t.np);                                                // A
    }
    if (!x_in_place) xt = X;
    const Prefetch next_gy = next_tile(a.gy, s, t);
    gemm_nn<acc_t>(K, t.nc, C, a.v + t.bi * K * C, C, 1, gyr.b, gyr.ldb, nullptr, 0, G, ld, {}, gyr.pack,
                   ld);                                                                    // GA = V GY
    gemm_nt<acc_t>(K, C, t.nc, S, ld, GY, ld, gvt, K,
                   x_in_place ? this_tile(a.x, t) : next_gy);                              // gv^T += GY A^T
    softmax_backward_columns<acc_t>(S, G, K, ld, t.nc);                                    // GE
    gemm_nt<acc_t>(K, C, t.nc, G, ld, xt, ldx, gqt, K, x_in_place ? next_gy : Prefetch{});  // gq^T += X GE^T
    if (a.ge != nullptr) {  // GE handed on (ReprojectBackwardArgs::ge)
      store_assignment_tile(G, ld, a.ge, K, P, t);
      return;
    }
    // gx = GY + Q^T GE, in place in GY, then to gx
    product_to_map<T, acc_t>(C, K, a.qt + t.bi * C * K, G, GY, ld, GY, ld, a.gx + t.bi * C * P, P, t, stream,
                             x_in_place ? Prefetch{} : next_tile(a.x, s, t));
  });
  stream_fence();
}

}  // namespace

extern constinit const GrmKernels grm_kernels = per_dtype<GrmFns>([]<typename T>() -> GrmFns<T> {
  return {&project_forward<T>, &project_backward<T>, &reproject_forward<T>, &reproject_backward<T>};
});

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace grmseg
