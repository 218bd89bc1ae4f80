// local_affinity / boundary_affinity CPU kernels, one instruction-set level per compilation (see
// affinity_kernel.h and csrc/cpu/capability.h).
//
// local: for a vector of pixels of the row and a block of offsets, the sums of |f(p) - f(p + o_d)| over the
// channels stay in registers (the row's vector is loaded once per channel for the whole block), then
// exp(-sum / C). boundary: the max of the boundary over each offset's path points, a vector of pixels at a time.
// Both are exact per pixel (no reduction across tasks), so the result does not depend on the thread count.

#include "cpu/kernels/affinity_kernel.h"

#include "cpu/kernels/gemm.h"

namespace grmseg {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

#if defined(CPU_CAPABILITY_AVX512)
constexpr int kOffsetBlock = 16;
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int kOffsetBlock = 12;
#else
constexpr int kOffsetBlock = 5;
#endif

// Writes the computed row of offset d (vals, Wr wide) to out, 0 where p + o_d leaves the map.
template <typename T>
void store_offset_row(const AffinityArgs<T>& a, const T* vals, int64_t d, int64_t y, T* out) {
  const int64_t W = a.W, dx = a.dx[d];
  if (y + a.dy[d] >= a.H) {
    std::fill(out, out + W, T(0));
    return;
  }
  const int64_t x0 = std::min<int64_t>(W, std::max<int64_t>(0, -dx));  // [x0, x1): x + dx inside the map
  const int64_t x1 = std::max<int64_t>(x0, std::min<int64_t>(W, W - dx));
  std::fill(out, out + x0, T(0));
  std::copy(vals + x0, vals + x1, out + x0);
  std::fill(out + x1, out + W, T(0));
}

// sums[d][x] = sum_c |f(y, x) - f(y + dy_d, x + dx_d)| for the offsets d = d0 + j, j < DB, at the vector x0.
template <typename T, int DB>
void local_block(const AffinityArgs<T>& a, const T* row0, int64_t d0, int64_t x0, T* sums, int64_t ld) {
  using V = Vec<T>;
  const int64_t plane = (a.H + a.R) * a.Wp;
  int64_t shift[DB];
#pragma GCC unroll 16
  for (int j = 0; j < DB; ++j) shift[j] = a.dy[d0 + j] * a.Wp + a.dx[d0 + j];
  V acc[DB];
#pragma GCC unroll 16
  for (int j = 0; j < DB; ++j) acc[j] = V(T(0));
  for (int64_t c = 0; c < a.C; ++c) {
    const T* p = row0 + c * plane + x0;
    const V r = V::loadu(p);
#pragma GCC unroll 16
    for (int j = 0; j < DB; ++j) acc[j] = acc[j] + (r - V::loadu(p + shift[j])).abs();
  }
#pragma GCC unroll 16
  for (int j = 0; j < DB; ++j) acc[j].store(sums + (d0 + j) * ld + x0);
}

template <typename T, int... I>
constexpr auto local_table(std::integer_sequence<int, I...>) {
  return std::array<void (*)(const AffinityArgs<T>&, const T*, int64_t, int64_t, T*, int64_t), sizeof...(I)>{
      &local_block<T, I + 1>...};
}

template <typename T>
void local_rows(const AffinityArgs<T>& a, int64_t begin, int64_t end) {
  using V = Vec<T>;
  static constexpr auto blocks = local_table<T>(std::make_integer_sequence<int, kOffsetBlock>());
  constexpr int64_t VL = kVL<T>;
  const int64_t H = a.H, D = a.D, Wr = a.Wr;
  Scratch<T> sums(D * Wr);
  const V inv_c(T(1) / static_cast<T>(a.C));
  for (int64_t task = begin; task < end; ++task) {
    const int64_t bi = task / H, y = task % H;
    const T* row0 = a.map + (bi * a.C * (H + a.R) + y) * a.Wp + a.L;  // pixel (y, 0) of channel 0
    for (int64_t x0 = 0; x0 < Wr; x0 += VL) {
      for_row_blocks(D, kOffsetBlock, [&](int64_t d0, int64_t n) { blocks[n - 1](a, row0, d0, x0, sums.data(), Wr); });
    }
    for (int64_t d = 0; d < D; ++d) {
      T* s = sums.data() + d * Wr;
      for (int64_t x0 = 0; x0 < Wr; x0 += VL) (V(T(0)) - V::loadu(s + x0) * inv_c).exp().store(s + x0);
      store_offset_row(a, s, d, y, a.out + ((bi * D + d) * H + y) * a.W);
    }
  }
}

template <typename T>
void boundary_rows(const AffinityArgs<T>& a, int64_t begin, int64_t end) {
  using V = Vec<T>;
  constexpr int64_t VL = kVL<T>;
  const int64_t H = a.H, D = a.D, Wr = a.Wr;
  Scratch<T> vals(Wr);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t bi = task / H, y = task % H;
    const T* row0 = a.map + (bi * (H + a.R) + y) * a.Wp + a.L;  // pixel (y, 0)
    for (int64_t d = 0; d < D; ++d) {
      const int64_t p0 = a.path_begin[d], p1 = a.path_begin[d + 1];
      for (int64_t x0 = 0; x0 < Wr; x0 += VL) {
        V mx = V::loadu(row0 + x0);  // path point 0 is (0, 0)
        for (int64_t i = p0 + 1; i < p1; ++i) {
          mx = at::vec::maximum(mx, V::loadu(row0 + a.path_y[i] * a.Wp + a.path_x[i] + x0));
        }
        (V(T(1)) - mx).store(vals.data() + x0);
      }
      store_offset_row(a, vals.data(), d, y, a.out + ((bi * D + d) * H + y) * a.W);
    }
  }
}

template <typename T>
constexpr AffinityFns<T> fns() {
  return {&local_rows<T>, &boundary_rows<T>};
}

}  // namespace

extern constinit const AffinityKernels affinity_kernels = {fns<float>(), fns<double>()};

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace grmseg
