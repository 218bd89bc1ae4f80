// cam_forward on the CPU, its shape function (Meta) and their registrations.
//
//   feat [B, C, h, w], weight [K, C], labels [B, K] or none  ->  cam [B, K, h, w]
//   cam[b, k] = relu(weight feat[b])[k] / (spatial max + 1e-5), zero for the classes absent from labels.
//
// Only the classes present in an image are computed: their weight rows are gathered per image, and the scores of
// (image, pixel chunk) tasks (csrc/cpu/kernels/cam_kernel.cpp, one per instruction-set level) go to the output
// (fp32 / fp64) or an fp32 buffer (fp16 / bf16) with each task's maximum per class; then each (image, class) row
// is divided by its maximum (reduced over the chunks in a fixed order) or zeroed. The chunking depends on the
// shapes only, so the result does not depend on the thread count. fp32 accumulation for half inputs.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "cpu/kernels/cam_kernel.h"
#include "cpu/parallel.h"
#include "wsss.h"

namespace grmseg {
namespace {

constexpr int64_t kTargetTasks = 32;

}  // namespace

at::Tensor cam_forward_cpu(const at::Tensor& feat, const at::Tensor& weight, const std::optional<at::Tensor>& labels) {
  const char* who = "grmseg_C::cam_forward (CPU)";
  wsss::check_cam_inputs(feat, weight, labels, c10::DeviceType::CPU, who);
  const at::NoGradGuard no_grad;  // the ATen calls below are this kernel's own arithmetic
  const int64_t B = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3), K = weight.size(0);
  const int64_t P = H * W;
  at::Tensor out = at::empty({B, K, H, W}, feat.options());
  if (out.numel() == 0) return out;
  if (C == 0) return out.zero_();

  // The present classes of each image, and their weight rows (in the accumulation type).
  const at::ScalarType acc = at::toOpMathType(feat.scalar_type());
  at::Tensor keep = labels.has_value() ? labels->ne(0).to(at::kByte).contiguous()
                                       : at::ones({B, K}, feat.options().dtype(at::kByte));
  const uint8_t* keep_p = keep.const_data_ptr<uint8_t>();
  std::vector<int64_t> classes(static_cast<size_t>(B * K)), present(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    int64_t n = 0;
    for (int64_t k = 0; k < K; ++k) {
      if (keep_p[b * K + k]) classes[static_cast<size_t>(b * K + n++)] = k;
    }
    present[static_cast<size_t>(b)] = n;
  }
  const at::Tensor w_acc = weight.to(acc).contiguous();
  at::Tensor w_sel = at::empty({B, K, C}, weight.options().dtype(acc));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = present[static_cast<size_t>(b)];
    if (n == 0) continue;
    const at::Tensor idx = at::from_blob(classes.data() + b * K, {n}, at::TensorOptions().dtype(at::kLong));
    w_sel[b].narrow(0, 0, n).copy_(w_acc.index_select(0, idx));
  }

  // (image, pixel chunk) tasks: a function of the shapes only.
  const int64_t tiles = (P + cpu::kCamTile - 1) / cpu::kCamTile;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(tiles, (kTargetTasks + B - 1) / B));
  const int64_t chunk_px = ((tiles + chunks - 1) / chunks) * cpu::kCamTile;
  const int64_t nchunks = (P + chunk_px - 1) / chunk_px;
  const at::Tensor f = feat.reshape({B, C, P});  // a view whenever the strides allow
  at::Tensor raw = acc == feat.scalar_type() ? out : at::empty({B, K, H, W}, feat.options().dtype(acc));
  at::Tensor maxima = at::empty({B * nchunks, K}, feat.options().dtype(acc));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "cam_forward_cpu", [&] {
    using acc_t = cpu::acc_type<scalar_t>;
    const cpu::CamArgs<scalar_t> args{B,
                                      C,
                                      P,
                                      K,
                                      nchunks,
                                      chunk_px,
                                      {f.const_data_ptr<scalar_t>(), f.stride(0), f.stride(1), f.stride(2)},
                                      w_sel.const_data_ptr<acc_t>(),
                                      classes.data(),
                                      present.data(),
                                      keep_p,
                                      raw.mutable_data_ptr<acc_t>(),
                                      maxima.mutable_data_ptr<acc_t>(),
                                      out.mutable_data_ptr<scalar_t>()};
    const auto& fns = GRMSEG_CPU_KERNELS(cam_kernels).get<scalar_t>();
    const double work = 2.0 * B * K * C * P;
    at::parallel_for(0, B * nchunks, cpu::grain_for(B * nchunks, work),
                     [&](int64_t begin, int64_t end) { fns.scores(args, begin, end); });
    at::parallel_for(0, B * K, cpu::grain_for(B * K, static_cast<double>(B) * K * P),
                     [&](int64_t begin, int64_t end) { fns.normalize(args, begin, end); });
  });
  return out;
}

at::Tensor cam_forward_meta(const at::Tensor& feat, const at::Tensor& weight, const std::optional<at::Tensor>& labels) {
  const char* who = "grmseg_C::cam_forward";
  TORCH_CHECK(feat.dim() == 4, who, ": feat must be [B, C, h, w], got a tensor of shape ", feat.sym_sizes());
  TORCH_CHECK(weight.dim() == 2, who, ": weight must be [K, C], got a tensor of shape ", weight.sym_sizes());
  TORCH_CHECK(weight.scalar_type() == feat.scalar_type(), who, ": weight must have the dtype of feat (",
              feat.scalar_type(), "), got ", weight.scalar_type());
  (void)labels;
  return at::empty_symint({feat.sym_size(0), weight.sym_size(0), feat.sym_size(2), feat.sym_size(3)}, feat.options());
}

}  // namespace grmseg

TORCH_LIBRARY_IMPL(grmseg_C, CPU, m) { m.impl("cam_forward", &grmseg::cam_forward_cpu); }

TORCH_LIBRARY_IMPL(grmseg_C, Meta, m) { m.impl("cam_forward", &grmseg::cam_forward_meta); }
