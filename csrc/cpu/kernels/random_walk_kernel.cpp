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

// One pass over the row blocks starting at rows [y0, y1) (multiples of kWalkRows) of classes [k0, k1) of image
// bi: src -> dst.
template <typename T>
void pass(const WalkArgs<T>& a, const T* src, T* dst, int64_t bi, int64_t k0, int64_t k1, int64_t y0, int64_t y1) {
  static constexpr auto blocks = block_table<T>(std::make_integer_sequence<int, kWalkClasses>());
  constexpr int64_t XB = kXBlock<T>;
  const int64_t nblk = a.Wr / XB, block_weights = a.vectors * XB;
  // class blocks outside the pixel blocks of a row block: its input rows of its classes stay in L1 along the
  // rows, and so do the rows' weights from one class block to the next
  for (int64_t y = y0; y < y1; y += kWalkRows) {
    const int64_t rows = std::min<int64_t>(kWalkRows, a.H - y);
    const T* wy = a.wts + (bi * ((a.H + kWalkRows - 1) / kWalkRows) + y / kWalkRows) * nblk * block_weights;
    for_row_blocks(k1 - k0, kWalkClasses, [&](int64_t c0, int64_t n) {
      const int64_t base = (bi * a.K + k0 + c0) * a.plane;
      for (int64_t xb = 0; xb < nblk; ++xb) {
        const int64_t offset = (y + a.R) * a.S + a.L + xb * XB;  // pixel (y, xb * XB) in a plane
        blocks[n - 1](a, src + base, dst + base, wy + xb * block_weights, offset, rows);
      }
    });
  }
}

template <typename T>
void walk_classes(const WalkArgs<T>& a, T* buf0, T* buf1, int64_t bi, int64_t k0, int64_t k1, int64_t steps) {
  T* bufs[2] = {buf0, buf1};
  // one class block at a time through all the steps: its states and the weights stay in L2 from pass to pass
  for_row_blocks(k1 - k0, kWalkClasses, [&](int64_t c0, int64_t n) {
    for (int64_t s = 0; s < steps; ++s)
      pass<T>(a, bufs[s % 2], bufs[(s + 1) % 2], bi, k0 + c0, k0 + c0 + n, 0, a.H);
  });
}

template <typename T>
void walk_rows(const WalkArgs<T>& a, const T* src, T* dst, int64_t bi, int64_t y0, int64_t y1) {
  pass<T>(a, src, dst, bi, 0, a.K, y0, y1);
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
