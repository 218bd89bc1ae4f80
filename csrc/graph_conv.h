// graph_conv: one GCN layer over the K class nodes (see DESIGN.md).
//   z [B, K, F], adj [K, K], weight [F, D], bias [D] or none  ->  act(adj (z weight) + bias)  [B, K, D]
//   act: "leaky_relu" (slope 0.2), "relu" or "none".
// Shared by the CPU (.cpp) and CUDA (.cu) sources: ATen core headers only.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <string>
#include <tuple>
#include <utility>

namespace grmseg {

enum class GraphAct : int { None = 0, ReLU = 1, LeakyReLU = 2 };
constexpr double kLeakySlope = 0.2;

inline GraphAct parse_graph_act(const std::string& activation, const char* who) {
  if (activation == "leaky_relu") return GraphAct::LeakyReLU;
  if (activation == "relu") return GraphAct::ReLU;
  if (activation == "none") return GraphAct::None;
  TORCH_CHECK(false, who, ": activation must be 'leaky_relu', 'relu' or 'none', got '", activation, "'");
}

// Validates the inputs of graph_conv_* for the kernels of one device type (any strides).
inline void check_graph_conv_inputs(const at::Tensor& z, const at::Tensor& adj, const at::Tensor& weight,
                                    const c10::optional<at::Tensor>& bias, c10::DeviceType device_type,
                                    const char* who) {
  TORCH_CHECK(z.dim() == 3, who, ": z must be [B, K, F], got a tensor of shape ", z.sizes());
  TORCH_CHECK(adj.dim() == 2 && adj.size(0) == z.size(1) && adj.size(1) == z.size(1), who, ": adj must be [K, K] = [",
              z.size(1), ", ", z.size(1), "], got a tensor of shape ", adj.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == z.size(2), who, ": weight must be [F, D] with F = ", z.size(2),
              ", got a tensor of shape ", weight.sizes());
  const auto dt = z.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, who,
              ": z must be float16, bfloat16, float32 or float64, got ", dt);
  TORCH_CHECK(adj.scalar_type() == dt && weight.scalar_type() == dt, who,
              ": z, adj and weight must have the same dtype, got z ", dt, ", adj ", adj.scalar_type(), ", weight ",
              weight.scalar_type());
  TORCH_CHECK(z.device().type() == device_type, who, ": z must be a ", c10::DeviceTypeName(device_type),
              " tensor, got one on ", z.device());
  TORCH_CHECK(adj.device() == z.device() && weight.device() == z.device(), who,
              ": z, adj and weight must be on the same device, got z on ", z.device(), ", adj on ", adj.device(),
              ", weight on ", weight.device());
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 1 && b.size(0) == weight.size(1), who, ": bias must be [D] with D = ", weight.size(1),
                ", got a tensor of shape ", b.sizes());
    TORCH_CHECK(b.scalar_type() == dt, who, ": bias must have the dtype of z (", dt, "), got ", b.scalar_type());
    TORCH_CHECK(b.device() == z.device(), who, ": bias must be on ", z.device(), ", got ", b.device());
  }
}

// gout and out of graph_conv_backward: [B, K, D] with the dtype and device of z.
inline void check_graph_conv_grads(const at::Tensor& gout, const at::Tensor& out, const at::Tensor& z,
                                   const at::Tensor& weight, const char* who) {
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{gout, "gout"}, {out, "out"}}) {
    TORCH_CHECK(t.dim() == 3 && t.size(0) == z.size(0) && t.size(1) == z.size(1) && t.size(2) == weight.size(1), who,
                ": ", name, " must be [B, K, D] = [", z.size(0), ", ", z.size(1), ", ", weight.size(1),
                "], got a tensor of shape ", t.sizes());
    TORCH_CHECK(t.scalar_type() == z.scalar_type(), who, ": ", name, " must have the dtype of z (", z.scalar_type(),
                "), got ", t.scalar_type());
    TORCH_CHECK(t.device() == z.device(), who, ": ", name, " must be on ", z.device(), ", got ", t.device());
  }
}

at::Tensor graph_conv_forward_cpu(const at::Tensor& z, const at::Tensor& adj, const at::Tensor& weight,
                                  const c10::optional<at::Tensor>& bias, c10::string_view activation);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> graph_conv_backward_cpu(
    const at::Tensor& gout, const at::Tensor& out, const at::Tensor& z, const at::Tensor& adj,
    const at::Tensor& weight, const c10::optional<at::Tensor>& bias, c10::string_view activation);

}  // namespace grmseg
