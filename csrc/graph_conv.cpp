// graph_conv: shape functions and the registration of its kernels per dispatch key (the CUDA kernels register
// themselves next to their source when they are built).

#include "graph_conv.h"

#include <ATen/ATen.h>
#include <torch/library.h>

namespace grmseg {
namespace {

at::Tensor graph_conv_forward_meta(const at::Tensor& z, const at::Tensor& adj, const at::Tensor& weight,
                                   const c10::optional<at::Tensor>& bias, c10::string_view activation) {
  const char* who = "grmseg_C::graph_conv_forward";
  TORCH_CHECK(z.dim() == 3, who, ": z must be [B, K, F], got a tensor of shape ", z.sym_sizes());
  TORCH_CHECK(weight.dim() == 2, who, ": weight must be [F, D], got a tensor of shape ", weight.sym_sizes());
  (void)adj, (void)bias;
  parse_graph_act(std::string(activation), who);
  return at::empty_symint({z.sym_size(0), z.sym_size(1), weight.sym_size(1)}, z.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> graph_conv_backward_meta(
    const at::Tensor& gout, const at::Tensor& out, const at::Tensor& z, const at::Tensor& adj,
    const at::Tensor& weight, const c10::optional<at::Tensor>& bias, c10::string_view activation) {
  const char* who = "grmseg_C::graph_conv_backward";
  TORCH_CHECK(z.dim() == 3, who, ": z must be [B, K, F], got a tensor of shape ", z.sym_sizes());
  (void)gout, (void)out;
  parse_graph_act(std::string(activation), who);
  at::Tensor gbias = bias.has_value() ? at::empty_symint(bias->sym_sizes(), bias->options())
                                      : at::empty_symint({c10::SymInt(0)}, z.options());
  return {at::empty_symint(z.sym_sizes(), z.options()), at::empty_symint(adj.sym_sizes(), adj.options()),
          at::empty_symint(weight.sym_sizes(), weight.options()), gbias};
}

}  // namespace
}  // namespace grmseg

TORCH_LIBRARY_IMPL(grmseg_C, Meta, m) {
  m.impl("graph_conv_forward", &grmseg::graph_conv_forward_meta);
  m.impl("graph_conv_backward", &grmseg::graph_conv_backward_meta);
}

TORCH_LIBRARY_IMPL(grmseg_C, CPU, m) {
  m.impl("graph_conv_forward", &grmseg::graph_conv_forward_cpu);
  m.impl("graph_conv_backward", &grmseg::graph_conv_backward_cpu);
}
