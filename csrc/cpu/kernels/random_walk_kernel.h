// random_walk's CPU pass kernels (random_walk_kernel.cpp, one per instruction-set level) and what the glue
// (csrc/cpu/random_walk_cpu.cpp) hands them. The state is in the accumulation type (fp32 or fp64) only.
//
// A pass is y_j <- y_j + sum_n wts[n, j] (y_{j + s_n} - y_j) over the NN = 2D neighbours of every pixel j (see
// random_walk_cpu.cpp). The states are [K, Hp, S] planes with a zero border of R = r - 1 rows and L >= R
// columns (so every neighbour read is in bounds); the weights are blocked per pixel block: [H, Wr / xblock, NN, xblock], so the NN
// weight vectors of a block are contiguous and stay in L1 while they are applied to every class.
#pragma once

#include <cstdint>

#include "cpu/capability.h"
#include "cpu/kernels/kernel_table.h"

namespace grmseg {
namespace cpu {

template <typename T>
struct WalkArgs {
  int64_t K, H, Wr, S, R, L, NN, plane;  // pixel (y, x) of a plane at (y + R) S + L + x; plane = Hp S
  const int64_t* nb;                  // [NN] the shifts s_n as offsets in a state plane (sy * S + sx)
  const T* wts;                       // [B, H, Wr / xblock, NN, xblock]
};

template <typename T>
struct WalkFns {
  int64_t xblock;  // pixels per block: Wr is a multiple of it
  // Every pass over classes [k0, k1) of image bi: bufs[s % 2] -> bufs[(s + 1) % 2] for s < steps.
  void (*walk_classes)(const WalkArgs<T>&, T* buf0, T* buf1, int64_t bi, int64_t k0, int64_t k1, int64_t steps);
  // One pass over rows [y0, y1) of every class of image bi.
  void (*walk_rows)(const WalkArgs<T>&, const T* src, T* dst, int64_t bi, int64_t y0, int64_t y1);
};

using WalkKernels = PerAccDtype<WalkFns>;

}  // namespace cpu
}  // namespace grmseg

GRMSEG_DECLARE_CPU_KERNELS(WalkKernels, walk_kernels)
