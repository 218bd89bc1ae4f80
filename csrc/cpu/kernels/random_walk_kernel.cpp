// random_walk's pass kernels, one instruction-set level per compilation (see random_walk_kernel.h and
// csrc/cpu/capability.h).
//
// A register block is kWalkRows rows x one vector of pixels (xblock columns) x kWalkClasses classes, its sums in
// registers. Neighbouring rows read mostly the same state: the input vectors of a row block (its rows' neighbours,
// a disc of positions around each) are each loaded once per class and applied to every row of the block that
// uses it, with that row's weight (loaded once for all the classes). The positions come from the glue's schedule,
// grouped by which rows use them (a bit mask): a loop per group, unrolled over its rows at compile time. Every
// row's neighbours are summed from zero and its own term (shift 0) is added last. Each class's arithmetic is the
// same whichever classes share its block, and rows always go in the same blocks, so the result does not depend on
// how classes or rows are split over threads.

#include "cpu/kernels/random_walk_kernel.h"

#include "cpu/kernels/gemm.h"

#include <bit>

namespace grmseg {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

// kWalkRows x kWalkClasses sums, a weight per row and one input vector in registers: 16 ymm (AVX2), 32 zmm
// (AVX-512); the baseline's Vectorized is two SSE registers wide (16 xmm). Measured (Xeon, 64x64 K21 r5, 256
// steps, one thread): AVX2 6 x 2 rows 40 ms, 4 x 3 41.4, 3 x 3 43.1, 5 x 2 43.9; AVX-512 6 x 4 24.7, 5 x 4 28.2,
// 7 x 3 29.3; the baseline 3 x 1 120, 2 x 2 196 (its loads are not kept in registers).
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kWalkClasses = 6, kWalkRows = 4;
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int kWalkClasses = 6, kWalkRows = 2;
#else
constexpr int kWalkClasses = 3, kWalkRows = 1;
#endif
static_assert(kWalkRows >= 1 && kWalkRows <= kMaxWalkRows);

template <typename T>
constexpr int64_t kXBlock = kVL<T>;

// Loads p[0 .. VL) into a register that the compiler keeps: left to itself, it folds the load into each FMA that
// uses it, as a memory operand, which loads it again for every row.
template <typename T>
inline Vec<T> load_once(const T* p) {
  const Vec<T> v = Vec<T>::loadu(p);
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#if defined(CPU_CAPABILITY_AVX512)
  using Raw = std::conditional_t<std::is_same_v<T, float>, __m512, __m512d>;
#else
  using Raw = std::conditional_t<std::is_same_v<T, float>, __m256, __m256d>;
#endif
  Raw r = v;
  asm("" : "+v"(r));
  return Vec<T>(r);
#else
  return v;
#endif
}

template <typename T, int KB>
using Sums = Vec<T>[kWalkRows][KB];

// The schedule's positions read by the rows in Mask: sum[i] += w * y_{+shift} for each such row i, its weight
// w the next in the block's weights (wp moves past them).
template <typename T, int KB, unsigned Mask>
inline void apply_group(const WalkArgs<T>& a, const T* const (&in)[KB], const T*& wp, Sums<T, KB>& sum) {
  using V = Vec<T>;
  constexpr int64_t VL = kVL<T>;
  constexpr bool shared = std::popcount(Mask) > 1;
  const int64_t* end = a.shifts + a.groups[Mask];
  for (const int64_t* e = a.shifts + a.groups[Mask - 1]; e != end; ++e) {
    const int64_t o = *e;
    V wv[kWalkRows];
    int u = 0;
#pragma GCC unroll 4
    for (int i = 0; i < kWalkRows; ++i)
      if ((Mask >> i) & 1u) wv[i] = V::loadu(wp + VL * u++);
    wp += VL * std::popcount(Mask);
#pragma GCC unroll 8
    for (int kk = 0; kk < KB; ++kk) {
      const V s = shared ? load_once(in[kk] + o) : V::loadu(in[kk] + o);
#pragma GCC unroll 4
      for (int i = 0; i < kWalkRows; ++i)
        if ((Mask >> i) & 1u) sum[i][kk] = at::vec::fmadd(wv[i], s, sum[i][kk]);
    }
  }
}

template <typename T, int KB, unsigned... M>
inline void apply_groups(const WalkArgs<T>& a, const T* const (&in)[KB], const T*& wp, Sums<T, KB>& sum,
                         std::integer_sequence<unsigned, M...>) {
  (apply_group<T, KB, M + 1>(a, in, wp, sum), ...);
}

// The row block whose first pixel is at `offset` of a plane (row y, column x0), `rows` of its kWalkRows rows real
// (the others are computed and not stored), for KB classes whose planes start at src + k * plane; wp: the
// block's weights.
template <typename T, int KB>
inline void walk_block(const WalkArgs<T>& a, const T* src, T* dst, const T* wp, int64_t offset, int64_t rows) {
  using V = Vec<T>;
  constexpr int64_t VL = kVL<T>;
  const T* in[KB];
  Sums<T, KB> sum;
#pragma GCC unroll 8
  for (int kk = 0; kk < KB; ++kk) {
    in[kk] = src + kk * a.plane + offset;
#pragma GCC unroll 4
    for (int i = 0; i < kWalkRows; ++i) sum[i][kk] = V(T(0));
  }
  apply_groups<T, KB>(a, in, wp, sum, std::make_integer_sequence<unsigned, (1u << kWalkRows) - 1>());
  // each row's own term last
#pragma GCC unroll 4
  for (int i = 0; i < kWalkRows; ++i) {
    const V wv = V::loadu(wp + VL * i);
#pragma GCC unroll 8
    for (int kk = 0; kk < KB; ++kk) sum[i][kk] = at::vec::fmadd(wv, V::loadu(in[kk] + i * a.S), sum[i][kk]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < kWalkRows; ++i) {
    if (i >= rows) break;
#pragma GCC unroll 8
    for (int kk = 0; kk < KB; ++kk) sum[i][kk].store(dst + kk * a.plane + offset + i * a.S);
  }
}

template <typename T, int... I>
constexpr auto block_table(std::integer_sequence<int, I...>) {
  return std::array<void (*)(const WalkArgs<T>&, const T*, T*, const T*, int64_t, int64_t), sizeof...(I)>{
      &walk_block<T, I + 1>...};
}

// The row block at row y (a multiple of kWalkRows) of the n (<= kWalkClasses) classes from k0 of image bi, every
// pixel block of its rows: src -> dst.
template <typename T>
void row_block(const WalkArgs<T>& a, const T* src, T* dst, int64_t bi, int64_t k0, int64_t n, int64_t y) {
  static constexpr auto blocks = block_table<T>(std::make_integer_sequence<int, kWalkClasses>());
  constexpr int64_t XB = kXBlock<T>;
  const int64_t nblk = a.Wr / XB, block_weights = a.vectors * XB;
  const int64_t rows = std::min<int64_t>(kWalkRows, a.H - y);
  const T* wy = a.wts + (bi * a.row_blocks + y / kWalkRows) * nblk * block_weights;
  const int64_t base = (bi * a.K + k0) * a.plane;
  for (int64_t xb = 0; xb < nblk; ++xb) {
    const int64_t offset = (y + a.R) * a.S + a.L + xb * XB;  // pixel (y, xb * XB) in a plane
    blocks[n - 1](a, src + base, dst + base, wy + xb * block_weights, offset, rows);
  }
}

// Steps per sweep of walk_classes's wavefront: as many as keep the sweep's window (the weights and the two states of
// (steps - 1) lag + lag + 1 row blocks) within a.wave_bytes, 1 to kMaxWaveSteps. Measured (Xeon, 2 MiB L2, K21 r5,
// one thread, fixed steps per sweep): 128x128 AVX-512 4 -> 129 ms, 8 -> 118, 16 -> 161 (no sweep: 196); AVX2 4 and
// 8 -> 167 (no sweep: 203); 64x64 alike at 4 and 8.
constexpr int64_t kMaxWaveSteps = 8;

template <typename T>
int64_t wave_steps(const WalkArgs<T>& a, int64_t classes, int64_t lag) {
  const int64_t row_block = (a.vectors * a.Wr + 2 * classes * kWalkRows * a.S) * static_cast<int64_t>(sizeof(T));
  const int64_t fit = a.wave_bytes / std::max<int64_t>(row_block, 1) - 1 - lag;
  return std::clamp<int64_t>(lag == 0 ? kMaxWaveSteps : fit / lag + 1, 1, kMaxWaveSteps);
}

// Every pass over classes [k0, k1) of image bi: bufs[s % 2] -> bufs[(s + 1) % 2] for s < steps. One class block at
// a time, wave_steps() steps per sweep down the rows: step s + 1 runs `lag` row blocks behind step s, as close as
// its reads allow (the R rows below a row block must be done: lag = ceil(R / rows)); that also keeps step s + 1's
// writes into step s's input off the rows step s has still to read. A sweep reads the weights and states of a
// few row blocks from L2 for all its steps, instead of streaming the whole map from L3 for each step. A row
// block's arithmetic is the same as in pass order.
template <typename T>
void walk_classes(const WalkArgs<T>& a, T* buf0, T* buf1, int64_t bi, int64_t k0, int64_t k1, int64_t steps) {
  T* bufs[2] = {buf0, buf1};
  const int64_t nrb = a.row_blocks, lag = (a.R + kWalkRows - 1) / kWalkRows;
  for_row_blocks(k1 - k0, kWalkClasses, [&](int64_t c0, int64_t n) {
    const int64_t wave = wave_steps(a, n, lag);
    for (int64_t s0 = 0; s0 < steps; s0 += wave) {
      const int64_t ts = std::min(wave, steps - s0);
      for (int64_t j = 0; j < nrb + (ts - 1) * lag; ++j)
        for (int64_t t = 0; t < ts; ++t) {
          const int64_t jb = j - t * lag, s = s0 + t;
          if (jb >= 0 && jb < nrb) row_block<T>(a, bufs[s % 2], bufs[(s + 1) % 2], bi, k0 + c0, n, jb * kWalkRows);
        }
    }
  });
}

template <typename T>
void walk_rows(const WalkArgs<T>& a, const T* src, T* dst, int64_t bi, int64_t y0, int64_t y1) {
  for (int64_t y = y0; y < y1; y += kWalkRows)
    for_row_blocks(a.K, kWalkClasses, [&](int64_t c0, int64_t n) { row_block<T>(a, src, dst, bi, c0, n, y); });
}

template <typename T>
constexpr WalkFns<T> fns() {
  return {kXBlock<T>, kWalkRows, &walk_classes<T>, &walk_rows<T>};
}

}  // namespace

extern constinit const WalkKernels walk_kernels = {fns<float>(), fns<double>()};

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace grmseg
