// local_affinity_forward (PSA) and boundary_affinity_forward (IRN) on CUDA and their registrations.
//
//   local:    feat [B, C, h, w]     -> aff [B, D, h, w],  aff[d, p] = exp(-mean_c |f(p) - f(p + o_d)|)
//   boundary: boundary [B, 1, h, w] -> aff [B, D, h, w],  aff[d, p] = 1 - max of the boundary on the path p -> p + o_d
//   0 where p + o_d leaves the map; offsets and paths (IRN's: every pixel of the offset's box within distance 1
//   of the segment) as grmseg.reference (csrc/wsss.h), copied to the device as small int32 tables.
//
// One thread per output element (grid-stride), pixels fastest, so the loads of f(p) and f(p + o_d) (any strides)
// are coalesced along x and the neighbour rows are shared through L1 by the threads of the other offsets.
// Accumulation in fp32 (fp64 for fp64).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "wsss.h"

namespace grmseg {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

__device__ __forceinline__ float exp_acc(float v) { return expf(v); }
__device__ __forceinline__ double exp_acc(double v) { return exp(v); }

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    local_affinity_kernel(const scalar_t* __restrict__ f, int64_t sb, int64_t sc, int64_t sh, int64_t sw,
                          const int32_t* __restrict__ offs, scalar_t* __restrict__ out, int64_t B, int64_t C,
                          int64_t H, int64_t W, int64_t D) {
  const int64_t P = H * W, total = B * D * P;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = i % P, d = (i / P) % D, bi = i / P / D;
    const int64_t y = p / W, x = p % W;
    const int64_t qy = y + offs[2 * d], qx = x + offs[2 * d + 1];
    acc_t r = acc_t(0);
    if (qy >= 0 && qy < H && qx >= 0 && qx < W) {
      const scalar_t* fp = f + bi * sb + y * sh + x * sw;
      const scalar_t* fq = f + bi * sb + qy * sh + qx * sw;
      acc_t acc = acc_t(0);
      for (int64_t c = 0; c < C; ++c) {
        const acc_t diff = static_cast<acc_t>(fp[c * sc]) - static_cast<acc_t>(fq[c * sc]);
        acc += diff < acc_t(0) ? -diff : diff;
      }
      r = exp_acc(-(acc / static_cast<acc_t>(C)));
    }
    out[i] = static_cast<scalar_t>(r);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    boundary_affinity_kernel(const scalar_t* __restrict__ bd, int64_t sb, int64_t sh, int64_t sw,
                             const int32_t* __restrict__ offs, const int32_t* __restrict__ paths, int L,
                             scalar_t* __restrict__ out, int64_t B, int64_t H, int64_t W, int64_t D) {
  const int64_t P = H * W, total = B * D * P;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = i % P, d = (i / P) % D, bi = i / P / D;
    const int64_t y = p / W, x = p % W;
    const int64_t qy = y + offs[2 * d], qx = x + offs[2 * d + 1];
    acc_t r = acc_t(0);
    // Every path point lies in the box of p and p + o_d, so all are inside the map when p + o_d is.
    if (qy >= 0 && qy < H && qx >= 0 && qx < W) {
      const scalar_t* b = bd + bi * sb;
      const int32_t* path = paths + d * L * 2;  // L points (the shorter paths padded by repeating a point)
      acc_t m = static_cast<acc_t>(b[(y + path[0]) * sh + (x + path[1]) * sw]);
      for (int j = 1; j < L; ++j) {
        const acc_t v = static_cast<acc_t>(b[(y + path[2 * j]) * sh + (x + path[2 * j + 1]) * sw]);
        m = wsss::nan_max(m, v);
      }
      r = acc_t(1) - m;
    }
    out[i] = static_cast<scalar_t>(r);
  }
}

inline unsigned grid_for(int64_t total) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks)));
}

}  // namespace

at::Tensor local_affinity_forward_cuda(const at::Tensor& feat, int64_t radius) {
  const char* who = "grmseg_C::local_affinity_forward (CUDA)";
  TORCH_CHECK(feat.dim() == 4, who, ": feat must be [B, C, h, w], got a tensor of shape ", feat.sizes());
  wsss::check_float(feat, "feat", who);
  wsss::check_device(feat, "feat", c10::DeviceType::CUDA, who);
  wsss::check_radius(radius, who);
  const c10::cuda::CUDAGuard device_guard(feat.device());
  const auto offs = wsss::affinity_offsets(radius);
  const int64_t B = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  const int64_t D = static_cast<int64_t>(offs.size());
  at::Tensor out = at::empty({B, D, H, W}, feat.options());
  if (out.numel() == 0) return out;
  if (C == 0) return out.zero_();
  std::vector<int32_t> flat;
  for (const auto& o : offs) {
    flat.push_back(static_cast<int32_t>(o.first));
    flat.push_back(static_cast<int32_t>(o.second));
  }
  const at::Tensor table =
      at::from_blob(flat.data(), {static_cast<int64_t>(flat.size())}, at::kInt).to(feat.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "local_affinity_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    local_affinity_kernel<scalar_t, acc_t><<<grid_for(out.numel()), kThreads, 0, stream>>>(
        feat.const_data_ptr<scalar_t>(), feat.stride(0), feat.stride(1), feat.stride(2), feat.stride(3),
        table.const_data_ptr<int32_t>(), out.mutable_data_ptr<scalar_t>(), B, C, H, W, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor boundary_affinity_forward_cuda(const at::Tensor& boundary, int64_t radius) {
  const char* who = "grmseg_C::boundary_affinity_forward (CUDA)";
  TORCH_CHECK(boundary.dim() == 4 && boundary.size(1) == 1, who,
              ": boundary must be [B, 1, h, w], got a tensor of shape ", boundary.sizes());
  wsss::check_float(boundary, "boundary", who);
  wsss::check_device(boundary, "boundary", c10::DeviceType::CUDA, who);
  wsss::check_radius(radius, who);
  const c10::cuda::CUDAGuard device_guard(boundary.device());
  const auto offs = wsss::affinity_offsets(radius);
  const int64_t B = boundary.size(0), H = boundary.size(2), W = boundary.size(3);
  const int64_t D = static_cast<int64_t>(offs.size());
  at::Tensor out = at::empty({B, D, H, W}, boundary.options());
  if (out.numel() == 0) return out;
  const int L = static_cast<int>(wsss::max_path_length(radius));  // IRN paths: up to ~2 radius points
  std::vector<int32_t> flat, flat_offs;
  for (const auto& o : offs) {
    flat_offs.push_back(static_cast<int32_t>(o.first));
    flat_offs.push_back(static_cast<int32_t>(o.second));
    auto pts = wsss::path_offsets(o.first, o.second);
    while (static_cast<int>(pts.size()) < L) pts.push_back(pts.back());  // a repeated point: harmless for a max
    for (const auto& pt : pts) {
      flat.push_back(static_cast<int32_t>(pt.first));
      flat.push_back(static_cast<int32_t>(pt.second));
    }
  }
  const at::Tensor table =
      at::from_blob(flat.data(), {static_cast<int64_t>(flat.size())}, at::kInt).to(boundary.device());
  const at::Tensor offs_table =
      at::from_blob(flat_offs.data(), {static_cast<int64_t>(flat_offs.size())}, at::kInt).to(boundary.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boundary.scalar_type(), "boundary_affinity_forward_cuda",
                                  [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    boundary_affinity_kernel<scalar_t, acc_t>
                                        <<<grid_for(out.numel()), kThreads, 0, stream>>>(
                                            boundary.const_data_ptr<scalar_t>(), boundary.stride(0),
                                            boundary.stride(2), boundary.stride(3),
                                            offs_table.const_data_ptr<int32_t>(), table.const_data_ptr<int32_t>(),
                                            L, out.mutable_data_ptr<scalar_t>(), B, H, W, D);
                                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                                  });
  return out;
}

}  // namespace grmseg

TORCH_LIBRARY_IMPL(grmseg_C, CUDA, m) {
  m.impl("local_affinity_forward", &grmseg::local_affinity_forward_cuda);
  m.impl("boundary_affinity_forward", &grmseg::boundary_affinity_forward_cuda);
}
