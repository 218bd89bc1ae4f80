// grm_project: pixel -> node voting (see DESIGN.md).
//   x [B, C, P], w [K, C], b [K]  ->  h [B, K, C], m [B, K]
//   s = w x + b;  a = softmax_K(s);  h[k, c] = sum_p a[k, p] x[c, p];  m[k] = sum_p a[k, p]
// Shared by the CPU (.cpp) and CUDA (.cu) sources: ATen core headers only, so nvcc stays fast.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <tuple>

namespace grmseg {

// Validates the inputs of grm_project_forward for the kernels of one device type; a failure raises
// c10::Error, which Python sees as RuntimeError. Any strides are accepted.
inline void check_project_inputs(
    const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, c10::DeviceType device_type, const char* who) {
  TORCH_CHECK(x.dim() == 3, who, ": x must be [B, C, P], got a tensor of shape ", x.sizes());
  TORCH_CHECK(w.dim() == 2, who, ": w must be [K, C], got a tensor of shape ", w.sizes());
  TORCH_CHECK(b.dim() == 1, who, ": b must be [K], got a tensor of shape ", b.sizes());
  TORCH_CHECK(w.size(1) == x.size(1), who, ": w must be [K, C] with C = x.size(1) = ", x.size(1),
              ", got w of shape ", w.sizes());
  TORCH_CHECK(b.size(0) == w.size(0), who, ": b must be [K] with K = w.size(0) = ", w.size(0),
              ", got b of shape ", b.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, who,
              ": x must be float16, bfloat16, float32 or float64, got ", dt);
  TORCH_CHECK(w.scalar_type() == dt && b.scalar_type() == dt, who,
              ": x, w and b must have the same dtype, got x ", dt, ", w ", w.scalar_type(), ", b ", b.scalar_type());
  TORCH_CHECK(x.device().type() == device_type, who, ": x must be a ", c10::DeviceTypeName(device_type),
              " tensor, got one on ", x.device());
  TORCH_CHECK(w.device() == x.device() && b.device() == x.device(), who,
              ": x, w and b must be on the same device, got x on ", x.device(), ", w on ", w.device(), ", b on ",
              b.device());
}

// Shape function (Meta / fake tensors).
std::tuple<at::Tensor, at::Tensor> grm_project_forward_meta(const at::Tensor& x, const at::Tensor& w,
                                                             const at::Tensor& b);

}  // namespace grmseg

namespace grmseg {

// Validates gh [B, K, C] and gm [B, K] of grm_project_backward against x [B, C, P] and w [K, C].
inline void check_project_grads(const at::Tensor& gh, const at::Tensor& gm, const at::Tensor& x, const at::Tensor& w,
                                const char* who) {
  TORCH_CHECK(gh.dim() == 3 && gh.size(0) == x.size(0) && gh.size(1) == w.size(0) && gh.size(2) == x.size(1), who,
              ": gh must be [B, K, C] = [", x.size(0), ", ", w.size(0), ", ", x.size(1), "], got a tensor of shape ",
              gh.sizes());
  TORCH_CHECK(gm.dim() == 2 && gm.size(0) == x.size(0) && gm.size(1) == w.size(0), who, ": gm must be [B, K] = [",
              x.size(0), ", ", w.size(0), "], got a tensor of shape ", gm.sizes());
  TORCH_CHECK(gh.scalar_type() == x.scalar_type() && gm.scalar_type() == x.scalar_type(), who,
              ": gh and gm must have the dtype of x (", x.scalar_type(), "), got gh ", gh.scalar_type(), ", gm ",
              gm.scalar_type());
  TORCH_CHECK(gh.device() == x.device() && gm.device() == x.device(), who,
              ": gh and gm must be on the device of x (", x.device(), "), got gh on ", gh.device(), ", gm on ",
              gm.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_project_backward_meta(const at::Tensor& gh, const at::Tensor& gm,
                                                                        const at::Tensor& x, const at::Tensor& w,
                                                                        const at::Tensor& b,
                                                                        const std::optional<at::Tensor>& gx_base);

// Validates gx_base of grm_project_backward (optional: the gradient of x to which the kernel adds its own):
// the shape, dtype and device of x, any strides.
inline void check_project_gx_base(const std::optional<at::Tensor>& gx_base, const at::Tensor& x, const char* who) {
  if (!gx_base.has_value()) return;
  TORCH_CHECK(gx_base->sizes() == x.sizes(), who, ": gx_base must have the shape of x ", x.sizes(), ", got ",
              gx_base->sizes());
  TORCH_CHECK(gx_base->scalar_type() == x.scalar_type(), who, ": gx_base must have the dtype of x (",
              x.scalar_type(), "), got ", gx_base->scalar_type());
  TORCH_CHECK(gx_base->device() == x.device(), who, ": gx_base must be on the device of x (", x.device(),
              "), got ", gx_base->device());
}

// The dtype the kernels accumulate in for inputs of dtype dt: float32 for float16 / bfloat16, else dt itself.
inline at::ScalarType accumulation_dtype(at::ScalarType dt) {
  return (dt == at::kHalf || dt == at::kBFloat16) ? at::kFloat : dt;
}

// Validates a kept assignment a [B, K, P] (the *_keep forwards' third output, read by the *_kept backwards):
// the shape of x's batch and pixels with K nodes, the accumulation dtype of x (float32 for float16 / bfloat16
// inputs, else x's own), x's device; any strides.
inline void check_assignment(const at::Tensor& a, const at::Tensor& x, int64_t K, const char* who) {
  TORCH_CHECK(a.dim() == 3 && a.size(0) == x.size(0) && a.size(1) == K && a.size(2) == x.size(2), who,
              ": a must be [B, K, P] = [", x.size(0), ", ", K, ", ", x.size(2), "], got a tensor of shape ",
              a.sizes());
  const auto dt = x.scalar_type();
  const auto acc = accumulation_dtype(dt);
  TORCH_CHECK(a.scalar_type() == acc, who, ": a must have the accumulation dtype of x (", acc, " for ", dt,
              "), got ", a.scalar_type());
  TORCH_CHECK(a.device() == x.device(), who, ": a must be on the device of x (", x.device(), "), got ", a.device());
}

// The part of check_assignment that a shape function can make (symbolic sizes): a [B, K, P] in the accumulation
// dtype of x.
inline void check_assignment_meta(const at::Tensor& a, const at::Tensor& x, const char* who) {
  TORCH_CHECK(a.dim() == 3 && a.scalar_type() == accumulation_dtype(x.scalar_type()), who,
              ": a must be [B, K, P] in the accumulation dtype of x, got ", a.scalar_type(), " of shape ",
              a.sym_sizes());
}

}  // namespace grmseg
