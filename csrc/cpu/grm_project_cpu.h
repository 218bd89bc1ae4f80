#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace grmseg {

// The GRM kernels on the CPU (csrc/cpu/grm_cpu.cpp; the per-tile work in csrc/cpu/kernels/grm_kernel.cpp):
// fused per pixel tile, fp32 accumulation for half inputs (fp64 for fp64), parallel over (batch, pixel chunk)
// tasks with deterministic reductions (bitwise independent of the thread count).
std::tuple<at::Tensor, at::Tensor> grm_project_forward_cpu(const at::Tensor& x, const at::Tensor& w,
                                                            const at::Tensor& b);
std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_project_backward_cpu(const at::Tensor& gh, const at::Tensor& gm,
                                                                       const at::Tensor& x, const at::Tensor& w,
                                                                       const at::Tensor& b,
    const std::optional<at::Tensor>& gx_base);
// The *_keep forwards also return the assignment A [B, K, P] (accumulation dtype) that the *_kept backwards read
// instead of recomputing it.
std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_project_keep_forward_cpu(const at::Tensor& x, const at::Tensor& w,
                                                                           const at::Tensor& b);
std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_project_backward_kept_cpu(const at::Tensor& gh,
                                                                            const at::Tensor& gm, const at::Tensor& x,
                                                                            const at::Tensor& a, const at::Tensor& w,
                                                                            const at::Tensor& b,
                                                                            const std::optional<at::Tensor>& gx_base);
std::tuple<at::Tensor, at::Tensor> grm_reproject_keep_forward_cpu(const at::Tensor& x, const at::Tensor& q,
                                                                  const at::Tensor& v);
std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_reproject_backward_kept_cpu(const at::Tensor& gy,
                                                                              const at::Tensor& x, const at::Tensor& a,
                                                                              const at::Tensor& q,
                                                                              const at::Tensor& v);
// The joint pair for a grm_project and a grm_reproject of the same x (grmseg.GRM; see csrc/cpu/kernels/grm_kernel.cpp):
// the reprojection's backward returns GE [B, K, P] (accumulation dtype, the gradient of its logits q x) in place of
// gx, and the projection's takes gy, GE and q and returns the whole gx = gy + q^T GE + its own.
std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_reproject_backward_kept_joint_cpu(const at::Tensor& gy,
                                                                                    const at::Tensor& x,
                                                                                    const at::Tensor& a,
                                                                                    const at::Tensor& q,
                                                                                    const at::Tensor& v);
std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_project_backward_kept_joint_cpu(
    const at::Tensor& gh, const at::Tensor& gm, const at::Tensor& x, const at::Tensor& a, const at::Tensor& w,
    const at::Tensor& b, const at::Tensor& gy, const at::Tensor& ge, const at::Tensor& q);
at::Tensor grm_reproject_forward_cpu(const at::Tensor& x, const at::Tensor& q, const at::Tensor& v);
std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_reproject_backward_cpu(const at::Tensor& gy, const at::Tensor& x,
                                                                         const at::Tensor& q, const at::Tensor& v);

}  // namespace grmseg
