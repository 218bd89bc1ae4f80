// grm_project_forward on the CPU.
//
// Work is split into (batch, pixel chunk) tasks run by at::parallel_for. The chunking depends on the shapes
// only, never on the thread count, and the per-chunk partial sums are added in a fixed order, so the result is
// bitwise reproducible. Inside a task, pixels are processed in tiles of kTile: the tile of x is converted to
// the accumulation type once (any strides, in both [C][tile] and [tile][C] layouts), then
//   logits  S[K][tile] = W[K][C] X[C][tile] + b     (register-blocked micro-kernel)
//   softmax over K per pixel
//   H[K][C] += A[K][tile] X^T[tile][C],  m[K] += sum_p A[K][tile]   (register-blocked micro-kernel)
// all while the tile is in cache. The micro-kernels use GCC/Clang vector extensions; on x86-64 they are compiled
// for AVX-512, AVX2+FMA and the baseline, and the widest the CPU supports is picked at first use.

#include "cpu/grm_project_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "grm_project.h"

#if !defined(__GNUC__) && !defined(__clang__)
#error "grmseg's CPU kernels use GCC/Clang vector extensions: build with GCC or Clang"
#endif

#if defined(__x86_64__) && (defined(__linux__) || defined(__APPLE__))
#define GRMSEG_X86_DISPATCH 1
#else
#define GRMSEG_X86_DISPATCH 0
#endif

#pragma GCC diagnostic ignored "-Wpsabi"  // wide vector types passed by value between the helpers

namespace grmseg {
namespace {

constexpr int64_t kTile = 64;             // pixels per tile
constexpr int64_t kKB = 4;                // rows of W / A per micro-kernel block
constexpr int64_t kMaxBlockBytes = 128;   // widest micro-kernel column block (2 AVX-512 registers)
constexpr int64_t kTargetTasks = 64;      // enough (batch, chunk) tasks to feed the threads
constexpr int64_t kMinTilesPerChunk = 4;  // but keep each task a few hundred pixels long

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Scratch of one task. Kp, Cp: K and C rounded up to the micro-kernel blocks (padding is zero).
template <typename T>
struct Scratch {
  int64_t Kp, Cp;
  std::vector<T> xt;    // [C][kTile]   the x tile, pixel-contiguous
  std::vector<T> xT;    // [kTile][Cp]  the x tile, channel-contiguous
  std::vector<T> s;     // [Kp][kTile]  logits, then the assignment (rows >= K are zero)
  std::vector<T> hloc;  // [Kp][Cp]     this task's h
  std::vector<T> mloc;  // [Kp]         this task's m
  std::vector<T> mx, den;
  Scratch(int64_t K, int64_t C)
      : Kp(round_up(K, kKB)),
        Cp(round_up(std::max<int64_t>(C, 1), kMaxBlockBytes / static_cast<int64_t>(sizeof(T)))),
        xt(C * kTile),
        xT(kTile * Cp, T(0)),
        s(Kp * kTile),
        hloc(Kp * Cp),
        mloc(Kp),
        mx(kTile),
        den(kTile) {}
};

template <typename T>
struct MicroKernels {
  void (*logits)(const T*, const T*, const T*, T*, int64_t, int64_t);
  void (*accumulate)(const T*, const T*, T*, T*, int64_t, int64_t, int64_t);
};

// The micro-kernels once per instruction set; the widest the CPU supports is picked at first use.
#define GRMSEG_MICRO_NS base
#define GRMSEG_MICRO_ATTR
#define GRMSEG_MICRO_VB 16
#include "cpu/grm_project_cpu_micro.h"
#undef GRMSEG_MICRO_NS
#undef GRMSEG_MICRO_ATTR
#undef GRMSEG_MICRO_VB
#if GRMSEG_X86_DISPATCH
#define GRMSEG_MICRO_NS avx2
#define GRMSEG_MICRO_ATTR __attribute__((target("avx,avx2,fma")))
#define GRMSEG_MICRO_VB 32
#include "cpu/grm_project_cpu_micro.h"
#undef GRMSEG_MICRO_NS
#undef GRMSEG_MICRO_ATTR
#undef GRMSEG_MICRO_VB
#define GRMSEG_MICRO_NS avx512
#define GRMSEG_MICRO_ATTR __attribute__((target("avx,avx2,fma,avx512f,avx512vl,avx512dq,avx512bw")))
#define GRMSEG_MICRO_VB 64
#include "cpu/grm_project_cpu_micro.h"
#undef GRMSEG_MICRO_NS
#undef GRMSEG_MICRO_ATTR
#undef GRMSEG_MICRO_VB
#endif

template <typename T>
MicroKernels<T> micro_kernels() {
#if GRMSEG_X86_DISPATCH
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
  if (avx512) return {&avx512::logits<T>, &avx512::accumulate<T>};
  if (avx2) return {&avx2::logits<T>, &avx2::accumulate<T>};
#endif
  return {&base::logits<T>, &base::accumulate<T>};
}

template <typename T>
const MicroKernels<T>& micro() {
  static const MicroKernels<T> kernels = micro_kernels<T>();
  return kernels;
}

// Softmax over the first K rows of s, per pixel; rows >= K and pixels >= np get a zero assignment.
template <typename T>
void softmax_tile(T* __restrict s, T* __restrict mx, T* __restrict den, int64_t K, int64_t Kp, int64_t np) {
  for (int64_t p = 0; p < kTile; ++p) mx[p] = s[p];
  for (int64_t k = 1; k < K; ++k) {
    const T* sk = s + k * kTile;
    for (int64_t p = 0; p < kTile; ++p) mx[p] = std::max(mx[p], sk[p]);
  }
  for (int64_t p = 0; p < kTile; ++p) den[p] = T(0);
  for (int64_t k = 0; k < K; ++k) {
    T* sk = s + k * kTile;
    for (int64_t p = 0; p < kTile; ++p) {
      const T e = std::exp(sk[p] - mx[p]);
      sk[p] = e;
      den[p] += e;
    }
  }
  for (int64_t p = 0; p < kTile; ++p) den[p] = p < np ? T(1) / den[p] : T(0);
  for (int64_t k = 0; k < K; ++k) {
    T* sk = s + k * kTile;
    for (int64_t p = 0; p < kTile; ++p) sk[p] *= den[p];
  }
  std::fill(s + K * kTile, s + Kp * kTile, T(0));
}

// h [K][C] (row stride C) and m [K] of pixels [p_begin, p_end) of one batch element xb (strides sc, sp).
template <typename scalar_t, typename acc_t>
void project_range(const scalar_t* __restrict xb, int64_t sc, int64_t sp, const acc_t* __restrict w,
                   const acc_t* __restrict bias, int64_t K, int64_t C, int64_t p_begin, int64_t p_end,
                   acc_t* __restrict h, acc_t* __restrict m, Scratch<acc_t>& scr) {
  const int64_t Kp = scr.Kp, Cp = scr.Cp;
  const MicroKernels<acc_t>& kernels = micro<acc_t>();
  std::fill(scr.hloc.begin(), scr.hloc.end(), acc_t(0));
  std::fill(scr.mloc.begin(), scr.mloc.end(), acc_t(0));
  acc_t* __restrict xt = scr.xt.data();
  acc_t* __restrict xT = scr.xT.data();
  for (int64_t p0 = p_begin; p0 < p_end; p0 += kTile) {
    const int64_t np = std::min(kTile, p_end - p0);
    // the x tile in the accumulation type, zero-padded to kTile pixels, in both layouts
    for (int64_t c = 0; c < C; ++c) {
      acc_t* dst = xt + c * kTile;
      const scalar_t* src = xb + c * sc + p0 * sp;
      if (sp == 1) {
        for (int64_t p = 0; p < np; ++p) dst[p] = static_cast<acc_t>(src[p]);
      } else {
        for (int64_t p = 0; p < np; ++p) dst[p] = static_cast<acc_t>(src[p * sp]);
      }
      for (int64_t p = np; p < kTile; ++p) dst[p] = acc_t(0);
    }
    constexpr int64_t kTB = 16;  // transpose in 16 x 16 blocks
    for (int64_t c0 = 0; c0 < C; c0 += kTB) {
      const int64_t c1 = std::min(C, c0 + kTB);
      for (int64_t p = 0; p < np; ++p)
        for (int64_t c = c0; c < c1; ++c) xT[p * Cp + c] = xt[c * kTile + p];
    }
    kernels.logits(w, bias, xt, scr.s.data(), Kp, C);
    softmax_tile<acc_t>(scr.s.data(), scr.mx.data(), scr.den.data(), K, Kp, np);
    kernels.accumulate(scr.s.data(), xT, scr.hloc.data(), scr.mloc.data(), Kp, Cp, np);
  }
  for (int64_t k = 0; k < K; ++k) {
    std::copy(scr.hloc.data() + k * Cp, scr.hloc.data() + k * Cp + C, h + k * C);
    m[k] = scr.mloc[k];
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> grm_project_forward_cpu(const at::Tensor& x, const at::Tensor& w,
                                                            const at::Tensor& b) {
  check_project_inputs(x, w, b, c10::DeviceType::CPU, "grmseg_C::grm_project_forward (CPU)");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2), K = w.size(0);
  if (B == 0 || K == 0) {
    return {at::zeros({B, K, C}, x.options()), at::zeros({B, K}, x.options())};
  }

  // W and b in the accumulation type, padded with zero rows to a multiple of the micro-kernel block.
  const at::ScalarType acc_type = at::toOpMathType(x.scalar_type());
  const int64_t Kp = round_up(K, kKB);
  at::Tensor w_acc = at::zeros({Kp, C}, w.options().dtype(acc_type));
  at::Tensor b_acc = at::zeros({Kp}, b.options().dtype(acc_type));
  w_acc.narrow(0, 0, K).copy_(w);
  b_acc.narrow(0, 0, K).copy_(b);

  // Chunking: a function of the shapes only (deterministic whatever the number of threads).
  const int64_t tiles = (P + kTile - 1) / kTile;
  int64_t chunks = (kTargetTasks + B - 1) / B;
  chunks = std::max<int64_t>(1, std::min(chunks, tiles / kMinTilesPerChunk));
  const int64_t tiles_per_chunk = tiles == 0 ? 1 : (tiles + chunks - 1) / chunks;
  chunks = tiles == 0 ? 1 : (tiles + tiles_per_chunk - 1) / tiles_per_chunk;
  const int64_t chunk_px = tiles_per_chunk * kTile;

  // One [K, C] + [K] partial per (batch, chunk) in the accumulation type; straight into h, m when possible.
  const bool direct = chunks == 1 && acc_type == x.scalar_type();
  at::Tensor h = at::empty({B, K, C}, x.options());
  at::Tensor m = at::empty({B, K}, x.options());
  at::Tensor part_h = direct ? h : at::empty({B * chunks, K, C}, x.options().dtype(acc_type));
  at::Tensor part_m = direct ? m : at::empty({B * chunks, K}, x.options().dtype(acc_type));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grm_project_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const int64_t sb = x.stride(0), sc = x.stride(1), sp = x.stride(2);
    const acc_t* wp = w_acc.const_data_ptr<acc_t>();
    const acc_t* bp = b_acc.const_data_ptr<acc_t>();
    acc_t* php = part_h.mutable_data_ptr<acc_t>();
    acc_t* pmp = part_m.mutable_data_ptr<acc_t>();

    at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
      Scratch<acc_t> scratch(K, C);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / chunks, ci = task % chunks;
        const int64_t p_begin = ci * chunk_px, p_end = std::min(P, p_begin + chunk_px);
        project_range<scalar_t, acc_t>(xp + bi * sb, sc, sp, wp, bp, K, C, p_begin, p_end, php + task * K * C,
                                       pmp + task * K, scratch);
      }
    });

    if (!direct) {
      // Fixed-order sum over the chunks, cast to the input dtype.
      scalar_t* hp = h.mutable_data_ptr<scalar_t>();
      scalar_t* mp = m.mutable_data_ptr<scalar_t>();
      const int64_t KC = K * C;
      at::parallel_for(0, B * KC, 4096, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t bi = i / KC, r = i % KC;
          const acc_t* src = php + bi * chunks * KC + r;
          acc_t acc = acc_t(0);
          for (int64_t j = 0; j < chunks; ++j) acc += src[j * KC];
          hp[i] = static_cast<scalar_t>(acc);
        }
      });
      for (int64_t i = 0; i < B * K; ++i) {
        const int64_t bi = i / K, r = i % K;
        const acc_t* src = pmp + bi * chunks * K + r;
        acc_t acc = acc_t(0);
        for (int64_t j = 0; j < chunks; ++j) acc += src[j * K];
        mp[i] = static_cast<scalar_t>(acc);
      }
    }
  });
  return {h, m};
}

}  // namespace grmseg
