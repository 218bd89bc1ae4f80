// grm_reproject: node -> pixel mapping with the residual fused (see DESIGN.md).
//   x [B, C, P], q [B, K, C], v [B, K, C]  ->  y [B, C, P] = x + v^T softmax_K(q x)
// Shared by the CPU (.cpp) and CUDA (.cu) sources: ATen core headers only.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <tuple>

namespace grmseg {

// Validates the inputs of grm_reproject_* for the kernels of one device type (any strides).
inline void check_reproject_inputs(const at::Tensor& x, const at::Tensor& q, const at::Tensor& v,
                                   c10::DeviceType device_type, const char* who) {
  TORCH_CHECK(x.dim() == 3, who, ": x must be [B, C, P], got a tensor of shape ", x.sizes());
  TORCH_CHECK(q.dim() == 3, who, ": q must be [B, K, C], got a tensor of shape ", q.sizes());
  TORCH_CHECK(q.size(0) == x.size(0) && q.size(2) == x.size(1), who, ": q must be [B, K, C] with B = ", x.size(0),
              ", C = ", x.size(1), " (from x), got q of shape ", q.sizes());
  TORCH_CHECK(v.sizes() == q.sizes(), who, ": v must have the shape of q ", q.sizes(), ", got ", v.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, who,
              ": x must be float16, bfloat16, float32 or float64, got ", dt);
  TORCH_CHECK(q.scalar_type() == dt && v.scalar_type() == dt, who,
              ": x, q and v must have the same dtype, got x ", dt, ", q ", q.scalar_type(), ", v ", v.scalar_type());
  TORCH_CHECK(x.device().type() == device_type, who, ": x must be a ", c10::DeviceTypeName(device_type),
              " tensor, got one on ", x.device());
  TORCH_CHECK(q.device() == x.device() && v.device() == x.device(), who,
              ": x, q and v must be on the same device, got x on ", x.device(), ", q on ", q.device(), ", v on ",
              v.device());
}

inline void check_reproject_grad(const at::Tensor& gy, const at::Tensor& x, const char* who) {
  TORCH_CHECK(gy.sizes() == x.sizes(), who, ": gy must have the shape of x ", x.sizes(), ", got ", gy.sizes());
  TORCH_CHECK(gy.scalar_type() == x.scalar_type(), who, ": gy must have the dtype of x (", x.scalar_type(),
              "), got ", gy.scalar_type());
  TORCH_CHECK(gy.device() == x.device(), who, ": gy must be on the device of x (", x.device(), "), got ",
              gy.device());
}

}  // namespace grmseg
