// graph_conv_forward / graph_conv_backward on CUDA and their registration.
//
//   z [B, K, F], adj [K, K], weight [F, D], bias [D] or none  ->  out = act(adj (z weight) + bias) [B, K, D]
//   act: "relu", "leaky_relu" (slope 0.2) or "none".
//   backward: gpre = gout act'(out);  gzw = adj^T gpre;  gz = gzw weight^T;  gweight = sum_b z^T gzw;
//             gadj = sum_b gpre (z weight)^T;  gbias = sum_{b,k} gpre.
//
// The products are cuBLAS GEMMs (through ATen) in the accumulation type (fp32 for fp16/bf16 inputs, as the
// reference); what is not a GEMM is one fused elementwise kernel each way: the bias + activation epilogue (with
// the cast to the input dtype) and the activation gradient (with the bias gradient's operand). K is at most a
// few hundred nodes and F, D a few thousand features, so the GEMMs are small and the layer is a handful of
// launches. The batch sums are GEMMs over the flattened batch (one fixed order: deterministic).

#include "graph_conv.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>

namespace grmseg {
namespace {

constexpr int kThreads = 256;

unsigned int grid_for(int64_t n) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 65535)));
}

// out[i] = act(pre[i] + bias[i % D]) in the output dtype (pre contiguous [B, K, D], accumulation type).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    epilogue_kernel(const acc_t* __restrict__ pre, const acc_t* __restrict__ bias, scalar_t* __restrict__ out,
                    int64_t n, int64_t D, int act) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t v = pre[i] + (bias != nullptr ? bias[i % D] : acc_t(0));
    if (act == 1) {
      v = v > acc_t(0) ? v : acc_t(0);
    } else if (act == 2) {
      v = v > acc_t(0) ? v : v * static_cast<acc_t>(kLeakySlope);
    }
    out[i] = static_cast<scalar_t>(v);
  }
}

// gpre[b, k, d] = gout[b, k, d] act'(out[b, k, d]) in the accumulation type (gout, out: any strides).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    activation_grad_kernel(const scalar_t* __restrict__ gout, int64_t sgb, int64_t sgk, int64_t sgd,
                           const scalar_t* __restrict__ out, int64_t sob, int64_t sok, int64_t sod,
                           acc_t* __restrict__ gpre, int64_t K, int64_t D, int64_t n, int act) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = i % D, k = (i / D) % K, b = i / (D * K);
    acc_t g = static_cast<acc_t>(gout[b * sgb + k * sgk + d * sgd]);
    if (act != 0) {
      const acc_t o = static_cast<acc_t>(out[b * sob + k * sok + d * sod]);
      if (!(o > acc_t(0))) g = act == 1 ? acc_t(0) : g * static_cast<acc_t>(kLeakySlope);
    }
    gpre[i] = g;
  }
}

}  // namespace

at::Tensor graph_conv_forward_cuda(const at::Tensor& z, const at::Tensor& adj, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, c10::string_view activation) {
  const char* who = "grmseg_C::graph_conv_forward (CUDA)";
  check_graph_conv_inputs(z, adj, weight, bias, c10::DeviceType::CUDA, who);
  const int act = static_cast<int>(parse_graph_act(std::string(activation), who));
  const c10::cuda::CUDAGuard device_guard(z.device());
  const int64_t B = z.size(0), K = z.size(1), D = weight.size(1);
  at::Tensor out = at::empty({B, K, D}, z.options());
  if (out.numel() == 0) return out;
  const at::ScalarType acc_type = at::toOpMathType(z.scalar_type());
  // adj (z weight) in the accumulation type; an empty F gives zeros
  const at::Tensor pre = at::matmul(adj.to(acc_type), at::matmul(z.to(acc_type), weight.to(acc_type))).contiguous();
  const at::Tensor b_acc = bias.has_value() ? bias->to(acc_type).contiguous() : at::Tensor();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "graph_conv_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t n = out.numel();
    epilogue_kernel<scalar_t, acc_t><<<grid_for(n), kThreads, 0, stream>>>(
        pre.const_data_ptr<acc_t>(), b_acc.defined() ? b_acc.const_data_ptr<acc_t>() : nullptr,
        out.mutable_data_ptr<scalar_t>(), n, D, act);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> graph_conv_backward_cuda(
    const at::Tensor& gout, const at::Tensor& out, const at::Tensor& z, const at::Tensor& adj,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, c10::string_view activation) {
  const char* who = "grmseg_C::graph_conv_backward (CUDA)";
  check_graph_conv_inputs(z, adj, weight, bias, c10::DeviceType::CUDA, who);
  const int act = static_cast<int>(parse_graph_act(std::string(activation), who));
  const int64_t B = z.size(0), K = z.size(1), F = z.size(2), D = weight.size(1);
  for (const at::Tensor* t : {&gout, &out}) {
    TORCH_CHECK(t->dim() == 3 && t->size(0) == B && t->size(1) == K && t->size(2) == D, who,
                ": gout and out must be [B, K, D] = [", B, ", ", K, ", ", D, "], got a tensor of shape ", t->sizes());
    TORCH_CHECK(t->scalar_type() == z.scalar_type() && t->device() == z.device(), who,
                ": gout and out must have the dtype and device of z, got ", t->scalar_type(), " on ", t->device());
  }
  const c10::cuda::CUDAGuard device_guard(z.device());
  const at::ScalarType acc_type = at::toOpMathType(z.scalar_type());
  const auto acc = z.options().dtype(acc_type);
  at::Tensor gpre = at::empty({B, K, D}, acc);
  if (gpre.numel() > 0) {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "graph_conv_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const int64_t n = gpre.numel();
      activation_grad_kernel<scalar_t, acc_t><<<grid_for(n), kThreads, 0, stream>>>(
          gout.const_data_ptr<scalar_t>(), gout.stride(0), gout.stride(1), gout.stride(2),
          out.const_data_ptr<scalar_t>(), out.stride(0), out.stride(1), out.stride(2),
          gpre.mutable_data_ptr<acc_t>(), K, D, n, act);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  } else {
    gpre.zero_();
  }
  const at::Tensor z_acc = z.to(acc_type), w_acc = weight.to(acc_type), adj_acc = adj.to(acc_type);
  const at::Tensor gzw = at::matmul(adj_acc.t(), gpre);                        // [B, K, D]
  const at::Tensor zw = at::matmul(z_acc, w_acc);                              // [B, K, D]
  const at::Tensor gz = at::matmul(gzw, w_acc.t());                            // [B, K, F]
  const at::Tensor gweight = at::matmul(z_acc.reshape({B * K, F}).t(), gzw.reshape({B * K, D}));  // [F, D]
  // gadj[i, j] = sum_{b, d} gpre[b, i, d] zw[b, j, d]
  const at::Tensor gadj = at::matmul(gpre.permute({1, 0, 2}).reshape({K, B * D}),
                                     zw.permute({1, 0, 2}).reshape({K, B * D}).t());
  at::Tensor gbias = bias.has_value() ? gpre.sum({0, 1}).to(z.scalar_type()) : at::zeros({0}, z.options());
  return {gz.to(z.scalar_type()).contiguous(), gadj.to(z.scalar_type()).contiguous(),
          gweight.to(z.scalar_type()).contiguous(), gbias};
}

}  // namespace grmseg

TORCH_LIBRARY_IMPL(grmseg_C, CUDA, m) {
  m.impl("graph_conv_forward", &grmseg::graph_conv_forward_cuda);
  m.impl("graph_conv_backward", &grmseg::graph_conv_backward_cuda);
}
