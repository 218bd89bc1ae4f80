// grm_project_backward, grm_reproject_forward and grm_reproject_backward on the CPU.
//
// Every kernel works on (batch, pixel chunk) tasks run by at::parallel_for; inside a task, pixels go in tiles of
// kTile. Per tile, x (and gy) is read once: the tile is converted to the accumulation type when needed (read
// in place when it already is, pixel-contiguous), and the [K, tile] logits, the softmax over K, the gradient of
// the assignment and the [K, C] accumulations all happen while the tile is in cache; nothing of size
// [B, K, P] is ever allocated. The products are row-major GEMMs on the tile, through the BLAS that
// libtorch_cpu carries (sgemm_/dgemm_, MKL on x86-64 wheels; plain loops if absent), single-threaded inside a task.
//
// Reductions over pixels ([K, C] gradients) go to one partial per task, summed afterwards in a fixed order;
// the chunking depends on the shapes only, so results are bitwise reproducible whatever the thread count.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/grm_project_cpu.h"
#include "grm_project.h"
#include "grm_reproject.h"

namespace grmseg {
namespace {

constexpr int64_t kTile = 128;            // pixels per tile
constexpr int64_t kTargetTasks = 64;      // enough (batch, chunk) tasks to feed the threads
constexpr int64_t kMinTilesPerChunk = 4;  // but keep each task a few hundred pixels long

// The BLAS that libtorch_cpu carries (MKL on x86-64 wheels) exports the Fortran GEMMs; ATen's own C++ wrappers
// are not exported. Weak references: when the running libtorch has no such symbol, plain loops are used.
extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

// Column-major C[m][n] = op(A) op(B) + beta C (BLAS conventions; lds already valid).
template <typename T>
void gemm_cm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
             T beta, T* c, int64_t ldc) {
  const bool fits = std::max({m, n, k, lda, ldb, ldc}) <= std::numeric_limits<int>::max();
  const char cta = ta ? 'T' : 'N', ctb = tb ? 'T' : 'N';
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  const int ilda = static_cast<int>(lda), ildb = static_cast<int>(ldb), ildc = static_cast<int>(ldc);
  const T one = T(1);
  if constexpr (std::is_same_v<T, float>) {
    if (fits && &sgemm_ != nullptr) {
      sgemm_(&cta, &ctb, &im, &in, &ik, &one, a, &ilda, b, &ildb, &beta, c, &ildc);
      return;
    }
  } else {
    if (fits && &dgemm_ != nullptr) {
      dgemm_(&cta, &ctb, &im, &in, &ik, &one, a, &ilda, b, &ildb, &beta, c, &ildc);
      return;
    }
  }
  // Plain loops (column-major, j-p-i order so the innermost loop runs along a column of c).
  for (int64_t j = 0; j < n; ++j) {
    T* cj = c + j * ldc;
    if (beta == T(0)) {
      std::fill(cj, cj + m, T(0));
    } else if (beta != T(1)) {
      for (int64_t i = 0; i < m; ++i) cj[i] *= beta;
    }
    for (int64_t p = 0; p < k; ++p) {
      const T bpj = tb ? b[j + p * ldb] : b[p + j * ldb];
      if (ta) {
        for (int64_t i = 0; i < m; ++i) cj[i] += a[p + i * lda] * bpj;
      } else {
        const T* ap = a + p * lda;
        for (int64_t i = 0; i < m; ++i) cj[i] += ap[i] * bpj;
      }
    }
  }
}

// Row-major C[M][N] = op(A)[M][Kd] op(B)[Kd][N] + beta C  (op = transpose when ta / tb).
template <typename T>
void mm(bool ta, bool tb, int64_t M, int64_t N, int64_t Kd, const T* A, int64_t lda, const T* B, int64_t ldb,
        T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (Kd == 0) {
    if (beta == T(0)) {
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, T(0));
    } else if (beta != T(1)) {
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) C[i * ldc + j] *= beta;
    }
    return;
  }
  // Column-major view: C^T [N][M] = op(B)^T op(A)^T. A leading dimension only has to be valid when the matrix
  // has more than one row in the row-major view: raise the degenerate ones to what BLAS checks.
  const int64_t ldb_ok = std::max<int64_t>(ldb, tb ? Kd : N);
  const int64_t lda_ok = std::max<int64_t>(lda, ta ? M : Kd);
  const int64_t ldc_ok = std::max<int64_t>(ldc, N);
  gemm_cm<T>(tb, ta, N, M, Kd, B, ldb_ok, A, lda_ok, beta, C, ldc_ok);
}

// Softmax over the K rows (row stride ld) of s, for the first np columns, in place.
template <typename T>
void softmax_rows(T* __restrict s, int64_t K, int64_t ld, int64_t np, T* __restrict mx, T* __restrict den) {
  for (int64_t p = 0; p < np; ++p) mx[p] = s[p];
  for (int64_t k = 1; k < K; ++k) {
    const T* sk = s + k * ld;
    for (int64_t p = 0; p < np; ++p) mx[p] = std::max(mx[p], sk[p]);
  }
  for (int64_t p = 0; p < np; ++p) den[p] = T(0);
  for (int64_t k = 0; k < K; ++k) {
    T* sk = s + k * ld;
    for (int64_t p = 0; p < np; ++p) {
      const T e = std::exp(sk[p] - mx[p]);
      sk[p] = e;
      den[p] += e;
    }
  }
  for (int64_t p = 0; p < np; ++p) den[p] = T(1) / den[p];
  for (int64_t k = 0; k < K; ++k) {
    T* sk = s + k * ld;
    for (int64_t p = 0; p < np; ++p) sk[p] *= den[p];
  }
}

// g <- a * (g - sum_k a * g), per pixel (rows K, stride ld, first np columns).
template <typename T>
void softmax_backward_rows(const T* __restrict a, T* __restrict g, int64_t K, int64_t ld, int64_t np,
                           T* __restrict dot) {
  for (int64_t p = 0; p < np; ++p) dot[p] = T(0);
  for (int64_t k = 0; k < K; ++k) {
    const T* ak = a + k * ld;
    const T* gk = g + k * ld;
    for (int64_t p = 0; p < np; ++p) dot[p] += ak[p] * gk[p];
  }
  for (int64_t k = 0; k < K; ++k) {
    const T* ak = a + k * ld;
    T* gk = g + k * ld;
    for (int64_t p = 0; p < np; ++p) gk[p] = ak[p] * (gk[p] - dot[p]);
  }
}

// Pixel chunking of P for B batch elements: a function of the shapes only.
struct Chunking {
  int64_t chunks, chunk_px;
  Chunking(int64_t B, int64_t P) {
    const int64_t tiles = (P + kTile - 1) / kTile;
    int64_t c = (kTargetTasks + B - 1) / std::max<int64_t>(B, 1);
    c = std::max<int64_t>(1, std::min(c, tiles / kMinTilesPerChunk));
    const int64_t per = tiles == 0 ? 1 : (tiles + c - 1) / c;
    chunks = tiles == 0 ? 1 : (tiles + per - 1) / per;
    chunk_px = per * kTile;
  }
};

// A [C, np] tile of a [C, P] map (strides sc, sp) in the accumulation type: a pointer and its row stride,
// read in place when possible, else converted into buf ([C][kTile]).
template <typename scalar_t, typename acc_t>
const acc_t* load_tile(const scalar_t* src, int64_t sc, int64_t sp, int64_t C, int64_t P, int64_t p0, int64_t np,
                       acc_t* buf, int64_t* ld) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (sp == 1 && sc >= P) {
      *ld = sc;
      return src + p0;
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    acc_t* dst = buf + c * kTile;
    const scalar_t* s = src + c * sc + p0 * sp;
    if (sp == 1) {
      for (int64_t p = 0; p < np; ++p) dst[p] = static_cast<acc_t>(s[p]);
    } else {
      for (int64_t p = 0; p < np; ++p) dst[p] = static_cast<acc_t>(s[p * sp]);
    }
  }
  *ld = kTile;
  return buf;
}

// Copies a [C][np] tile (row stride ld) into rows of stride P of a contiguous output in the output dtype.
template <typename scalar_t, typename acc_t>
void store_tile(const acc_t* src, int64_t ld, scalar_t* dst, int64_t C, int64_t P, int64_t np) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t p = 0; p < np; ++p) dst[c * P + p] = static_cast<scalar_t>(src[c * ld + p]);
}

at::Tensor acc_contiguous(const at::Tensor& t, at::ScalarType acc) {
  return t.to(t.options().dtype(acc)).contiguous();
}

}  // namespace

// ------------------------------------------------------------------------------------------ grm_project_backward
std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_project_backward_cpu(const at::Tensor& gh, const at::Tensor& gm,
                                                                       const at::Tensor& x, const at::Tensor& w,
                                                                       const at::Tensor& b) {
  const char* who = "grmseg_C::grm_project_backward (CPU)";
  check_project_inputs(x, w, b, c10::DeviceType::CPU, who);
  check_project_grads(gh, gm, x, w, who);
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2), K = w.size(0);
  at::Tensor gx = at::empty({B, C, P}, x.options());
  if (B == 0 || K == 0 || P == 0) {
    gx.zero_();
    return {gx, at::zeros({K, C}, w.options()), at::zeros({K}, b.options())};
  }
  const at::ScalarType acc_type = at::toOpMathType(x.scalar_type());
  // Per batch element: M = [w; gh_b] (logits and ga in one product), N = [gh_b; w] (gx = N^T [a; gs]).
  at::Tensor w_acc = w.to(acc_type).unsqueeze(0).expand({B, K, C});
  at::Tensor gh_acc = gh.to(acc_type);
  at::Tensor M = at::cat({w_acc, gh_acc}, 1).contiguous();
  at::Tensor N = at::cat({gh_acc, w_acc}, 1).contiguous();
  at::Tensor b_acc = acc_contiguous(b, acc_type);
  at::Tensor gm_acc = acc_contiguous(gm, acc_type);

  const Chunking ch(B, P);
  const int64_t tasks = B * ch.chunks;
  at::Tensor part_w = at::zeros({tasks, K, C}, x.options().dtype(acc_type));
  at::Tensor part_b = at::zeros({tasks, K}, x.options().dtype(acc_type));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grm_project_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr bool direct = std::is_same_v<scalar_t, acc_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const int64_t sb = x.stride(0), sc = x.stride(1), sp = x.stride(2);
    const acc_t* Mp = M.const_data_ptr<acc_t>();
    const acc_t* Np = N.const_data_ptr<acc_t>();
    const acc_t* bp = b_acc.const_data_ptr<acc_t>();
    const acc_t* gmp = gm_acc.const_data_ptr<acc_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    acc_t* pwp = part_w.mutable_data_ptr<acc_t>();
    acc_t* pbp = part_b.mutable_data_ptr<acc_t>();

    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> xbuf(C * kTile), z(2 * K * kTile), gxbuf(direct ? 0 : C * kTile), t1(kTile), t2(kTile);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / ch.chunks, ci = task % ch.chunks;
        const int64_t p_begin = ci * ch.chunk_px, p_end = std::min(P, p_begin + ch.chunk_px);
        const acc_t* Mb = Mp + bi * 2 * K * C;
        const acc_t* Nb = Np + bi * 2 * K * C;
        const acc_t* gmb = gmp + bi * K;
        acc_t* pw = pwp + task * K * C;
        acc_t* pb = pbp + task * K;
        for (int64_t p0 = p_begin; p0 < p_end; p0 += kTile) {
          const int64_t np = std::min(kTile, p_end - p0);
          int64_t ldx;
          const acc_t* xt = load_tile<scalar_t, acc_t>(xp + bi * sb, sc, sp, C, P, p0, np, xbuf.data(), &ldx);
          acc_t* s = z.data();           // [K][kTile]: logits -> a
          acc_t* g = s + K * kTile;      // [K][kTile]: ga -> gs
          mm<acc_t>(false, false, 2 * K, np, C, Mb, C, xt, ldx, acc_t(0), s, kTile);
          for (int64_t k = 0; k < K; ++k) {
            acc_t* sk = s + k * kTile;
            acc_t* gk = g + k * kTile;
            const acc_t bk = bp[k], mk = gmb[k];
            for (int64_t p = 0; p < np; ++p) {
              sk[p] += bk;
              gk[p] += mk;
            }
          }
          softmax_rows<acc_t>(s, K, kTile, np, t1.data(), t2.data());
          softmax_backward_rows<acc_t>(s, g, K, kTile, np, t1.data());
          // gx = gh^T a + w^T gs
          if constexpr (direct) {
            mm<acc_t>(true, false, C, np, 2 * K, Nb, C, s, kTile, acc_t(0), reinterpret_cast<acc_t*>(gxp + bi * C * P + p0), P);
          } else {
            mm<acc_t>(true, false, C, np, 2 * K, Nb, C, s, kTile, acc_t(0), gxbuf.data(), kTile);
            store_tile<scalar_t, acc_t>(gxbuf.data(), kTile, gxp + bi * C * P + p0, C, P, np);
          }
          // gw += gs x^T, gb += sum_p gs
          mm<acc_t>(false, true, K, C, np, g, kTile, xt, ldx, acc_t(1), pw, C);
          for (int64_t k = 0; k < K; ++k) {
            const acc_t* gk = g + k * kTile;
            acc_t sum = acc_t(0);
            for (int64_t p = 0; p < np; ++p) sum += gk[p];
            pb[k] += sum;
          }
        }
      }
    });
  });
  // Fixed-order sums over the tasks (one elementwise add per task: the order never depends on the threads).
  at::Tensor gw_acc = part_w[0].clone();
  at::Tensor gb_acc = part_b[0].clone();
  for (int64_t t = 1; t < tasks; ++t) {
    gw_acc.add_(part_w[t]);
    gb_acc.add_(part_b[t]);
  }
  return {gx, gw_acc.to(w.scalar_type()), gb_acc.to(b.scalar_type())};
}

// ----------------------------------------------------------------------------------------- grm_reproject_forward
at::Tensor grm_reproject_forward_cpu(const at::Tensor& x, const at::Tensor& q, const at::Tensor& v) {
  const char* who = "grmseg_C::grm_reproject_forward (CPU)";
  check_reproject_inputs(x, q, v, c10::DeviceType::CPU, who);
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2), K = q.size(1);
  at::Tensor y = at::empty({B, C, P}, x.options());
  if (B == 0 || C == 0 || P == 0) return y;
  if (K == 0) return y.copy_(x);
  const at::ScalarType acc_type = at::toOpMathType(x.scalar_type());
  at::Tensor q_acc = acc_contiguous(q, acc_type);
  at::Tensor v_acc = acc_contiguous(v, acc_type);
  const Chunking ch(B, P);
  const int64_t tasks = B * ch.chunks;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grm_reproject_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr bool direct = std::is_same_v<scalar_t, acc_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const int64_t sb = x.stride(0), sc = x.stride(1), sp = x.stride(2);
    const acc_t* qp = q_acc.const_data_ptr<acc_t>();
    const acc_t* vp = v_acc.const_data_ptr<acc_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();

    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> xbuf(C * kTile), s(K * kTile), ybuf(direct ? 0 : C * kTile), t1(kTile), t2(kTile);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / ch.chunks, ci = task % ch.chunks;
        const int64_t p_begin = ci * ch.chunk_px, p_end = std::min(P, p_begin + ch.chunk_px);
        const acc_t* qb = qp + bi * K * C;
        const acc_t* vb = vp + bi * K * C;
        for (int64_t p0 = p_begin; p0 < p_end; p0 += kTile) {
          const int64_t np = std::min(kTile, p_end - p0);
          int64_t ldx;
          const acc_t* xt = load_tile<scalar_t, acc_t>(xp + bi * sb, sc, sp, C, P, p0, np, xbuf.data(), &ldx);
          mm<acc_t>(false, false, K, np, C, qb, C, xt, ldx, acc_t(0), s.data(), kTile);
          softmax_rows<acc_t>(s.data(), K, kTile, np, t1.data(), t2.data());
          // y = x + v^T a
          acc_t* yt;
          int64_t ldy;
          if constexpr (direct) {
            yt = reinterpret_cast<acc_t*>(yp + bi * C * P + p0);  // same type here
            ldy = P;
          } else {
            yt = ybuf.data();
            ldy = kTile;
          }
          for (int64_t c = 0; c < C; ++c) std::copy(xt + c * ldx, xt + c * ldx + np, yt + c * ldy);
          mm<acc_t>(true, false, C, np, K, vb, C, s.data(), kTile, acc_t(1), yt, ldy);
          if constexpr (!direct) store_tile<scalar_t, acc_t>(yt, kTile, yp + bi * C * P + p0, C, P, np);
        }
      }
    });
  });
  return y;
}

// ---------------------------------------------------------------------------------------- grm_reproject_backward
std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_reproject_backward_cpu(const at::Tensor& gy, const at::Tensor& x,
                                                                         const at::Tensor& q, const at::Tensor& v) {
  const char* who = "grmseg_C::grm_reproject_backward (CPU)";
  check_reproject_inputs(x, q, v, c10::DeviceType::CPU, who);
  check_reproject_grad(gy, x, who);
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2), K = q.size(1);
  at::Tensor gx = at::empty({B, C, P}, x.options());
  if (B == 0 || C == 0 || K == 0 || P == 0) {
    gx.copy_(gy);
    return {gx, at::zeros({B, K, C}, q.options()), at::zeros({B, K, C}, v.options())};
  }
  const at::ScalarType acc_type = at::toOpMathType(x.scalar_type());
  at::Tensor q_acc = acc_contiguous(q, acc_type);
  at::Tensor v_acc = acc_contiguous(v, acc_type);
  const Chunking ch(B, P);
  const int64_t tasks = B * ch.chunks;
  at::Tensor part_q = at::zeros({B, ch.chunks, K, C}, x.options().dtype(acc_type));
  at::Tensor part_v = at::zeros({B, ch.chunks, K, C}, x.options().dtype(acc_type));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grm_reproject_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr bool direct = std::is_same_v<scalar_t, acc_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const int64_t sb = x.stride(0), sc = x.stride(1), sp = x.stride(2);
    const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
    const int64_t gsb = gy.stride(0), gsc = gy.stride(1), gsp = gy.stride(2);
    const acc_t* qp = q_acc.const_data_ptr<acc_t>();
    const acc_t* vp = v_acc.const_data_ptr<acc_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    acc_t* pqp = part_q.mutable_data_ptr<acc_t>();
    acc_t* pvp = part_v.mutable_data_ptr<acc_t>();

    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> xbuf(C * kTile), gybuf(C * kTile), s(K * kTile), g(K * kTile),
          gxbuf(direct ? 0 : C * kTile), t1(kTile), t2(kTile);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / ch.chunks, ci = task % ch.chunks;
        const int64_t p_begin = ci * ch.chunk_px, p_end = std::min(P, p_begin + ch.chunk_px);
        const acc_t* qb = qp + bi * K * C;
        const acc_t* vb = vp + bi * K * C;
        acc_t* pq = pqp + task * K * C;
        acc_t* pv = pvp + task * K * C;
        for (int64_t p0 = p_begin; p0 < p_end; p0 += kTile) {
          const int64_t np = std::min(kTile, p_end - p0);
          int64_t ldx, ldg;
          const acc_t* xt = load_tile<scalar_t, acc_t>(xp + bi * sb, sc, sp, C, P, p0, np, xbuf.data(), &ldx);
          const acc_t* gt =
              load_tile<scalar_t, acc_t>(gyp + bi * gsb, gsc, gsp, C, P, p0, np, gybuf.data(), &ldg);
          mm<acc_t>(false, false, K, np, C, qb, C, xt, ldx, acc_t(0), s.data(), kTile);  // e = q x
          softmax_rows<acc_t>(s.data(), K, kTile, np, t1.data(), t2.data());              // a
          mm<acc_t>(false, false, K, np, C, vb, C, gt, ldg, acc_t(0), g.data(), kTile);  // ga = v gy
          // gv += a gy^T (before ga becomes ge)
          mm<acc_t>(false, true, K, C, np, s.data(), kTile, gt, ldg, acc_t(1), pv, C);
          softmax_backward_rows<acc_t>(s.data(), g.data(), K, kTile, np, t1.data());       // ge
          // gq += ge x^T
          mm<acc_t>(false, true, K, C, np, g.data(), kTile, xt, ldx, acc_t(1), pq, C);
          // gx = gy + q^T ge
          acc_t* gxt;
          int64_t ldo;
          if constexpr (direct) {
            gxt = reinterpret_cast<acc_t*>(gxp + bi * C * P + p0);  // same type here
            ldo = P;
          } else {
            gxt = gxbuf.data();
            ldo = kTile;
          }
          for (int64_t c = 0; c < C; ++c) std::copy(gt + c * ldg, gt + c * ldg + np, gxt + c * ldo);
          mm<acc_t>(true, false, C, np, K, qb, C, g.data(), kTile, acc_t(1), gxt, ldo);
          if constexpr (!direct) store_tile<scalar_t, acc_t>(gxt, kTile, gxp + bi * C * P + p0, C, P, np);
        }
      }
    });
  });
  // Fixed-order sums over the chunks of each batch element.
  at::Tensor gq_acc = part_q.select(1, 0).clone();
  at::Tensor gv_acc = part_v.select(1, 0).clone();
  for (int64_t j = 1; j < ch.chunks; ++j) {
    gq_acc.add_(part_q.select(1, j));
    gv_acc.add_(part_v.select(1, j));
  }
  return {gx, gq_acc.to(q.scalar_type()), gv_acc.to(v.scalar_type())};
}

}  // namespace grmseg
