#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace grmseg {

// CUDA kernel of grm_project_forward: one block per (batch, pixel chunk) accumulates fp32 partials without
// atomics, a second kernel sums the chunks in a fixed order (deterministic).
std::tuple<at::Tensor, at::Tensor> grm_project_forward_cuda(const at::Tensor& x, const at::Tensor& w,
                                                             const at::Tensor& b);

}  // namespace grmseg
