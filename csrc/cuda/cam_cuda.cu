// cam_forward on CUDA and its registration.
//
//   feat [B, C, h, w], weight [K, C], labels [B, K] or none  ->  cam [B, K, h, w]
//   cam[b, k] = relu(weight feat[b])[k] / (spatial max + 1e-5), zero for the classes absent from labels.
//
// Kernel 1 (cam_project_kernel): one block per (batch, pixel tile, class group). Channel chunks of feat and
// weight are staged in shared memory (feat's loads coalesced along its smaller stride: pixels for NCHW,
// channels for channels-last; rows padded to an odd length, so column walks are free of bank conflicts); each
// thread owns (class, pixel) scores in shared memory, then the block applies the ReLU, writes the scores
// (accumulation type) and its per-class tile maximum to its own slot of a [B, tiles, K] buffer (no atomics).
// Kernel 2 (cam_scale_kernel): one thread per (batch, class) reduces the tile maxima in a fixed order and writes
// max + 1e-5, or 0 for an absent class.
// Kernel 3 (cam_normalise_kernel): elementwise division and cast to the input dtype. Deterministic.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>

#include "wsss.h"

namespace grmseg {
namespace {

constexpr int kThreads = 256;
constexpr int kCC = 32;      // channels staged per chunk
constexpr int kKG = 64;      // classes per block (a class group)
constexpr double kCamEps = 1e-5;

template <typename acc_t>
constexpr int tile_pixels() {
  return sizeof(acc_t) == 4 ? 64 : 32;  // keeps the shared memory under 48 KiB for fp32 and fp64
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    cam_project_kernel(const scalar_t* __restrict__ feat, int64_t sb, int64_t sc, int64_t sh, int64_t sw,
                       const acc_t* __restrict__ w, acc_t* __restrict__ raw, acc_t* __restrict__ pmax, int64_t C,
                       int64_t W, int64_t P, int K, int64_t ntiles, int nkg) {
  constexpr int T = tile_pixels<acc_t>();
  constexpr int LD = T + 1;  // padded row stride of s and xs
  __shared__ acc_t s[kKG * LD];
  __shared__ acc_t xs[kCC * LD];
  __shared__ acc_t ws[kKG * kCC];
  __shared__ int64_t poff[T];

  const int64_t block = blockIdx.x;
  const int kg = static_cast<int>(block % nkg);
  const int64_t pt = (block / nkg) % ntiles;
  const int64_t bi = block / nkg / ntiles;
  const int k0 = kg * kKG;
  const int nk = K - k0 < kKG ? K - k0 : kKG;
  const int64_t p0 = pt * T;
  const int np = static_cast<int>(P - p0 < T ? P - p0 : T);
  const scalar_t* fb = feat + bi * sb;

  for (int p = threadIdx.x; p < T; p += blockDim.x) {
    const int64_t pp = p0 + (p < np ? p : 0);
    poff[p] = (pp / W) * sh + (pp % W) * sw;
  }
  for (int i = threadIdx.x; i < kKG * LD; i += blockDim.x) s[i] = acc_t(0);
  const bool pixels_fastest = (sw < 0 ? -sw : sw) <= (sc < 0 ? -sc : sc);

  for (int64_t c0 = 0; c0 < C; c0 += kCC) {
    const int nc = static_cast<int>(C - c0 < kCC ? C - c0 : kCC);
    __syncthreads();  // xs, ws free; poff and s initialised
    for (int i = threadIdx.x; i < kCC * T; i += blockDim.x) {
      const int cc = pixels_fastest ? i / T : i % kCC;
      const int p = pixels_fastest ? i % T : i / kCC;
      xs[cc * LD + p] = (cc < nc && p < np) ? static_cast<acc_t>(fb[(c0 + cc) * sc + poff[p]]) : acc_t(0);
    }
    for (int i = threadIdx.x; i < kKG * kCC; i += blockDim.x) {
      const int k = i / kCC, cc = i % kCC;
      ws[i] = (k < nk && cc < nc) ? w[static_cast<int64_t>(k0 + k) * C + c0 + cc] : acc_t(0);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < nk * T; i += blockDim.x) {
      const int k = i / T, p = i % T;
      acc_t acc = s[k * LD + p];
#pragma unroll 8
      for (int cc = 0; cc < kCC; ++cc) acc += ws[k * kCC + cc] * xs[cc * LD + p];
      s[k * LD + p] = acc;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < nk * T; i += blockDim.x) {
    const int k = i / T, p = i % T;
    const acc_t v = p < np ? wsss::nan_relu(s[k * LD + p]) : acc_t(0);
    s[k * LD + p] = v;
    if (p < np) raw[(bi * K + k0 + k) * P + p0 + p] = v;
  }
  __syncthreads();
  for (int k = threadIdx.x; k < nk; k += blockDim.x) {  // one owner per class; LD is odd: no bank conflicts
    acc_t m = acc_t(0);
    for (int p = 0; p < np; ++p) m = wsss::nan_max(m, s[k * LD + p]);
    pmax[(bi * ntiles + pt) * K + k0 + k] = m;
  }
}

template <typename acc_t>
__global__ void cam_scale_kernel(const acc_t* __restrict__ pmax, const uint8_t* __restrict__ keep,
                                 acc_t* __restrict__ denom, int64_t B, int64_t K, int64_t ntiles) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= B * K) return;
  const int64_t bi = i / K, k = i % K;
  acc_t m = acc_t(0);
  for (int64_t t = 0; t < ntiles; ++t) {
    const acc_t v = pmax[(bi * ntiles + t) * K + k];
    m = wsss::nan_max(m, v);
  }
  denom[i] = (keep == nullptr || keep[i] != 0) ? m + static_cast<acc_t>(kCamEps) : acc_t(0);  // 0: absent
}

template <typename scalar_t, typename acc_t>
__global__ void cam_normalise_kernel(const acc_t* __restrict__ raw, const acc_t* __restrict__ denom,
                                     scalar_t* __restrict__ out, int64_t total, int64_t P) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc_t dn = denom[i / P];
    out[i] = static_cast<scalar_t>(dn != acc_t(0) ? raw[i] / dn : acc_t(0));  // NaN dn: NaN, as the reference
  }
}

}  // namespace

at::Tensor cam_forward_cuda(const at::Tensor& feat, const at::Tensor& weight, const std::optional<at::Tensor>& labels) {
  const char* who = "grmseg_C::cam_forward (CUDA)";
  wsss::check_cam_inputs(feat, weight, labels, c10::DeviceType::CUDA, who);
  const c10::cuda::CUDAGuard device_guard(feat.device());
  const int64_t B = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3), K = weight.size(0);
  const int64_t P = H * W;
  at::Tensor out = at::empty({B, K, H, W}, feat.options());
  if (out.numel() == 0) return out;
  if (C == 0) return out.zero_();
  const at::ScalarType acc_type = at::toOpMathType(feat.scalar_type());
  const at::Tensor w_acc = weight.to(acc_type).contiguous();
  at::Tensor raw = at::empty({B, K, H, W}, feat.options().dtype(acc_type));
  at::Tensor denom = at::empty({B, K}, feat.options().dtype(acc_type));
  at::Tensor keep;
  if (labels.has_value()) keep = labels->ne(0).to(at::kByte).contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "cam_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int T = tile_pixels<acc_t>();
    const int64_t ntiles = (P + T - 1) / T;
    const int nkg = static_cast<int>((K + kKG - 1) / kKG);
    at::Tensor pmax = at::empty({B, ntiles, K}, feat.options().dtype(acc_type));
    const int64_t blocks = B * ntiles * nkg;
    TORCH_CHECK(blocks <= static_cast<int64_t>(std::numeric_limits<int32_t>::max()), who, ": too many pixels");
    cam_project_kernel<scalar_t, acc_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        feat.const_data_ptr<scalar_t>(), feat.stride(0), feat.stride(1), feat.stride(2), feat.stride(3),
        w_acc.const_data_ptr<acc_t>(), raw.mutable_data_ptr<acc_t>(), pmax.mutable_data_ptr<acc_t>(), C, W, P,
        static_cast<int>(K), ntiles, nkg);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t bk = B * K;
    cam_scale_kernel<acc_t><<<static_cast<unsigned>((bk + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
        pmax.const_data_ptr<acc_t>(), keep.defined() ? keep.const_data_ptr<uint8_t>() : nullptr,
        denom.mutable_data_ptr<acc_t>(), B, K, ntiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t total = out.numel();
    const int64_t grid = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535);
    cam_normalise_kernel<scalar_t, acc_t><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(
        raw.const_data_ptr<acc_t>(), denom.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), total, P);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace grmseg

TORCH_LIBRARY_IMPL(grmseg_C, CUDA, m) { m.impl("cam_forward", &grmseg::cam_forward_cuda); }
