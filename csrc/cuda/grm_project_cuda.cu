// grm_project_forward on CUDA.
//
// Kernel 1 (project_partial_kernel): one block per (batch, pixel chunk). The chunk is walked in tiles of
// `tile` pixels. For each tile the block
//   1. computes the logits s[K][tile] = b + w x in shared memory, staging x by kChanChunk channels
//      (loads are coalesced along P; each (k, p) is owned by one thread),
//   2. takes the softmax over K per pixel (one thread per pixel, fp32 / fp64 math),
//   3. adds sum_p a[k][p] to m[k] (shared, one owner thread per k) and sum_p a[k][p] x[c][p] to its partial
//      h[k][c] (global, one owner thread per (k, c) and a __syncthreads between tiles: no atomics).
// Kernel 2 (reduce_partials_kernel) sums the chunk partials in a fixed order and casts to the input dtype,
// so the result is deterministic. The chunking depends on the shapes only.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <limits>

#include "cuda/grm_project_cuda.h"
#include "grm_project.h"

namespace grmseg {
namespace {

constexpr int kThreads = 256;
constexpr int kChanChunk = 32;                   // channels of x staged in shared memory at a time
constexpr int kMaxTile = 64;                     // pixels per tile (fewer when K is large)
constexpr size_t kSmemBudget = 48 * 1024;        // default dynamic shared memory limit, no opt-in needed
constexpr int64_t kTargetBlocks = 256;           // about two blocks per SM on the largest GPUs
constexpr int64_t kMinTilesPerChunk = 4;         // a block reads >= 4 tiles of x per [K, C] partial it writes
constexpr int64_t kMaxPartialElems = int64_t(1) << 24;  // cap of the fp32 partial buffer (64 MiB)

__device__ __forceinline__ float exp_acc(float v) { return expf(v); }
__device__ __forceinline__ double exp_acc(double v) { return exp(v); }

template <typename acc_t>
size_t smem_bytes(int64_t K, int tile) {
  return (static_cast<size_t>(K) * tile + static_cast<size_t>(kChanChunk) * (tile + 1) + static_cast<size_t>(K)) *
         sizeof(acc_t);
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_x_tile(acc_t* __restrict__ xs, const scalar_t* __restrict__ xb, int64_t sc,
                                            int64_t sp, int64_t c0, int nc, int64_t p0, int np, int tile) {
  const int ld = tile + 1;  // padded rows: the h phase reads xs column-wise without bank conflicts
  for (int i = threadIdx.x; i < kChanChunk * tile; i += blockDim.x) {
    const int cc = i / tile, p = i % tile;
    acc_t v = acc_t(0);
    if (cc < nc && p < np) {
      v = static_cast<acc_t>(xb[(c0 + cc) * sc + (p0 + p) * sp]);
    }
    xs[cc * ld + p] = v;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    project_partial_kernel(const scalar_t* __restrict__ x, int64_t sb, int64_t sc, int64_t sp,
                           const acc_t* __restrict__ w, const acc_t* __restrict__ bias, acc_t* __restrict__ hp,
                           acc_t* __restrict__ mp, int64_t C, int64_t P, int K, int tile, int64_t chunk_px,
                           int64_t chunks) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* s = reinterpret_cast<acc_t*>(smem_raw);  // [K][tile]   logits, then assignment
  acc_t* xs = s + static_cast<int64_t>(K) * tile;  // [kChanChunk][tile + 1]
  acc_t* ms = xs + kChanChunk * (tile + 1);        // [K]
  const int ld = tile + 1;

  const int64_t block = blockIdx.x;
  const int64_t bi = block / chunks, ci = block % chunks;
  const int64_t p_begin = ci * chunk_px;
  const int64_t p_end = p_begin + chunk_px < P ? p_begin + chunk_px : P;
  const scalar_t* xb = x + bi * sb;
  acc_t* hb = hp + block * K * C;
  acc_t* mb = mp + block * K;

  for (int k = threadIdx.x; k < K; k += blockDim.x) ms[k] = acc_t(0);

  for (int64_t p0 = p_begin; p0 < p_end; p0 += tile) {
    const int np = static_cast<int>(p_end - p0 < tile ? p_end - p0 : tile);

    // 1. logits
    for (int i = threadIdx.x; i < K * tile; i += blockDim.x) s[i] = bias[i / tile];
    for (int64_t c0 = 0; c0 < C; c0 += kChanChunk) {
      const int nc = static_cast<int>(C - c0 < kChanChunk ? C - c0 : kChanChunk);
      __syncthreads();  // xs is free, s is initialised
      load_x_tile<scalar_t, acc_t>(xs, xb, sc, sp, c0, nc, p0, np, tile);
      __syncthreads();
      for (int i = threadIdx.x; i < K * tile; i += blockDim.x) {
        const int k = i / tile, p = i % tile;
        const acc_t* wk = w + k * C + c0;
        acc_t acc = s[i];
        for (int cc = 0; cc < nc; ++cc) acc += wk[cc] * xs[cc * ld + p];
        s[i] = acc;
      }
    }
    __syncthreads();

    // 2. softmax over K per pixel; padded pixels get a zero assignment
    for (int p = threadIdx.x; p < tile; p += blockDim.x) {
      if (p < np) {
        acc_t mx = s[p];
        for (int k = 1; k < K; ++k) mx = s[k * tile + p] > mx ? s[k * tile + p] : mx;
        acc_t den = acc_t(0);
        for (int k = 0; k < K; ++k) {
          const acc_t e = exp_acc(s[k * tile + p] - mx);
          s[k * tile + p] = e;
          den += e;
        }
        const acc_t inv = acc_t(1) / den;
        for (int k = 0; k < K; ++k) s[k * tile + p] *= inv;
      } else {
        for (int k = 0; k < K; ++k) s[k * tile + p] = acc_t(0);
      }
    }
    __syncthreads();

    // 3. m[k] += sum_p a[k][p]
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
      acc_t acc = acc_t(0);
      for (int p = 0; p < np; ++p) acc += s[k * tile + p];
      ms[k] += acc;
    }
    //    h[k][c] += sum_p a[k][p] x[c][p]
    for (int64_t c0 = 0; c0 < C; c0 += kChanChunk) {
      const int nc = static_cast<int>(C - c0 < kChanChunk ? C - c0 : kChanChunk);
      __syncthreads();  // xs is free
      load_x_tile<scalar_t, acc_t>(xs, xb, sc, sp, c0, nc, p0, np, tile);
      __syncthreads();
      for (int i = threadIdx.x; i < K * nc; i += blockDim.x) {
        const int k = i / nc, cc = i % nc;
        const acc_t* ak = s + k * tile;
        const acc_t* xc = xs + cc * ld;
        acc_t acc = acc_t(0);
        for (int p = 0; p < np; ++p) acc += ak[p] * xc[p];
        hb[k * C + c0 + cc] += acc;
      }
    }
    __syncthreads();  // s and xs are reused by the next tile
  }

  for (int k = threadIdx.x; k < K; k += blockDim.x) mb[k] = ms[k];  // the owner thread of ms[k]
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    reduce_partials_kernel(const acc_t* __restrict__ hp, const acc_t* __restrict__ mp, scalar_t* __restrict__ h,
                           scalar_t* __restrict__ m, int64_t B, int64_t K, int64_t C, int64_t chunks) {
  const int64_t KC = K * C, nh = B * KC, total = nh + B * K;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (i < nh) {
      const int64_t bi = i / KC, r = i % KC;
      const acc_t* src = hp + bi * chunks * KC + r;
      acc_t acc = acc_t(0);
      for (int64_t j = 0; j < chunks; ++j) acc += src[j * KC];
      h[i] = static_cast<scalar_t>(acc);
    } else {
      const int64_t i2 = i - nh, bi = i2 / K, r = i2 % K;
      const acc_t* src = mp + bi * chunks * K + r;
      acc_t acc = acc_t(0);
      for (int64_t j = 0; j < chunks; ++j) acc += src[j * K];
      m[i2] = static_cast<scalar_t>(acc);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> grm_project_forward_cuda(const at::Tensor& x, const at::Tensor& w,
                                                             const at::Tensor& b) {
  check_project_inputs(x, w, b, c10::DeviceType::CUDA, "grmseg_C::grm_project_forward (CUDA)");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2), K = w.size(0);
  at::Tensor h = at::empty({B, K, C}, x.options());
  at::Tensor m = at::empty({B, K}, x.options());
  if (B == 0 || K == 0) {
    return {h, m};
  }
  const at::ScalarType acc_type = at::toOpMathType(x.scalar_type());
  const at::Tensor w_acc = w.to(acc_type).contiguous();
  const at::Tensor b_acc = b.to(acc_type).contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grm_project_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // Largest tile whose logits + x stage fit the default shared memory.
    int tile = kMaxTile;
    while (tile > 1 && smem_bytes<acc_t>(K, tile) > kSmemBudget) tile /= 2;
    const size_t smem = smem_bytes<acc_t>(K, tile);
    TORCH_CHECK(smem <= kSmemBudget, "grmseg_C::grm_project_forward (CUDA): K = ", K,
                " nodes do not fit in shared memory (at most about ", kSmemBudget / sizeof(acc_t) / 2 - kChanChunk,
                " for this dtype)");

    // Chunking: a function of the shapes only.
    const int64_t tiles = (P + tile - 1) / tile;
    int64_t chunks = (kTargetBlocks + B - 1) / B;
    chunks = std::min(chunks, std::max<int64_t>(1, kMaxPartialElems / std::max<int64_t>(1, B * K * C)));
    chunks = std::max<int64_t>(1, std::min(chunks, tiles / kMinTilesPerChunk));
    const int64_t tiles_per_chunk = tiles == 0 ? 1 : (tiles + chunks - 1) / chunks;
    chunks = tiles == 0 ? 1 : (tiles + tiles_per_chunk - 1) / tiles_per_chunk;
    const int64_t chunk_px = tiles_per_chunk * tile;
    const int64_t blocks = B * chunks;
    TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "grmseg_C::grm_project_forward (CUDA): batch ", B,
                " is too large");

    at::Tensor part_h = at::zeros({B * chunks, K, C}, x.options().dtype(acc_type));
    at::Tensor part_m = at::empty({B * chunks, K}, x.options().dtype(acc_type));

    project_partial_kernel<scalar_t, acc_t><<<static_cast<unsigned int>(blocks), kThreads, smem, stream>>>(
        x.const_data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.stride(2), w_acc.const_data_ptr<acc_t>(),
        b_acc.const_data_ptr<acc_t>(), part_h.mutable_data_ptr<acc_t>(), part_m.mutable_data_ptr<acc_t>(), C, P,
        static_cast<int>(K), tile, chunk_px, chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    const int64_t total = B * K * C + B * K;
    const int64_t reduce_blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65536);
    reduce_partials_kernel<scalar_t, acc_t><<<static_cast<unsigned int>(reduce_blocks), kThreads, 0, stream>>>(
        part_h.const_data_ptr<acc_t>(), part_m.const_data_ptr<acc_t>(), h.mutable_data_ptr<scalar_t>(),
        m.mutable_data_ptr<scalar_t>(), B, K, C, chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {h, m};
}

}  // namespace grmseg
