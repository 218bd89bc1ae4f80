// local_affinity / boundary_affinity CPU kernels (affinity_kernel.cpp, one per instruction-set level) and what
// the glue (csrc/cpu/affinity_cpu.cpp) hands them: one task per (image, pixel row), the accumulation type only.
//
// The input comes zero-padded, [B, C, H + R, Wp] with pixel (y, x) of channel c at (c (H + R) + y) Wp + L + x
// (R = r - 1 rows below, L >= R columns on each side, rows Wp wide), so that every neighbour and path read of a
// row's whole vectors is in bounds; outputs outside the map are written as 0 from the offsets alone.
#pragma once

#include <cstdint>

#include "cpu/capability.h"
#include "cpu/kernels/kernel_table.h"

namespace grmseg {
namespace cpu {

template <typename T>
struct AffinityArgs {
  int64_t C, H, W, Wr, Wp, L, R, D;  // Wr: W rounded up to whole vectors of every level (<= Wp - 2L)
  const T* map;                      // [B, C, H + R, Wp] padded input
  const int64_t* dy;                 // [D] the offsets
  const int64_t* dx;                 // [D]
  const int64_t* path_begin;         // [D + 1] boundary: offset d's path points are [path_begin[d], path_begin[d+1])
  const int64_t* path_y;             // the path points (py, px), (0, 0) first
  const int64_t* path_x;
  T* out;                            // [B, D, H, W]
};

template <typename T>
struct AffinityFns {
  void (*local_rows)(const AffinityArgs<T>&, int64_t begin, int64_t end);     // (image, row) tasks
  void (*boundary_rows)(const AffinityArgs<T>&, int64_t begin, int64_t end);  // (image, row) tasks
};

using AffinityKernels = PerAccDtype<AffinityFns>;

constexpr int64_t kAffinityPad = 16;  // Wr and L are multiples of this (every level's vector length divides it)

}  // namespace cpu
}  // namespace grmseg

GRMSEG_DECLARE_CPU_KERNELS(AffinityKernels, affinity_kernels)
