// random_walk_forward on CUDA and its registration.
//
//   cam [B, K, h, w], aff [B, D, h, w], beta, steps  ->  cam_vec @ T^steps  [B, K, h, w]
//
// The dense N x N transition matrix is never formed: `steps` local passes over the NN = 2D neighbours of every
// pixel j, y_j <- y_j + sum_n wts[n, j] (y_{j + s_n} - y_j) (s_{0..D-1} = +o_d, s_{D..2D-1} = -o_d), the scheme
// and numerics of csrc/cpu/random_walk_cpu.cpp: the normalised powered weights wts [B, NN, P] are computed once
// (walk_weights_kernel, one thread per pixel, the normaliser summed in fp64), and the pass sums weighted
// differences, so the column sums of T are exactly 1 and the rounding scales with y_i - y_j, not with y.
// Two pass strategies, fp32 state (fp64 for fp64):
// * small maps (<= kFusedMaxPixels, where a launch per pass would cost more than the pass): walk_fused_kernel,
//   one block per (batch, class) runs every pass on the state in shared memory (twice P values, <= 16 KiB),
//   with a __syncthreads between passes: one launch in all.
// * larger maps: walk_step_kernel once per pass, ping-ponging two global state buffers; one thread per
//   (batch, class group of kKG, pixel) so each weight is loaded once per kKG classes.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "wsss.h"

namespace grmseg {
namespace {

constexpr int kThreads = 256;
constexpr int kKG = 4;                        // classes per thread in walk_step_kernel
constexpr int64_t kFusedMaxPixels = 1024;     // maps up to this size take walk_fused_kernel (one launch in all)
constexpr int64_t kMaxBlocks = 65535;

__device__ __forceinline__ float pow_acc(float a, float b) { return powf(a, b); }
__device__ __forceinline__ double pow_acc(double a, double b) { return pow(a, b); }

inline unsigned grid_for(int64_t total) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks)));
}

// wts [B, NN, P] from aff [B, D, H, W] (contiguous, accumulation type); nb [NN, 2] the shifts (+o_d, then -o_d).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    walk_weights_kernel(const acc_t* __restrict__ aff, const int32_t* __restrict__ nb, acc_t* __restrict__ wts,
                        int64_t B, int64_t D, int64_t H, int64_t W, acc_t beta) {
  const int64_t P = H * W, NN = 2 * D;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < B * P;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t bi = i / P, p = i % P, y = p / W, x = p % W;
    const acc_t* ab = aff + bi * D * P;
    acc_t* wb = wts + bi * NN * P + p;
    double dsum = 1.0;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t dy = nb[2 * d], dx = nb[2 * d + 1];
      acc_t wf = acc_t(0), wbk = acc_t(0);
      if (y + dy >= 0 && y + dy < H && x + dx >= 0 && x + dx < W) wf = pow_acc(ab[d * P + p], beta);
      if (y - dy >= 0 && y - dy < H && x - dx >= 0 && x - dx < W) wbk = pow_acc(ab[d * P + p - dy * W - dx], beta);
      wb[d * P] = wf;
      wb[(D + d) * P] = wbk;
      dsum += static_cast<double>(wf) + static_cast<double>(wbk);
    }
    const double inv = 1.0 / dsum;
    for (int64_t n = 0; n < NN; ++n) wb[n * P] = static_cast<acc_t>(static_cast<double>(wb[n * P]) * inv);
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    walk_step_kernel(const acc_t* __restrict__ src, acc_t* __restrict__ dst, const acc_t* __restrict__ wts,
                     const int32_t* __restrict__ nb, int64_t B, int64_t K, int64_t H, int64_t W, int64_t NN) {
  const int64_t P = H * W, groups = (K + kKG - 1) / kKG, total = B * groups * P;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = i % P, g = (i / P) % groups, bi = i / P / groups;
    const int64_t y = p / W, x = p % W;
    const int64_t k0 = g * kKG;
    const int nk = static_cast<int>(K - k0 < kKG ? K - k0 : kKG);
    const acc_t* sb = src + (bi * K + k0) * P;
    const acc_t* wb = wts + bi * NN * P + p;
    acc_t acc[kKG], yc[kKG];
#pragma unroll
    for (int kk = 0; kk < kKG; ++kk) {
      acc[kk] = acc_t(0);
      yc[kk] = kk < nk ? sb[kk * P + p] : acc_t(0);
    }
    for (int64_t n = 0; n < NN; ++n) {
      const int64_t sy = __ldg(nb + 2 * n), sx = __ldg(nb + 2 * n + 1);
      if (y + sy < 0 || y + sy >= H || x + sx < 0 || x + sx >= W) continue;  // its weight is 0
      const acc_t wn = wb[n * P];
      const int64_t q = p + sy * W + sx;
#pragma unroll
      for (int kk = 0; kk < kKG; ++kk) {
        if (kk < nk) acc[kk] += wn * (sb[kk * P + q] - yc[kk]);
      }
    }
    acc_t* db = dst + (bi * K + k0) * P + p;
#pragma unroll
    for (int kk = 0; kk < kKG; ++kk) {
      if (kk < nk) db[kk * P] = yc[kk] + acc[kk];
    }
  }
}

// Every pass of one (batch, class) map in shared memory: y [B, K, P] in (read) and out (written, may alias).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    walk_fused_kernel(const acc_t* __restrict__ y, acc_t* __restrict__ out, const acc_t* __restrict__ wts,
                      const int32_t* __restrict__ nb, int64_t K, int64_t H, int64_t W, int64_t NN, int64_t steps) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t P = H * W;
  acc_t* buf0 = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* buf1 = buf0 + P;
  const int64_t bk = blockIdx.x, bi = bk / K;
  const acc_t* wb = wts + bi * NN * P;
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) buf0[p] = y[bk * P + p];
  __syncthreads();
  acc_t* cur = buf0;
  acc_t* nxt = buf1;
  for (int64_t s = 0; s < steps; ++s) {
    for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
      const int64_t py = p / W, px = p % W;
      const acc_t yc = cur[p];
      acc_t acc = acc_t(0);
      for (int64_t n = 0; n < NN; ++n) {
        const int64_t sy = __ldg(nb + 2 * n), sx = __ldg(nb + 2 * n + 1);
        if (py + sy < 0 || py + sy >= H || px + sx < 0 || px + sx >= W) continue;
        acc += wb[n * P + p] * (cur[p + sy * W + sx] - yc);
      }
      nxt[p] = yc + acc;
    }
    __syncthreads();
    acc_t* t = cur;
    cur = nxt;
    nxt = t;
  }
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) out[bk * P + p] = cur[p];
}

}  // namespace

at::Tensor random_walk_forward_cuda(const at::Tensor& cam, const at::Tensor& aff, double beta, int64_t steps) {
  const char* who = "grmseg_C::random_walk_forward (CUDA)";
  const int64_t radius = wsss::check_walk_inputs(cam, aff, beta, steps, c10::DeviceType::CUDA, who);
  const c10::cuda::CUDAGuard device_guard(cam.device());
  if (steps == 0 || cam.numel() == 0) return cam.clone(at::MemoryFormat::Contiguous);
  const auto offs = wsss::affinity_offsets(radius);
  const int64_t B = cam.size(0), K = cam.size(1), H = cam.size(2), W = cam.size(3);
  const int64_t D = static_cast<int64_t>(offs.size()), NN = 2 * D, P = H * W;
  std::vector<int32_t> flat;
  for (const auto& o : offs) {
    flat.push_back(static_cast<int32_t>(o.first));
    flat.push_back(static_cast<int32_t>(o.second));
  }
  for (const auto& o : offs) {
    flat.push_back(static_cast<int32_t>(-o.first));
    flat.push_back(static_cast<int32_t>(-o.second));
  }
  if (flat.empty()) flat = {0, 0};  // radius 1 (no neighbours): a dummy pair, so the table is never empty
  const at::Tensor nb = at::from_blob(flat.data(), {static_cast<int64_t>(flat.size())}, at::kInt).to(cam.device());
  const at::ScalarType acc_type = at::toOpMathType(cam.scalar_type());
  const at::Tensor a = aff.to(acc_type).contiguous();
  at::Tensor wts = at::empty({B, NN, P}, cam.options().dtype(acc_type));
  at::Tensor state = cam.to(acc_type).contiguous();
  at::Tensor result;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES(acc_type, "random_walk_forward_cuda", [&] {
    using acc_t = scalar_t;
    walk_weights_kernel<acc_t><<<grid_for(B * P), kThreads, 0, stream>>>(
        a.const_data_ptr<acc_t>(), nb.const_data_ptr<int32_t>(), wts.mutable_data_ptr<acc_t>(), B, D, H, W,
        static_cast<acc_t>(beta));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const size_t smem = 2 * static_cast<size_t>(P) * sizeof(acc_t);
    if (P <= kFusedMaxPixels && B * K <= std::numeric_limits<int32_t>::max()) {
      result = at::empty_like(state);
      walk_fused_kernel<acc_t><<<static_cast<unsigned>(B * K), kThreads, smem, stream>>>(
          state.const_data_ptr<acc_t>(), result.mutable_data_ptr<acc_t>(), wts.const_data_ptr<acc_t>(),
          nb.const_data_ptr<int32_t>(), K, H, W, NN, steps);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      at::Tensor bufs[2] = {state.data_ptr() == cam.data_ptr() ? state.clone() : state, at::empty_like(state)};
      const unsigned grid = grid_for(B * ((K + kKG - 1) / kKG) * P);
      for (int64_t s = 0; s < steps; ++s) {
        walk_step_kernel<acc_t><<<grid, kThreads, 0, stream>>>(
            bufs[s % 2].const_data_ptr<acc_t>(), bufs[(s + 1) % 2].mutable_data_ptr<acc_t>(),
            wts.const_data_ptr<acc_t>(), nb.const_data_ptr<int32_t>(), B, K, H, W, NN);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      result = bufs[steps % 2];
    }
  });
  return result.to(cam.scalar_type());
}

}  // namespace grmseg

TORCH_LIBRARY_IMPL(grmseg_C, CUDA, m) { m.impl("random_walk_forward", &grmseg::random_walk_forward_cuda); }
