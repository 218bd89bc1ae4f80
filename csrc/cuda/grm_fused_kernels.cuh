// Device code of the GRM kernels: grm_project forward and backward, grm_reproject forward and backward. The
// kernels only, no ATen / c10 / host code, so the same source serves two compilers:
//   * nvcc, through grm_project_cuda.cu and grm_fused_cuda.cu (the host launchers, registered as
//     torch.ops.grmseg_C.*);
//   * NVRTC at run time, through CuPy (grmseg/ops/impl/cupy_nvrtc.py) when grmseg._C was built without its CUDA
//     part: compiled with -DGRMSEG_NVRTC, the kernels instantiated by name expression.
// The algorithm is described in grm_fused_cuda.cu. Every kernel uses the same tile helpers below:
//   * stage: a [kChanChunk][tile + 1] chunk of x (or gy) into shared memory, the loads coalesced along whichever
//     of the channel and pixel axes has the smaller stride (NCHW: pixels; channels-last: channels);
//   * stage_product: out[k][p] += M[k][c0 + cc] xs[cc][p], one owner thread per (k, p);
//   * softmax_and_backward: per pixel, the softmax over K (and its backward), a warp per pixel so every thread
//     of the block works and the K values are reduced with shuffles;
//   * accumulate_kc: part[k][c] += sum_p a[k][p] xs[cc][p], one owner thread per (k, c).
// Shared-memory rows are padded to an odd length (tile + 1 floats): a warp walking a column (k varying, p
// fixed) or a row chunk hits 32 different banks.
#pragma once

#ifdef GRMSEG_NVRTC
typedef long long int64_t;
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#else
#include <cstdint>
#endif

namespace grmseg_kernels {

constexpr int kThreads = 256;
// Blocks per SM the register allocation must allow (2 x 48 KiB of shared memory fit every GPU since sm_80).
// Stated, because without it ptxas held reproject_forward_kernel<float> to 32 registers on sm_80 and spilled.
constexpr int kMinBlocks = 2;
#ifdef __CUDACC__  // nvcc and NVRTC; a host compiler (the CPU emulation of these kernels) has no launch bounds
#define GRMSEG_KERNEL_BOUNDS __launch_bounds__(grmseg_kernels::kThreads, grmseg_kernels::kMinBlocks)
#else
#define GRMSEG_KERNEL_BOUNDS
#endif
constexpr int kChanChunk = 32;  // channels of x / gy staged in shared memory at a time

__device__ __forceinline__ float exp_acc(float v) { return expf(v); }
__device__ __forceinline__ double exp_acc(double v) { return exp(v); }

// Row stride of every [rows][tile] shared buffer: odd, so a column access is free of bank conflicts.
__device__ __forceinline__ int padded(int tile) { return tile + 1; }

// Reductions over the `lanes` lanes of a warp that share one pixel (lanes is 32, or 1 when a block has a
// single thread, as in the CPU emulation of these kernels).
template <typename acc_t>
__device__ __forceinline__ acc_t lanes_max(acc_t v, int lanes) {
#ifdef __CUDA_ARCH__
  for (int o = lanes / 2; o > 0; o /= 2) {
    const acc_t other = __shfl_xor_sync(0xffffffffu, v, o);
    v = other > v ? other : v;
  }
#endif
  return v;
}

template <typename acc_t>
__device__ __forceinline__ acc_t lanes_sum(acc_t v, int lanes) {
#ifdef __CUDA_ARCH__
  for (int o = lanes / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
#endif
  return v;
}

// xs[cc][p] = src[c0 + cc][p0 + p] (zero outside), row stride tile + 1. Consecutive threads take consecutive
// pixels when the pixel stride is the smaller one (NCHW), else consecutive channels (channels-last).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void stage(acc_t* __restrict__ xs, const scalar_t* __restrict__ src, int64_t sc,
                                      int64_t sp, int64_t c0, int nc, int64_t p0, int np, int tile) {
  const int ld = padded(tile);
  const bool pixels_fastest = (sp < 0 ? -sp : sp) <= (sc < 0 ? -sc : sc);
  for (int i = threadIdx.x; i < kChanChunk * tile; i += blockDim.x) {
    const int cc = pixels_fastest ? i / tile : i % kChanChunk;
    const int p = pixels_fastest ? i % tile : i / kChanChunk;
    acc_t v = acc_t(0);
    if (cc < nc && p < np) v = static_cast<acc_t>(src[(c0 + cc) * sc + (p0 + p) * sp]);
    xs[cc * ld + p] = v;
  }
}

// out[k][p] = v[k] for every (k, p) of a [K][tile + 1] buffer (v == nullptr: 0).
template <typename acc_t>
__device__ __forceinline__ void fill_rows(acc_t* __restrict__ out, const acc_t* __restrict__ v, int K, int tile) {
  const int ld = padded(tile);
  for (int i = threadIdx.x; i < K * tile; i += blockDim.x) {
    const int k = i / tile, p = i % tile;
    out[k * ld + p] = v == nullptr ? acc_t(0) : v[k];
  }
}

// out[k][p] += sum_cc M[k][c0 + cc] xs[cc][p]  (M row-major [K][C]; out and xs rows of stride tile + 1).
template <typename acc_t>
__device__ __forceinline__ void stage_product(acc_t* __restrict__ out, const acc_t* __restrict__ M,
                                              const acc_t* __restrict__ xs, int K, int64_t C, int64_t c0, int nc,
                                              int tile) {
  const int ld = padded(tile);
  for (int i = threadIdx.x; i < K * tile; i += blockDim.x) {
    const int k = i / tile, p = i % tile;
    const acc_t* mk = M + k * C + c0;
    acc_t acc = out[k * ld + p];
    for (int cc = 0; cc < nc; ++cc) acc += mk[cc] * xs[cc * ld + p];
    out[k * ld + p] = acc;
  }
}

// Per pixel: s <- softmax_K(s); if g: g <- s * (g - sum_k s g). Padded pixels get zeros. A warp per pixel: its
// lanes take k = lane, lane + 32, ... and reduce with shuffles.
template <typename acc_t>
__device__ __forceinline__ void softmax_and_backward(acc_t* __restrict__ s, acc_t* __restrict__ g, int K, int np,
                                                     int tile) {
  const int ld = padded(tile);
  const int lanes = blockDim.x < 32 ? static_cast<int>(blockDim.x) : 32;
  const int lane = static_cast<int>(threadIdx.x) % lanes;
  const int warps = static_cast<int>(blockDim.x) / lanes;
  for (int p = static_cast<int>(threadIdx.x) / lanes; p < tile; p += warps) {
    if (p < np) {
      acc_t mx = s[p];
      for (int k = lane; k < K; k += lanes) mx = s[k * ld + p] > mx ? s[k * ld + p] : mx;
      mx = lanes_max(mx, lanes);
      acc_t den = acc_t(0);
      for (int k = lane; k < K; k += lanes) {
        const acc_t e = exp_acc(s[k * ld + p] - mx);
        s[k * ld + p] = e;
        den += e;
      }
      const acc_t inv = acc_t(1) / lanes_sum(den, lanes);
      acc_t dot = acc_t(0);
      for (int k = lane; k < K; k += lanes) {
        const acc_t a = s[k * ld + p] * inv;
        s[k * ld + p] = a;
        if (g != nullptr) dot += a * g[k * ld + p];
      }
      if (g != nullptr) {
        dot = lanes_sum(dot, lanes);
        for (int k = lane; k < K; k += lanes) g[k * ld + p] = s[k * ld + p] * (g[k * ld + p] - dot);
      }
    } else {
      for (int k = lane; k < K; k += lanes) {
        s[k * ld + p] = acc_t(0);
        if (g != nullptr) g[k * ld + p] = acc_t(0);
      }
    }
  }
}

// part[k] += sum_p a[k][p] (one owner thread per k).
template <typename acc_t>
__device__ __forceinline__ void accumulate_k(acc_t* __restrict__ part, const acc_t* __restrict__ a, int K, int np,
                                             int tile) {
  const int ld = padded(tile);
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    acc_t acc = acc_t(0);
    for (int p = 0; p < np; ++p) acc += a[k * ld + p];
    part[k] += acc;
  }
}

// part[k][c0 + cc] += sum_p a[k][p] xs[cc][p]  (one owner thread per (k, cc)).
template <typename acc_t>
__device__ __forceinline__ void accumulate_kc(acc_t* __restrict__ part, const acc_t* __restrict__ a,
                                              const acc_t* __restrict__ xs, int K, int64_t C, int64_t c0, int nc,
                                              int np, int tile) {
  const int ld = padded(tile);
  for (int i = threadIdx.x; i < K * nc; i += blockDim.x) {
    const int k = i / nc, cc = i % nc;
    const acc_t* ak = a + k * ld;
    const acc_t* xc = xs + cc * ld;
    acc_t acc = acc_t(0);
    for (int p = 0; p < np; ++p) acc += ak[p] * xc[p];
    part[k * C + c0 + cc] += acc;
  }
}

// The pixel range [p_begin, p_end) of block `block` of a (batch, pixel chunk) grid.
__device__ __forceinline__ void chunk_range(int64_t block, int64_t chunks, int64_t chunk_px, int64_t P,
                                            int64_t& bi, int64_t& p_begin, int64_t& p_end) {
  bi = block / chunks;
  p_begin = (block % chunks) * chunk_px;
  p_end = p_begin + chunk_px < P ? p_begin + chunk_px : P;
}

// -------------------------------------------------------------------------------------------- grm_project_forward
// Partials: h [blocks][K][C] (zeroed by the host), m [blocks][K].
template <typename scalar_t, typename acc_t>
__global__ void GRMSEG_KERNEL_BOUNDS
    project_forward_kernel(const scalar_t* __restrict__ x, int64_t sb, int64_t sc, int64_t sp,
                           const acc_t* __restrict__ w, const acc_t* __restrict__ bias, acc_t* __restrict__ part_h,
                           acc_t* __restrict__ part_m, int64_t C, int64_t P, int K, int tile, int64_t chunk_px,
                           int64_t chunks) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int ld = padded(tile);
  acc_t* s = reinterpret_cast<acc_t*>(smem_raw);  // [K][tile + 1] logits -> a
  acc_t* xs = s + static_cast<int64_t>(K) * ld;    // [kChanChunk][tile + 1]
  acc_t* ms = xs + kChanChunk * ld;                // [K] m of this block
  const int64_t block = blockIdx.x;
  int64_t bi, p_begin, p_end;
  chunk_range(block, chunks, chunk_px, P, bi, p_begin, p_end);
  const scalar_t* xb = x + bi * sb;
  acc_t* ph = part_h + block * K * C;
  for (int k = threadIdx.x; k < K; k += blockDim.x) ms[k] = acc_t(0);

  for (int64_t p0 = p_begin; p0 < p_end; p0 += tile) {
    const int np = static_cast<int>(p_end - p0 < tile ? p_end - p0 : tile);
    fill_rows<acc_t>(s, bias, K, tile);
    for (int64_t c0 = 0; c0 < C; c0 += kChanChunk) {
      const int nc = static_cast<int>(C - c0 < kChanChunk ? C - c0 : kChanChunk);
      __syncthreads();  // xs is free, s is initialised
      stage<scalar_t, acc_t>(xs, xb, sc, sp, c0, nc, p0, np, tile);
      __syncthreads();
      stage_product<acc_t>(s, w, xs, K, C, c0, nc, tile);
    }
    __syncthreads();
    softmax_and_backward<acc_t>(s, static_cast<acc_t*>(nullptr), K, np, tile);
    __syncthreads();
    accumulate_k<acc_t>(ms, s, K, np, tile);  // m += sum_p a
    for (int64_t c0 = 0; c0 < C; c0 += kChanChunk) {
      const int nc = static_cast<int>(C - c0 < kChanChunk ? C - c0 : kChanChunk);
      __syncthreads();  // xs is free
      stage<scalar_t, acc_t>(xs, xb, sc, sp, c0, nc, p0, np, tile);
      __syncthreads();
      accumulate_kc<acc_t>(ph, s, xs, K, C, c0, nc, np, tile);  // h += a x^T
    }
    __syncthreads();  // s and xs are reused by the next tile
  }
  for (int k = threadIdx.x; k < K; k += blockDim.x) part_m[block * K + k] = ms[k];  // the owner thread of ms[k]
}

// ------------------------------------------------------------------------------------------ grm_project_backward
// Partials: gw [blocks][K][C] (zeroed by the host), gb [blocks][K].
template <typename scalar_t, typename acc_t>
__global__ void GRMSEG_KERNEL_BOUNDS
    project_backward_kernel(const scalar_t* __restrict__ x, int64_t sb, int64_t sc, int64_t sp,
                            const acc_t* __restrict__ w, const acc_t* __restrict__ bias,
                            const acc_t* __restrict__ gh, const acc_t* __restrict__ gm, scalar_t* __restrict__ gx,
                            acc_t* __restrict__ part_w, acc_t* __restrict__ part_b, int64_t C, int64_t P, int K,
                            int tile, int64_t chunk_px, int64_t chunks) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int ld = padded(tile);
  acc_t* s = reinterpret_cast<acc_t*>(smem_raw);  // [K][tile + 1] logits -> a
  acc_t* g = s + static_cast<int64_t>(K) * ld;     // [K][tile + 1] ga -> gs
  acc_t* xs = g + static_cast<int64_t>(K) * ld;    // [kChanChunk][tile + 1]
  acc_t* bs = xs + kChanChunk * ld;                // [K] gb of this block
  const int64_t block = blockIdx.x;
  int64_t bi, p_begin, p_end;
  chunk_range(block, chunks, chunk_px, P, bi, p_begin, p_end);
  const scalar_t* xb = x + bi * sb;
  const acc_t* ghb = gh + bi * K * C;
  const acc_t* gmb = gm + bi * K;
  scalar_t* gxb = gx + bi * C * P;
  acc_t* pw = part_w + block * K * C;
  for (int k = threadIdx.x; k < K; k += blockDim.x) bs[k] = acc_t(0);

  for (int64_t p0 = p_begin; p0 < p_end; p0 += tile) {
    const int np = static_cast<int>(p_end - p0 < tile ? p_end - p0 : tile);
    fill_rows<acc_t>(s, bias, K, tile);
    fill_rows<acc_t>(g, gmb, K, tile);
    for (int64_t c0 = 0; c0 < C; c0 += kChanChunk) {
      const int nc = static_cast<int>(C - c0 < kChanChunk ? C - c0 : kChanChunk);
      __syncthreads();
      stage<scalar_t, acc_t>(xs, xb, sc, sp, c0, nc, p0, np, tile);
      __syncthreads();
      stage_product<acc_t>(s, w, xs, K, C, c0, nc, tile);
      stage_product<acc_t>(g, ghb, xs, K, C, c0, nc, tile);
    }
    __syncthreads();
    softmax_and_backward<acc_t>(s, g, K, np, tile);
    __syncthreads();
    accumulate_k<acc_t>(bs, g, K, np, tile);  // gb += sum_p gs
    for (int64_t c0 = 0; c0 < C; c0 += kChanChunk) {
      const int nc = static_cast<int>(C - c0 < kChanChunk ? C - c0 : kChanChunk);
      __syncthreads();
      stage<scalar_t, acc_t>(xs, xb, sc, sp, c0, nc, p0, np, tile);
      __syncthreads();
      accumulate_kc<acc_t>(pw, g, xs, K, C, c0, nc, np, tile);  // gw += gs x^T
      // gx = gh^T a + w^T gs, coalesced along P
      for (int i = threadIdx.x; i < nc * tile; i += blockDim.x) {
        const int cc = i / tile, p = i % tile;
        if (p < np) {
          const int64_t c = c0 + cc;
          acc_t acc = acc_t(0);
          for (int k = 0; k < K; ++k) acc += ghb[k * C + c] * s[k * ld + p] + w[k * C + c] * g[k * ld + p];
          gxb[c * P + p0 + p] = static_cast<scalar_t>(acc);
        }
      }
    }
    __syncthreads();
  }
  for (int k = threadIdx.x; k < K; k += blockDim.x) part_b[block * K + k] = bs[k];
}

// ----------------------------------------------------------------------------------------- grm_reproject_forward
template <typename scalar_t, typename acc_t>
__global__ void GRMSEG_KERNEL_BOUNDS
    reproject_forward_kernel(const scalar_t* __restrict__ x, int64_t sb, int64_t sc, int64_t sp,
                             const acc_t* __restrict__ q, const acc_t* __restrict__ v, scalar_t* __restrict__ y,
                             int64_t C, int64_t P, int K, int tile, int64_t chunk_px, int64_t chunks) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int ld = padded(tile);
  acc_t* s = reinterpret_cast<acc_t*>(smem_raw);  // [K][tile + 1] logits -> a
  acc_t* xs = s + static_cast<int64_t>(K) * ld;    // [kChanChunk][tile + 1]
  int64_t bi, p_begin, p_end;
  chunk_range(blockIdx.x, chunks, chunk_px, P, bi, p_begin, p_end);
  const scalar_t* xb = x + bi * sb;
  const acc_t* qb = q + bi * K * C;
  const acc_t* vb = v + bi * K * C;
  scalar_t* yb = y + bi * C * P;

  for (int64_t p0 = p_begin; p0 < p_end; p0 += tile) {
    const int np = static_cast<int>(p_end - p0 < tile ? p_end - p0 : tile);
    fill_rows<acc_t>(s, static_cast<const acc_t*>(nullptr), K, tile);
    for (int64_t c0 = 0; c0 < C; c0 += kChanChunk) {
      const int nc = static_cast<int>(C - c0 < kChanChunk ? C - c0 : kChanChunk);
      __syncthreads();
      stage<scalar_t, acc_t>(xs, xb, sc, sp, c0, nc, p0, np, tile);
      __syncthreads();
      stage_product<acc_t>(s, qb, xs, K, C, c0, nc, tile);
    }
    __syncthreads();
    softmax_and_backward<acc_t>(s, static_cast<acc_t*>(nullptr), K, np, tile);
    for (int64_t c0 = 0; c0 < C; c0 += kChanChunk) {
      const int nc = static_cast<int>(C - c0 < kChanChunk ? C - c0 : kChanChunk);
      __syncthreads();
      stage<scalar_t, acc_t>(xs, xb, sc, sp, c0, nc, p0, np, tile);
      __syncthreads();
      for (int i = threadIdx.x; i < nc * tile; i += blockDim.x) {
        const int cc = i / tile, p = i % tile;
        if (p < np) {
          const int64_t c = c0 + cc;
          acc_t acc = xs[cc * ld + p];
          for (int k = 0; k < K; ++k) acc += vb[k * C + c] * s[k * ld + p];
          yb[c * P + p0 + p] = static_cast<scalar_t>(acc);
        }
      }
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------- grm_reproject_backward
// Partials: gq, gv [blocks][K][C] (zeroed by the host).
template <typename scalar_t, typename acc_t>
__global__ void GRMSEG_KERNEL_BOUNDS
    reproject_backward_kernel(const scalar_t* __restrict__ gy, int64_t gsb, int64_t gsc, int64_t gsp,
                              const scalar_t* __restrict__ x, int64_t sb, int64_t sc, int64_t sp,
                              const acc_t* __restrict__ q, const acc_t* __restrict__ v, scalar_t* __restrict__ gx,
                              acc_t* __restrict__ part_q, acc_t* __restrict__ part_v, int64_t C, int64_t P, int K,
                              int tile, int64_t chunk_px, int64_t chunks) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int ld = padded(tile);
  acc_t* s = reinterpret_cast<acc_t*>(smem_raw);  // [K][tile + 1] logits -> a
  acc_t* g = s + static_cast<int64_t>(K) * ld;     // [K][tile + 1] ga -> ge
  acc_t* xs = g + static_cast<int64_t>(K) * ld;    // [kChanChunk][tile + 1]
  acc_t* gs = xs + kChanChunk * ld;                // [kChanChunk][tile + 1]
  const int64_t block = blockIdx.x;
  int64_t bi, p_begin, p_end;
  chunk_range(block, chunks, chunk_px, P, bi, p_begin, p_end);
  const scalar_t* xb = x + bi * sb;
  const scalar_t* gyb = gy + bi * gsb;
  const acc_t* qb = q + bi * K * C;
  const acc_t* vb = v + bi * K * C;
  scalar_t* gxb = gx + bi * C * P;
  acc_t* pq = part_q + block * K * C;
  acc_t* pv = part_v + block * K * C;

  for (int64_t p0 = p_begin; p0 < p_end; p0 += tile) {
    const int np = static_cast<int>(p_end - p0 < tile ? p_end - p0 : tile);
    fill_rows<acc_t>(s, static_cast<const acc_t*>(nullptr), K, tile);
    fill_rows<acc_t>(g, static_cast<const acc_t*>(nullptr), K, tile);
    for (int64_t c0 = 0; c0 < C; c0 += kChanChunk) {
      const int nc = static_cast<int>(C - c0 < kChanChunk ? C - c0 : kChanChunk);
      __syncthreads();
      stage<scalar_t, acc_t>(xs, xb, sc, sp, c0, nc, p0, np, tile);
      stage<scalar_t, acc_t>(gs, gyb, gsc, gsp, c0, nc, p0, np, tile);
      __syncthreads();
      stage_product<acc_t>(s, qb, xs, K, C, c0, nc, tile);  // e = q x
      stage_product<acc_t>(g, vb, gs, K, C, c0, nc, tile);  // ga = v gy
    }
    __syncthreads();
    softmax_and_backward<acc_t>(s, g, K, np, tile);  // a, ge
    for (int64_t c0 = 0; c0 < C; c0 += kChanChunk) {
      const int nc = static_cast<int>(C - c0 < kChanChunk ? C - c0 : kChanChunk);
      __syncthreads();
      stage<scalar_t, acc_t>(xs, xb, sc, sp, c0, nc, p0, np, tile);
      stage<scalar_t, acc_t>(gs, gyb, gsc, gsp, c0, nc, p0, np, tile);
      __syncthreads();
      accumulate_kc<acc_t>(pq, g, xs, K, C, c0, nc, np, tile);  // gq += ge x^T
      accumulate_kc<acc_t>(pv, s, gs, K, C, c0, nc, np, tile);  // gv += a gy^T
      for (int i = threadIdx.x; i < nc * tile; i += blockDim.x) {
        const int cc = i / tile, p = i % tile;
        if (p < np) {
          const int64_t c = c0 + cc;
          acc_t acc = gs[cc * ld + p];
          for (int k = 0; k < K; ++k) acc += qb[k * C + c] * g[k * ld + p];
          gxb[c * P + p0 + p] = static_cast<scalar_t>(acc);
        }
      }
    }
    __syncthreads();
  }
}

// dst[gi][r] = sum_j src[gi][j][r] for j < chunks, in order, cast to the output dtype.
template <typename scalar_t, typename acc_t>
__global__ void GRMSEG_KERNEL_BOUNDS
    reduce_chunks_kernel(const acc_t* __restrict__ src, scalar_t* __restrict__ dst, int64_t groups, int64_t n,
                         int64_t chunks) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < groups * n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t gi = i / n, r = i % n;
    const acc_t* p = src + gi * chunks * n + r;
    acc_t acc = acc_t(0);
    for (int64_t j = 0; j < chunks; ++j) acc += p[j * n];
    dst[i] = static_cast<scalar_t>(acc);
  }
}

}  // namespace grmseg_kernels
