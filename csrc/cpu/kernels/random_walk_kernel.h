// random_walk's CPU pass kernels (random_walk_kernel.cpp, one per instruction-set level) and what the glue
// (csrc/cpu/random_walk_cpu.cpp) hands them. The state is in the accumulation type (fp32 or fp64) only.
//
// A pass is y_j <- sum_n wts[n, j] y_{j + s_n} over the NN = 2D + 1 terms of every pixel j: its 2D neighbours,
// then itself (s_{2D} = 0; see random_walk_cpu.cpp). The states are [K, Hp, S] planes with a zero border of
// R = r - 1 rows above, R + rows - 1 below and L >= R columns on each side (so every read of a row block is in
// bounds); the weights are blocked per row block and pixel block, in the order the kernel reads them, so that a
// block's are contiguous and stay in L1 while they are applied to every class.
#pragma once

#include <cstdint>

#include "cpu/capability.h"
#include "cpu/kernels/kernel_table.h"

namespace grmseg {
namespace cpu {

// The most rows a kernel's register block may have (its 2^rows - 1 masks of rows are a loop each).
constexpr int kMaxWalkRows = 4;

template <typename T>
struct WalkArgs {
  int64_t K, H, Wr, S, R, L, plane;  // pixel (y, x) of a plane at (y + R) S + L + x; plane = Hp S
  int64_t row_blocks;                // ceil(H / rows): the row blocks of a map (and of wts)
  // The schedule of a row block of `rows` (WalkFns) rows, its first pixel at 0: the input positions its rows read
  // as neighbours (offsets in a state plane), sorted by the mask of the rows that read them; those of mask m are
  // [groups[m - 1], groups[m]) (groups[0] = 0). Each row's own term is not among them.
  const int64_t* shifts;
  const int64_t* groups;
  int64_t vectors;  // U: the weight vectors of a row block's pixel block
  int64_t wave_bytes;  // the cache a class block's sweep over several steps may fill (see walk_classes)
  // [B, row_blocks, Wr / xblock, U, xblock]: a block's weights in the order of the schedule, for each position
  // the weight of each row that reads it (rows ascending), then each row's own weight
  const T* wts;
};

template <typename T>
struct WalkFns {
  int64_t xblock;  // pixels per block: Wr is a multiple of it
  int64_t rows;    // rows per block: rows go in blocks [rows j, rows (j + 1))
  // Every pass over classes [k0, k1) of image bi: bufs[s % 2] -> bufs[(s + 1) % 2] for s < steps.
  void (*walk_classes)(const WalkArgs<T>&, T* buf0, T* buf1, int64_t bi, int64_t k0, int64_t k1, int64_t steps);
  // One pass over the row blocks that start in rows [y0, y1) (multiples of `rows`) of every class of image bi.
  void (*walk_rows)(const WalkArgs<T>&, const T* src, T* dst, int64_t bi, int64_t y0, int64_t y1);
};

using WalkKernels = PerAccDtype<WalkFns>;

}  // namespace cpu
}  // namespace grmseg

GRMSEG_DECLARE_CPU_KERNELS(WalkKernels, walk_kernels)
