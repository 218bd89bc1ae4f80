#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace grmseg {

// CPU kernel of grm_project_forward: fused per pixel tile, fp32 accumulation for half inputs (fp64 for fp64),
// parallel over (batch, pixel chunk) with a deterministic reduction (independent of the thread count).
std::tuple<at::Tensor, at::Tensor> grm_project_forward_cpu(const at::Tensor& x, const at::Tensor& w,
                                                            const at::Tensor& b);

// The other GRM kernels on the CPU (grm_fused_cpu.cpp): same tiling, accumulation and determinism.
std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_project_backward_cpu(const at::Tensor& gh, const at::Tensor& gm,
                                                                       const at::Tensor& x, const at::Tensor& w,
                                                                       const at::Tensor& b);
at::Tensor grm_reproject_forward_cpu(const at::Tensor& x, const at::Tensor& q, const at::Tensor& v);
std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_reproject_backward_cpu(const at::Tensor& gy, const at::Tensor& x,
                                                                         const at::Tensor& q, const at::Tensor& v);

}  // namespace grmseg
