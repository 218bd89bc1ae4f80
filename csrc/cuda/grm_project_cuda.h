#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace grmseg {

// CUDA kernel of grm_project_forward: one block per (batch, pixel chunk) accumulates fp32 partials without
// atomics, a second kernel sums the chunks in a fixed order (deterministic).
std::tuple<at::Tensor, at::Tensor> grm_project_forward_cuda(const at::Tensor& x, const at::Tensor& w,
                                                             const at::Tensor& b);

// The other GRM kernels on CUDA (grm_fused_cuda.cu): same blocks, partials and fixed-order reductions.
std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_project_backward_cuda(const at::Tensor& gh, const at::Tensor& gm,
                                                                        const at::Tensor& x, const at::Tensor& w,
                                                                        const at::Tensor& b,
    const std::optional<at::Tensor>& gx_base);
at::Tensor grm_reproject_forward_cuda(const at::Tensor& x, const at::Tensor& q, const at::Tensor& v);
std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_reproject_backward_cuda(const at::Tensor& gy, const at::Tensor& x,
                                                                          const at::Tensor& q, const at::Tensor& v);

}  // namespace grmseg
