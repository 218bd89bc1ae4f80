// grmseg's operators for C++ users of libtorch: typed calls through the dispatcher of the operators that
// libgrmseg_ops registers as grmseg_C::* (schemas in csrc/grmseg.cpp; the math in grmseg's DESIGN.md and
// grmseg/reference.py). Link grmseg::grmseg_ops (find_package(grmseg)); a call finds its operator once and
// dispatches on the tensors' device (CPU, or CUDA when the library was built with its CUDA kernels).
//
// Shapes (B batch, C channels, P = H*W pixels, K classes / nodes, D features, O affinity offsets):
//   grm_project_forward(x [B,C,P], w [K,C], b [K])                        -> (h [B,K,C], m [B,K])
//   grm_project_backward(gh, gm, x, w, b)                                 -> (gx, gw, gb)
//   grm_reproject_forward(x [B,C,P], q [B,K,C], v [B,K,C])                -> y [B,C,P]
//   grm_reproject_backward(gy, x, q, v)                                   -> (gx, gq, gv)
//   graph_conv_forward(z [B,K,D], adj [K,K], weight [D,E], bias?, act)    -> out [B,K,E]
//   graph_conv_backward(gout, out, z, adj, weight, bias?, act)            -> (gz, gadj, gweight, gbias)
//   cam_forward(feat [B,C,H,W], weight [K,C], labels? [B,K])              -> cam [B,K,H,W]
//   local_affinity_forward(feat [B,C,H,W], radius)                        -> aff [B,O,H,W]
//   boundary_affinity_forward(boundary [B,1,H,W], radius)                 -> aff [B,O,H,W]
//   random_walk_forward(cam [B,K,H,W], aff [B,O,H,W], beta, steps)        -> [B,K,H,W]
//   dense_crf_forward(unary [B,K,H,W], image [B,3,H,W], iterations, ...)  -> Q [B,K,H,W]
// The Python API (grmseg.ops) adds argument checks with Python errors, autograd and backend choice on top.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <tuple>

namespace grmseg {
namespace ops {

namespace detail {
// The typed handle of grmseg_C::<name>; throws c10::Error when libgrmseg_ops is not loaded.
template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}
using T = at::Tensor;
using OptT = c10::optional<at::Tensor>;
}  // namespace detail

inline std::tuple<at::Tensor, at::Tensor> grm_project_forward(const at::Tensor& x, const at::Tensor& w,
                                                              const at::Tensor& b) {
  using S = std::tuple<detail::T, detail::T>(const detail::T&, const detail::T&, const detail::T&);
  static const auto h = detail::op<S>("grmseg_C::grm_project_forward");
  return h.call(x, w, b);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_project_backward(const at::Tensor& gh, const at::Tensor& gm,
                                                                           const at::Tensor& x, const at::Tensor& w,
                                                                           const at::Tensor& b) {
  using S = std::tuple<detail::T, detail::T, detail::T>(const detail::T&, const detail::T&, const detail::T&,
                                                        const detail::T&, const detail::T&);
  static const auto h = detail::op<S>("grmseg_C::grm_project_backward");
  return h.call(gh, gm, x, w, b);
}

inline at::Tensor grm_reproject_forward(const at::Tensor& x, const at::Tensor& q, const at::Tensor& v) {
  using S = detail::T(const detail::T&, const detail::T&, const detail::T&);
  static const auto h = detail::op<S>("grmseg_C::grm_reproject_forward");
  return h.call(x, q, v);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_reproject_backward(const at::Tensor& gy, const at::Tensor& x,
                                                                             const at::Tensor& q,
                                                                             const at::Tensor& v) {
  using S = std::tuple<detail::T, detail::T, detail::T>(const detail::T&, const detail::T&, const detail::T&,
                                                        const detail::T&);
  static const auto h = detail::op<S>("grmseg_C::grm_reproject_backward");
  return h.call(gy, x, q, v);
}

// activation: "none", "relu" or "leaky_relu" (as grmseg.ops.graph_conv).
inline at::Tensor graph_conv_forward(const at::Tensor& z, const at::Tensor& adj, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias, c10::string_view activation) {
  using S = detail::T(const detail::T&, const detail::T&, const detail::T&, const detail::OptT&, c10::string_view);
  static const auto h = detail::op<S>("grmseg_C::graph_conv_forward");
  return h.call(z, adj, weight, bias, activation);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> graph_conv_backward(
    const at::Tensor& gout, const at::Tensor& out, const at::Tensor& z, const at::Tensor& adj,
    const at::Tensor& weight, const c10::optional<at::Tensor>& bias, c10::string_view activation) {
  using S = std::tuple<detail::T, detail::T, detail::T, detail::T>(const detail::T&, const detail::T&,
                                                                   const detail::T&, const detail::T&,
                                                                   const detail::T&, const detail::OptT&,
                                                                   c10::string_view);
  static const auto h = detail::op<S>("grmseg_C::graph_conv_backward");
  return h.call(gout, out, z, adj, weight, bias, activation);
}

inline at::Tensor cam_forward(const at::Tensor& feat, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& labels = c10::nullopt) {
  using S = detail::T(const detail::T&, const detail::T&, const detail::OptT&);
  static const auto h = detail::op<S>("grmseg_C::cam_forward");
  return h.call(feat, weight, labels);
}

inline at::Tensor local_affinity_forward(const at::Tensor& feat, int64_t radius) {
  using S = detail::T(const detail::T&, int64_t);
  static const auto h = detail::op<S>("grmseg_C::local_affinity_forward");
  return h.call(feat, radius);
}

inline at::Tensor boundary_affinity_forward(const at::Tensor& boundary, int64_t radius) {
  using S = detail::T(const detail::T&, int64_t);
  static const auto h = detail::op<S>("grmseg_C::boundary_affinity_forward");
  return h.call(boundary, radius);
}

inline at::Tensor random_walk_forward(const at::Tensor& cam, const at::Tensor& aff, double beta, int64_t steps) {
  using S = detail::T(const detail::T&, const detail::T&, double, int64_t);
  static const auto h = detail::op<S>("grmseg_C::random_walk_forward");
  return h.call(cam, aff, beta, steps);
}

// pydensecrf's DenseCRF2D defaults: iterations 10, gaussian (3, 3), bilateral (80, 13, 10).
inline at::Tensor dense_crf_forward(const at::Tensor& unary, const at::Tensor& image, int64_t iterations = 10,
                                    double gaussian_sxy = 3.0, double gaussian_weight = 3.0,
                                    double bilateral_sxy = 80.0, double bilateral_srgb = 13.0,
                                    double bilateral_weight = 10.0) {
  using S = detail::T(const detail::T&, const detail::T&, int64_t, double, double, double, double, double);
  static const auto h = detail::op<S>("grmseg_C::dense_crf_forward");
  return h.call(unary, image, iterations, gaussian_sxy, gaussian_weight, bilateral_sxy, bilateral_srgb,
                bilateral_weight);
}

}  // namespace ops
}  // namespace grmseg
