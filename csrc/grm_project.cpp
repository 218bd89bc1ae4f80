// grm_project: shape function and the registration of its kernels per dispatch key.

#include "grm_project.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/grm_project_cpu.h"
#ifdef GRMSEG_WITH_CUDA
#include "cuda/grm_project_cuda.h"
#endif

namespace grmseg {

std::tuple<at::Tensor, at::Tensor> grm_project_forward_meta(const at::Tensor& x, const at::Tensor& w,
                                                             const at::Tensor& b) {
  const char* who = "grmseg_C::grm_project_forward";
  TORCH_CHECK(x.dim() == 3, who, ": x must be [B, C, P], got a tensor of shape ", x.sym_sizes());
  TORCH_CHECK(w.dim() == 2, who, ": w must be [K, C], got a tensor of shape ", w.sym_sizes());
  TORCH_CHECK(b.dim() == 1, who, ": b must be [K], got a tensor of shape ", b.sym_sizes());
  TORCH_CHECK(w.scalar_type() == x.scalar_type() && b.scalar_type() == x.scalar_type(), who,
              ": x, w and b must have the same dtype, got x ", x.scalar_type(), ", w ", w.scalar_type(), ", b ",
              b.scalar_type());
  const auto opts = x.options();
  at::Tensor h = at::empty_symint({x.sym_size(0), w.sym_size(0), x.sym_size(1)}, opts);
  at::Tensor m = at::empty_symint({x.sym_size(0), w.sym_size(0)}, opts);
  return {h, m};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_project_backward_meta(const at::Tensor& gh, const at::Tensor& gm,
                                                                        const at::Tensor& x, const at::Tensor& w,
                                                                        const at::Tensor& b,
                                                                        const std::optional<at::Tensor>& gx_base) {
  const char* who = "grmseg_C::grm_project_backward";
  TORCH_CHECK(x.dim() == 3, who, ": x must be [B, C, P], got a tensor of shape ", x.sym_sizes());
  TORCH_CHECK(w.dim() == 2, who, ": w must be [K, C], got a tensor of shape ", w.sym_sizes());
  TORCH_CHECK(b.dim() == 1, who, ": b must be [K], got a tensor of shape ", b.sym_sizes());
  TORCH_CHECK(gh.dim() == 3, who, ": gh must be [B, K, C], got a tensor of shape ", gh.sym_sizes());
  TORCH_CHECK(gm.dim() == 2, who, ": gm must be [B, K], got a tensor of shape ", gm.sym_sizes());
  TORCH_CHECK(w.scalar_type() == x.scalar_type() && b.scalar_type() == x.scalar_type() &&
                  gh.scalar_type() == x.scalar_type() && gm.scalar_type() == x.scalar_type(),
              who, ": gh, gm, x, w and b must have the same dtype");
  TORCH_CHECK(!gx_base.has_value() || (gx_base->sym_sizes() == x.sym_sizes() && gx_base->scalar_type() == x.scalar_type()),
              who, ": gx_base must have the shape and dtype of x");
  return {at::empty_symint(x.sym_sizes(), x.options()), at::empty_symint(w.sym_sizes(), w.options()),
          at::empty_symint(b.sym_sizes(), b.options())};
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_project_keep_forward_meta(const at::Tensor& x, const at::Tensor& w,
                                                                            const at::Tensor& b) {
  auto [h, m] = grm_project_forward_meta(x, w, b);
  at::Tensor a = at::empty_symint({x.sym_size(0), w.sym_size(0), x.sym_size(2)},
                                  x.options().dtype(accumulation_dtype(x.scalar_type())));
  return {h, m, a};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_project_backward_kept_meta(const at::Tensor& gh,
                                                                             const at::Tensor& gm, const at::Tensor& x,
                                                                             const at::Tensor& a, const at::Tensor& w,
                                                                             const at::Tensor& b,
                                                                             const std::optional<at::Tensor>& gx_base) {
  check_assignment_meta(a, x, "grmseg_C::grm_project_backward_kept");
  return grm_project_backward_meta(gh, gm, x, w, b, gx_base);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_project_backward_kept_joint_meta(
    const at::Tensor& gh, const at::Tensor& gm, const at::Tensor& x, const at::Tensor& a, const at::Tensor& w,
    const at::Tensor& b, const at::Tensor& gy, const at::Tensor& ge, const at::Tensor& q) {
  const char* who = "grmseg_C::grm_project_backward_kept_joint";
  check_assignment_meta(a, x, who);
  check_assignment_meta(ge, x, who);
  TORCH_CHECK(q.sym_sizes() == gh.sym_sizes() && q.scalar_type() == x.scalar_type(), who,
              ": q must have the shape of gh and the dtype of x");
  return grm_project_backward_meta(gh, gm, x, w, b, gy);
}

}  // namespace
}  // namespace grmseg

TORCH_LIBRARY_IMPL(grmseg_C, Meta, m) {
  m.impl("grm_project_forward", &grmseg::grm_project_forward_meta);
  m.impl("grm_project_backward", &grmseg::grm_project_backward_meta);
  m.impl("grm_project_keep_forward", &grmseg::grm_project_keep_forward_meta);
  m.impl("grm_project_backward_kept", &grmseg::grm_project_backward_kept_meta);
  m.impl("grm_project_backward_kept_joint", &grmseg::grm_project_backward_kept_joint_meta);
}

TORCH_LIBRARY_IMPL(grmseg_C, CPU, m) {
  m.impl("grm_project_forward", &grmseg::grm_project_forward_cpu);
  m.impl("grm_project_backward", &grmseg::grm_project_backward_cpu);
  m.impl("grm_project_keep_forward", &grmseg::grm_project_keep_forward_cpu);
  m.impl("grm_project_backward_kept", &grmseg::grm_project_backward_kept_cpu);
  m.impl("grm_project_backward_kept_joint", &grmseg::grm_project_backward_kept_joint_cpu);
}

#ifdef GRMSEG_WITH_CUDA
TORCH_LIBRARY_IMPL(grmseg_C, CUDA, m) {
  m.impl("grm_project_forward", &grmseg::grm_project_forward_cuda);
  m.impl("grm_project_backward", &grmseg::grm_project_backward_cuda);
}
#endif
