// graph_conv forward and backward on the CPU: checks, the large products, and the fused kernels around them
// (csrc/cpu/kernels/graph_conv_kernel.cpp, one per instruction-set level).
//
//   forward   zw = z W (one GEMM);  out = act(adj zw + bias) (fused)
//   backward  gpre = gout * act'(out), gzw = adj^T gpre, gbias (fused);  u = gpre W^T and gW = z^T gzw (GEMMs);
//             gz = adj^T u, gadj = sum_b u_b z_b^T (fused)
// gadj = sum_b gpre_b (z_b W)^T is taken as sum_b (gpre_b W^T) z_b^T, so the backward needs two large products,
// not the reference's three (it never recomputes z W). The large products go to ATen's BLAS (MKL on x86-64
// wheels, at the machine's own instruction set) in fixed blocks of the output (column blocks, or row halves; at
// least two), one single-threaded call per block under at::parallel_for: the blocks depend on the shapes only and
// no reduction is split, so the results are bitwise equal for any number of threads. fp32 accumulation for fp16/bf16, fp64 for fp64.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <string>

#include "cpu/kernels/graph_conv_kernel.h"
#include "cpu/parallel.h"
#include "graph_conv.h"

// MKL (inside libtorch_cpu on x86-64 wheels) splits its work over threads even inside a parallel region (torch
// turns MKL's dynamic adjustment off), so its results would depend on the thread count; this caps its threads for
// the calling thread. Weak: absent with another BLAS (OpenBLAS runs single-threaded inside a parallel region).
extern "C" int MKL_Set_Num_Threads_Local(int nt) __attribute__((weak));  // the C entry point of mkl_set_num_threads_local

namespace grmseg {
namespace {

// One BLAS thread on this thread for the lifetime of the guard.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() : previous_(&MKL_Set_Num_Threads_Local != nullptr ? MKL_Set_Num_Threads_Local(1) : -1) {}
  ~SingleThreadedBlas() {
    if (previous_ >= 0) MKL_Set_Num_Threads_Local(previous_);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int previous_;
};

constexpr int64_t kColumnBlock = 512;  // output columns per BLAS call

int64_t padded(int64_t n) { return (n + cpu::kGraphPad - 1) / cpu::kGraphPad * cpu::kGraphPad; }

// out = a b for 2-d tensors (any strides), one single-threaded BLAS call per block of output columns (at least
// two blocks, of up to kColumnBlock columns; row halves when there are too few columns), the blocks spread over
// the threads. Without MKL's thread control, the two tasks put every call inside a parallel region, where other
// BLAS libraries do not start threads of their own. The blocks, hence the results, do not depend on the number
// of threads.
void blocked_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out) {
  const int64_t m = out.size(0), n = out.size(1);
  if (m == 0 || n == 0) return;
  const int64_t col_blocks = std::max<int64_t>(n >= 2 * cpu::kGraphPad ? 2 : 1, (n + kColumnBlock - 1) / kColumnBlock);
  const int64_t cols = (n + col_blocks - 1) / col_blocks;
  const int64_t width = std::min(n, (cols + cpu::kGraphPad - 1) / cpu::kGraphPad * cpu::kGraphPad);
  const int64_t col_tasks = (n + width - 1) / width, row_blocks = col_tasks >= 2 ? 1 : std::min<int64_t>(2, m);
  const int64_t rows = (m + row_blocks - 1) / row_blocks, blocks = row_blocks * col_tasks;
  const int64_t tasks = std::max<int64_t>(2, blocks);
  const double work = 2.0 * static_cast<double>(m) * n * a.size(1);
  const int64_t grain = &MKL_Set_Num_Threads_Local != nullptr ? cpu::grain_for(tasks, work) : 1;
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    const SingleThreadedBlas one_thread;
    for (int64_t t = begin; t < std::min(end, blocks); ++t) {
      const int64_t i0 = (t / col_tasks) * rows, h = std::min(rows, m - i0);
      const int64_t j0 = (t % col_tasks) * width, w = std::min(width, n - j0);
      at::Tensor dst = out.narrow(0, i0, h).narrow(1, j0, w);
      // detached views: the worker threads do not share the caller's grad mode
      at::mm_out(dst, a.narrow(0, i0, h).detach(), b.narrow(1, j0, w).detach());
    }
  });
}

// t [rows, cols] in the accumulation type, contiguous, with rows cols_padded wide (zero padding): t itself
// when it already is.
at::Tensor pad_columns(const at::Tensor& t, int64_t cols_padded, at::ScalarType acc) {
  if (t.size(1) == cols_padded && t.scalar_type() == acc && t.is_contiguous()) return t;
  at::Tensor out = at::empty({t.size(0), cols_padded}, t.options().dtype(acc));
  out.narrow(1, 0, t.size(1)).copy_(t);
  out.narrow(1, t.size(1), cols_padded - t.size(1)).zero_();
  return out;
}

// An uninitialised [rows, cols_padded] buffer whose padding columns [cols, cols_padded) are zero.
at::Tensor padded_buffer(int64_t rows, int64_t cols, int64_t cols_padded, const at::TensorOptions& opts) {
  at::Tensor out = at::empty({rows, cols_padded}, opts);
  out.narrow(1, cols, cols_padded - cols).zero_();
  return out;
}

}  // namespace

at::Tensor graph_conv_forward_cpu(const at::Tensor& z, const at::Tensor& adj, const at::Tensor& weight,
                                  const c10::optional<at::Tensor>& bias, c10::string_view activation) {
  const char* who = "grmseg_C::graph_conv_forward (CPU)";
  check_graph_conv_inputs(z, adj, weight, bias, c10::DeviceType::CPU, who);
  const at::NoGradGuard no_grad;  // the ATen calls below are this kernel's own arithmetic
  const GraphAct act = parse_graph_act(std::string(activation), who);
  const int64_t B = z.size(0), K = z.size(1), F = z.size(2), D = weight.size(1), Dp = padded(D);
  at::Tensor out = at::empty({B, K, D}, z.options());
  if (out.numel() == 0) return out;
  const at::ScalarType acc = at::toOpMathType(z.scalar_type());
  const at::Tensor zc = z.to(acc).reshape({B * K, F});
  const at::Tensor adj_c = adj.to(acc).contiguous();
  at::Tensor bias_pad;
  if (bias.has_value()) bias_pad = pad_columns(bias->view({1, D}), Dp, acc);
  at::Tensor zw = padded_buffer(B * K, D, Dp, z.options().dtype(acc));
  blocked_mm(zc, weight.to(acc), zw.narrow(1, 0, D));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "graph_conv_forward_cpu", [&] {
    using acc_t = cpu::acc_type<scalar_t>;
    const cpu::GraphConvForwardArgs<scalar_t> args{
        K, D, Dp, static_cast<int64_t>(act), adj_c.const_data_ptr<acc_t>(), zw.const_data_ptr<acc_t>(),
        bias_pad.defined() ? bias_pad.const_data_ptr<acc_t>() : nullptr, out.mutable_data_ptr<scalar_t>()};
    const auto fn = GRMSEG_CPU_KERNELS(graph_conv_kernels).get<scalar_t>().forward;
    at::parallel_for(0, B, cpu::grain_for(B, 2.0 * B * K * K * Dp), [&](int64_t begin, int64_t end) {
      fn(args, begin, end);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> graph_conv_backward_cpu(
    const at::Tensor& gout, const at::Tensor& out, const at::Tensor& z, const at::Tensor& adj,
    const at::Tensor& weight, const c10::optional<at::Tensor>& bias, c10::string_view activation) {
  const char* who = "grmseg_C::graph_conv_backward (CPU)";
  check_graph_conv_inputs(z, adj, weight, bias, c10::DeviceType::CPU, who);
  const at::NoGradGuard no_grad;
  check_graph_conv_grads(gout, out, z, weight, who);
  const GraphAct act = parse_graph_act(std::string(activation), who);
  const int64_t B = z.size(0), K = z.size(1), F = z.size(2), D = weight.size(1);
  const int64_t Dp = padded(D), Fp = padded(F);
  at::Tensor gz = at::empty({B, K, F}, z.options());
  at::Tensor gw = at::empty({F, D}, weight.options());
  at::Tensor gbias = bias.has_value() ? at::empty({D}, bias->options()) : at::empty({0}, z.options());
  if (B * K == 0) return {gz, at::zeros({K, K}, adj.options()), gw.zero_(), gbias.zero_()};
  const at::ScalarType acc = at::toOpMathType(z.scalar_type());
  const auto opts = z.options().dtype(acc);
  const at::Tensor adj_c = adj.to(acc).contiguous();
  const at::Tensor z_pad = pad_columns(z.reshape({B * K, F}), Fp, acc);  // [B K, Fp]
  const at::Tensor w_acc = weight.to(acc);
  const at::Tensor gout_c = gout.contiguous(), out_c = out.contiguous();
  at::Tensor gpre = at::empty({B * K, Dp}, opts), gzw = at::empty({B * K, Dp}, opts);
  at::Tensor gbias_part = at::empty({B, Dp}, opts), gadj_part = at::empty({B, K, K}, opts);
  at::Tensor u = padded_buffer(B * K, F, Fp, opts);
  at::Tensor gw_acc = gw.scalar_type() == acc ? gw : at::empty({F, D}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "graph_conv_backward_cpu", [&] {
    using acc_t = cpu::acc_type<scalar_t>;
    const cpu::GraphConvBackwardArgs<scalar_t> args{K,
                                                    D,
                                                    Dp,
                                                    F,
                                                    Fp,
                                                    static_cast<int64_t>(act),
                                                    adj_c.const_data_ptr<acc_t>(),
                                                    gout_c.const_data_ptr<scalar_t>(),
                                                    out_c.const_data_ptr<scalar_t>(),
                                                    gpre.mutable_data_ptr<acc_t>(),
                                                    gzw.mutable_data_ptr<acc_t>(),
                                                    gbias_part.mutable_data_ptr<acc_t>(),
                                                    u.const_data_ptr<acc_t>(),
                                                    z_pad.const_data_ptr<acc_t>(),
                                                    gz.mutable_data_ptr<scalar_t>(),
                                                    gadj_part.mutable_data_ptr<acc_t>()};
    const auto& fns = GRMSEG_CPU_KERNELS(graph_conv_kernels).get<scalar_t>();
    const int64_t grain = cpu::grain_for(B, 2.0 * B * K * K * (Dp + 2 * Fp));
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) { fns.backward_pre(args, begin, end); });
    blocked_mm(gpre.narrow(1, 0, D), w_acc.t(), u.narrow(1, 0, F));          // u = gpre W^T
    blocked_mm(z_pad.narrow(1, 0, F).t(), gzw.narrow(1, 0, D), gw_acc);       // gW = z^T gzw
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) { fns.backward_post(args, begin, end); });
  });
  // Fixed-order sums over the batch elements.
  at::Tensor gadj_acc = gadj_part[0];
  at::Tensor gbias_acc = gbias_part[0];
  for (int64_t b = 1; b < B; ++b) {
    gadj_acc.add_(gadj_part[b]);
    gbias_acc.add_(gbias_part[b]);
  }
  if (!gw.is_same(gw_acc)) gw.copy_(gw_acc);
  return {gz, gadj_acc.to(adj.scalar_type()), gw,
          bias.has_value() ? gbias_acc.narrow(0, 0, D).to(bias->scalar_type()).contiguous() : gbias};
}

}  // namespace grmseg
