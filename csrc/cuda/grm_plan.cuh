// Host-side launch planning of the GRM CUDA kernels (grm_fused_kernels.cuh), shared by grm_project_cuda.cu and
// grm_fused_cuda.cu; grmseg/ops/impl/cupy_nvrtc.py mirrors it for the NVRTC path (keep the two in step).
//
// One block per (batch, pixel chunk); a chunk is walked in tiles of `tile` pixels, the largest power of two up
// to kMaxTile whose shared buffers fit the default 48 KiB (no opt-in needed): `kt` [K][tile + 1] buffers,
// `stages` [kChanChunk][tile + 1] stages and a [K] vector, rows padded to tile + 1 against bank conflicts.
// The chunking depends on the shapes only, so the fixed-order reductions make the results deterministic.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "cuda/grm_fused_kernels.cuh"

namespace grmseg {
namespace grm_plan {

constexpr int kMaxTile = 64;                            // pixels per tile (fewer when K is large)
constexpr size_t kSmemBudget = 48 * 1024;               // default dynamic shared memory limit
constexpr int64_t kTargetBlocks = 256;                  // about two blocks per SM on the largest GPUs
constexpr int64_t kMinTilesPerChunk = 4;                // a block reads >= 4 tiles per [K, C] partial it writes
constexpr int64_t kMaxPartialElems = int64_t(1) << 24;  // cap of the partial buffers (elements)

// Shared memory of a kernel with `kt` [K][tile + 1] buffers and `stages` [kChanChunk][tile + 1] stages.
template <typename acc_t>
size_t smem_bytes(int64_t K, int tile, int kt, int stages) {
  const size_t ld = static_cast<size_t>(tile) + 1;
  return (static_cast<size_t>(kt) * K * ld + static_cast<size_t>(stages) * grmseg_kernels::kChanChunk * ld +
          static_cast<size_t>(K)) *
         sizeof(acc_t);
}

struct Launch {
  int tile;
  size_t smem;
  int64_t chunks, chunk_px;
};

template <typename acc_t>
Launch plan(int64_t B, int64_t K, int64_t C, int64_t P, int kt, int stages, const char* who) {
  Launch l;
  l.tile = kMaxTile;
  while (l.tile > 1 && smem_bytes<acc_t>(K, l.tile, kt, stages) > kSmemBudget) l.tile /= 2;
  l.smem = smem_bytes<acc_t>(K, l.tile, kt, stages);
  TORCH_CHECK(l.smem <= kSmemBudget, who, ": K = ", K, " nodes do not fit in shared memory");
  const int64_t tiles = (P + l.tile - 1) / l.tile;
  int64_t chunks = (kTargetBlocks + B - 1) / B;
  chunks = std::min(chunks, std::max<int64_t>(1, kMaxPartialElems / std::max<int64_t>(1, B * K * C)));
  chunks = std::max<int64_t>(1, std::min(chunks, tiles / kMinTilesPerChunk));
  const int64_t per = tiles == 0 ? 1 : (tiles + chunks - 1) / chunks;
  l.chunks = tiles == 0 ? 1 : (tiles + per - 1) / per;
  l.chunk_px = per * l.tile;
  TORCH_CHECK(B * l.chunks <= std::numeric_limits<int32_t>::max(), who, ": batch ", B, " is too large");
  return l;
}

// dst[gi][r] = sum_j src[gi][j][r] over the `chunks` partials, in order.
template <typename scalar_t, typename acc_t>
void reduce_chunks(const at::Tensor& src, at::Tensor& dst, int64_t groups, int64_t n, int64_t chunks,
                   cudaStream_t stream) {
  const int64_t total = groups * n;
  if (total == 0) return;
  const int64_t blocks = std::min<int64_t>((total + grmseg_kernels::kThreads - 1) / grmseg_kernels::kThreads, 65536);
  grmseg_kernels::reduce_chunks_kernel<scalar_t, acc_t>
      <<<static_cast<unsigned int>(blocks), grmseg_kernels::kThreads, 0, stream>>>(
          src.const_data_ptr<acc_t>(), dst.mutable_data_ptr<scalar_t>(), groups, n, chunks);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace grm_plan
}  // namespace grmseg
