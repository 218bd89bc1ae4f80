// grm_reproject: shape functions and the registration of its kernels per dispatch key.

#include "grm_reproject.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/grm_project_cpu.h"
#include "grm_project.h"
#ifdef GRMSEG_WITH_CUDA
#include "cuda/grm_project_cuda.h"
#endif

namespace grmseg {
namespace {

void check_reproject_meta(const at::Tensor& x, const at::Tensor& q, const at::Tensor& v, const char* who) {
  TORCH_CHECK(x.dim() == 3, who, ": x must be [B, C, P], got a tensor of shape ", x.sym_sizes());
  TORCH_CHECK(q.dim() == 3, who, ": q must be [B, K, C], got a tensor of shape ", q.sym_sizes());
  TORCH_CHECK(v.dim() == 3, who, ": v must be [B, K, C], got a tensor of shape ", v.sym_sizes());
  TORCH_CHECK(q.scalar_type() == x.scalar_type() && v.scalar_type() == x.scalar_type(), who,
              ": x, q and v must have the same dtype, got x ", x.scalar_type(), ", q ", q.scalar_type(), ", v ",
              v.scalar_type());
}

at::Tensor grm_reproject_forward_meta(const at::Tensor& x, const at::Tensor& q, const at::Tensor& v) {
  check_reproject_meta(x, q, v, "grmseg_C::grm_reproject_forward");
  return at::empty_symint(x.sym_sizes(), x.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_reproject_backward_meta(const at::Tensor& gy, const at::Tensor& x,
                                                                          const at::Tensor& q, const at::Tensor& v) {
  const char* who = "grmseg_C::grm_reproject_backward";
  check_reproject_meta(x, q, v, who);
  TORCH_CHECK(gy.dim() == 3 && gy.scalar_type() == x.scalar_type(), who,
              ": gy must be [B, C, P] with the dtype of x, got ", gy.scalar_type(), " of shape ", gy.sym_sizes());
  return {at::empty_symint(x.sym_sizes(), x.options()), at::empty_symint(q.sym_sizes(), q.options()),
          at::empty_symint(v.sym_sizes(), v.options())};
}

std::tuple<at::Tensor, at::Tensor> grm_reproject_keep_forward_meta(const at::Tensor& x, const at::Tensor& q,
                                                                   const at::Tensor& v) {
  check_reproject_meta(x, q, v, "grmseg_C::grm_reproject_keep_forward");
  return {at::empty_symint(x.sym_sizes(), x.options()),
          at::empty_symint({x.sym_size(0), q.sym_size(1), x.sym_size(2)},
                           x.options().dtype(accumulation_dtype(x.scalar_type())))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_reproject_backward_kept_meta(const at::Tensor& gy,
                                                                               const at::Tensor& x,
                                                                               const at::Tensor& a,
                                                                               const at::Tensor& q,
                                                                               const at::Tensor& v) {
  check_assignment_meta(a, x, "grmseg_C::grm_reproject_backward_kept");
  return grm_reproject_backward_meta(gy, x, q, v);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_reproject_backward_kept_joint_meta(const at::Tensor& gy,
                                                                                     const at::Tensor& x,
                                                                                     const at::Tensor& a,
                                                                                     const at::Tensor& q,
                                                                                     const at::Tensor& v) {
  check_assignment_meta(a, x, "grmseg_C::grm_reproject_backward_kept_joint");
  auto [gx, gq, gv] = grm_reproject_backward_meta(gy, x, q, v);
  return {at::empty_symint(a.sym_sizes(), a.options()), gq, gv};
}

}  // namespace
}  // namespace grmseg

TORCH_LIBRARY_IMPL(grmseg_C, Meta, m) {
  m.impl("grm_reproject_forward", &grmseg::grm_reproject_forward_meta);
  m.impl("grm_reproject_backward", &grmseg::grm_reproject_backward_meta);
  m.impl("grm_reproject_keep_forward", &grmseg::grm_reproject_keep_forward_meta);
  m.impl("grm_reproject_backward_kept", &grmseg::grm_reproject_backward_kept_meta);
  m.impl("grm_reproject_backward_kept_joint", &grmseg::grm_reproject_backward_kept_joint_meta);
}

TORCH_LIBRARY_IMPL(grmseg_C, CPU, m) {
  m.impl("grm_reproject_forward", &grmseg::grm_reproject_forward_cpu);
  m.impl("grm_reproject_backward", &grmseg::grm_reproject_backward_cpu);
  m.impl("grm_reproject_keep_forward", &grmseg::grm_reproject_keep_forward_cpu);
  m.impl("grm_reproject_backward_kept", &grmseg::grm_reproject_backward_kept_cpu);
  m.impl("grm_reproject_backward_kept_joint", &grmseg::grm_reproject_backward_kept_joint_cpu);
}

#ifdef GRMSEG_WITH_CUDA
TORCH_LIBRARY_IMPL(grmseg_C, CUDA, m) {
  m.impl("grm_reproject_forward", &grmseg::grm_reproject_forward_cuda);
  m.impl("grm_reproject_backward", &grmseg::grm_reproject_backward_cuda);
}
#endif
