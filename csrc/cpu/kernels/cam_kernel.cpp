// cam's CPU kernels, one instruction-set level per compilation (see cam_kernel.h and csrc/cpu/capability.h).
// The scores are gemm_nn register blocks (csrc/cpu/kernels/gemm.h) over a tile of the map copied once; only the
// classes present in the image are computed (the others are zero anyway).

#include "cpu/kernels/cam_kernel.h"

#include "cpu/kernels/gemm.h"
#include "wsss.h"

namespace grmseg {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

constexpr int64_t kT = kCamTile;
constexpr double kCamEps = 1e-5;

template <typename T>
void cam_scores(const CamArgs<T>& a, int64_t begin, int64_t end) {
  using acc_t = acc_type<T>;
  using V = Vec<acc_t>;
  constexpr int64_t ld = tile_ld<acc_t>(kT), VL = kVL<acc_t>;
  const int64_t C = a.C, K = a.K, P = a.P;
  Scratch<acc_t> xbuf(C * ld), sbuf(K * ld);
  acc_t *X = xbuf.data(), *S = sbuf.data();
  for (int64_t task = begin; task < end; ++task) {
    const int64_t bi = task / a.chunks, p_begin = (task % a.chunks) * a.chunk_px;
    const int64_t p_end = std::min(P, p_begin + a.chunk_px), n = a.present[bi];
    const int64_t* classes = a.classes + bi * K;
    acc_t* maxima = a.maxima + task * K;
    std::fill(maxima, maxima + K, acc_t(0));
    if (n == 0) continue;
    const acc_t* w = a.w + bi * K * C;
    for (int64_t p0 = p_begin; p0 < p_end; p0 += kT) {
      const int64_t np = std::min(kT, p_end - p0), nc = round_up(np, VL);
      load_tile<T, acc_t>(a.feat.data + bi * a.feat.sb, a.feat.sc, a.feat.sp, C, p0, np, nc, X, ld);
      gemm_nn<acc_t>(n, nc, C, w, C, 1, X, ld, nullptr, 0, S, ld);  // S = W_b X
      for (int64_t r = 0; r < n; ++r) {
        acc_t* s = S + r * ld;
        V mx(acc_t(0));
        for (int64_t j = 0; j < nc; j += VL) {
          const V v = at::vec::maximum(V::loadu(s + j), V(acc_t(0)));  // ReLU (padding columns are 0)
          v.store(s + j);
          mx = at::vec::maximum(mx, v);
        }
        const int64_t k = classes[r];
        // NaN-propagating maxima throughout (at::vec::maximum, wsss::nan_max), as the reference's amax
        maxima[k] = wsss::nan_max(maxima[k], at::vec::vec_reduce_all<acc_t>(
                                                 [](const V& x, const V& y) { return at::vec::maximum(x, y); }, mx));
        std::copy(s, s + np, a.raw + (bi * K + k) * P + p0);
      }
    }
  }
}

template <typename T>
void cam_normalize(const CamArgs<T>& a, int64_t begin, int64_t end) {
  using acc_t = acc_type<T>;
  using V = Vec<acc_t>;
  constexpr int64_t VL = kVL<acc_t>;
  const int64_t K = a.K, P = a.P;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t bi = row / K, k = row % K;
    T* out = a.out + row * P;
    if (!a.keep[row]) {
      std::fill(out, out + P, T(0));
      continue;
    }
    acc_t mx = acc_t(0);
    for (int64_t c = 0; c < a.chunks; ++c) mx = wsss::nan_max(mx, a.maxima[(bi * a.chunks + c) * K + k]);
    const acc_t inv = acc_t(1) / (mx + static_cast<acc_t>(kCamEps));
    const acc_t* raw = a.raw + row * P;
    if constexpr (std::is_same_v<T, acc_t>) {
      int64_t p = 0;
      for (; p + VL <= P; p += VL) (V::loadu(raw + p) * V(inv)).store(out + p);
      for (; p < P; ++p) out[p] = raw[p] * inv;
    } else {
      for (int64_t p = 0; p < P; ++p) out[p] = static_cast<T>(raw[p] * inv);
    }
  }
}

}  // namespace

extern constinit const CamKernels cam_kernels = per_dtype<CamFns>([]<typename T>() -> CamFns<T> {
  return {&cam_scores<T>, &cam_normalize<T>};
});

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace grmseg
