// random_walk's pass kernels, one instruction-set level per compilation (see random_walk_kernel.h and
// csrc/cpu/capability.h).
//
// For a block of xblock pixels of one row, the classes go kWalkClasses at a time: their values at the block stay
// in registers, and for each of the NN neighbours one weight vector is loaded and applied to all of them (one
// load, then a subtraction and an FMA per class and vector; even and odd neighbours in two accumulators, so that
// the FMAs do not wait on each other). Each class's arithmetic is the same whichever
// classes share its block, so the result does not depend on how classes are split over threads.

#include "cpu/kernels/random_walk_kernel.h"

#include "cpu/kernels/gemm.h"

namespace grmseg {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

// Register blocks: kWalkClasses classes x kWalkVecs vectors of pixels, with the classes' values and
// kWalkChains accumulators each (with two: even and odd neighbours, independent FMA chains) in registers, plus a
// weight and a difference per vector. 16 ymm (AVX2), 32 zmm (AVX-512); the baseline's Vectorized is two SSE
// registers wide. Measured on AVX2 (Xeon, 64x64 K21 r5, one thread): 6 classes x 1 chain, 4 x 2 and 3 classes x 2
// vectors run alike (63-66 ms), 7 x 1 (all 16 ymm) 4% faster (60.5 ms; K = 21 splits into whole blocks): about one
// neighbour term (a subtraction and an FMA) per cycle, the two FP ports' limit for this difference form.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kWalkClasses = 6, kWalkVecs = 1, kWalkChains = 2;
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int kWalkClasses = 7, kWalkVecs = 1, kWalkChains = 1;
#else
constexpr int kWalkClasses = 3, kWalkVecs = 1, kWalkChains = 1;
#endif

template <typename T>
constexpr int64_t kXBlock = kWalkVecs * kVL<T>;

// One pass of the pixel block at `offset` (row y, column x0 of a plane) for KB classes whose planes start at
// src + k * plane: y += sum_n w_n (y_{+s_n} - y), the neighbours summed in kWalkChains interleaved chains.
template <typename T, int KB>
inline void walk_block(const WalkArgs<T>& a, const T* src, T* dst, const T* w, int64_t offset) {
  using V = Vec<T>;
  constexpr int64_t VL = kVL<T>, NV = kWalkVecs, CH = kWalkChains, XB = kXBlock<T>;
  const T* in[KB];
  V yj[KB][NV], acc[CH][KB][NV];
#pragma GCC unroll 8
  for (int kk = 0; kk < KB; ++kk) {
    in[kk] = src + kk * a.plane + offset;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      yj[kk][v] = V::loadu(in[kk] + v * VL);
#pragma GCC unroll 2
      for (int c = 0; c < CH; ++c) acc[c][kk][v] = V(T(0));
    }
  }
  const int64_t* nb = a.nb;
  const int64_t NN = a.NN, full = NN / CH * CH;
  auto term = [&](int c, int64_t n) {
    const T* wn = w + n * XB;
    const int64_t o = nb[n];
    V wv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) wv[v] = V::loadu(wn + v * VL);
#pragma GCC unroll 8
    for (int kk = 0; kk < KB; ++kk)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const V d = V::loadu(in[kk] + o + v * VL) - yj[kk][v];
        acc[c][kk][v] = at::vec::fmadd(wv[v], d, acc[c][kk][v]);
      }
  };
  for (int64_t n = 0; n < full; n += CH) {
#pragma GCC unroll 2
    for (int c = 0; c < CH; ++c) term(c, n + c);
  }
  for (int64_t n = full; n < NN; ++n) term(0, n);
#pragma GCC unroll 8
  for (int kk = 0; kk < KB; ++kk)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      V sum = acc[0][kk][v];
#pragma GCC unroll 2
      for (int c = 1; c < CH; ++c) sum = sum + acc[c][kk][v];
      (yj[kk][v] + sum).store(dst + kk * a.plane + offset + v * VL);
    }
}

template <typename T, int... I>
constexpr auto block_table(std::integer_sequence<int, I...>) {
  return std::array<void (*)(const WalkArgs<T>&, const T*, T*, const T*, int64_t), sizeof...(I)>{
      &walk_block<T, I + 1>...};
}

// One pass over rows [y0, y1) of classes [k0, k1) of image bi: src -> dst.
template <typename T>
void pass(const WalkArgs<T>& a, const T* src, T* dst, int64_t bi, int64_t k0, int64_t k1, int64_t y0, int64_t y1) {
  static constexpr auto blocks = block_table<T>(std::make_integer_sequence<int, kWalkClasses>());
  constexpr int64_t XB = kXBlock<T>;
  const int64_t nblk = a.Wr / XB;
  // class blocks outside the pixel blocks of a row: the block's rows of its classes stay in L1 along the row,
  // and so do the row's weights from one class block to the next
  for (int64_t y = y0; y < y1; ++y) {
    const T* wy = a.wts + (bi * a.H + y) * nblk * a.NN * XB;
    for_row_blocks(k1 - k0, kWalkClasses, [&](int64_t c0, int64_t n) {
      const int64_t base = (bi * a.K + k0 + c0) * a.plane;
      for (int64_t xb = 0; xb < nblk; ++xb) {
        const int64_t offset = (y + a.R) * a.S + a.L + xb * XB;  // pixel (y, xb * XB) in a plane
        blocks[n - 1](a, src + base, dst + base, wy + xb * a.NN * XB, offset);
      }
    });
  }
}

template <typename T>
void walk_classes(const WalkArgs<T>& a, T* buf0, T* buf1, int64_t bi, int64_t k0, int64_t k1, int64_t steps) {
  T* bufs[2] = {buf0, buf1};
  for (int64_t s = 0; s < steps; ++s) pass<T>(a, bufs[s % 2], bufs[(s + 1) % 2], bi, k0, k1, 0, a.H);
}

template <typename T>
void walk_rows(const WalkArgs<T>& a, const T* src, T* dst, int64_t bi, int64_t y0, int64_t y1) {
  pass<T>(a, src, dst, bi, 0, a.K, y0, y1);
}

template <typename T>
constexpr WalkFns<T> fns() {
  return {kXBlock<T>, &walk_classes<T>, &walk_rows<T>};
}

}  // namespace

extern constinit const WalkKernels walk_kernels = {fns<float>(), fns<double>()};

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace grmseg
