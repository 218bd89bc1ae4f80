// local_affinity_forward (PSA) and boundary_affinity_forward (IRN) on the CPU, their shape functions (Meta) and
// their registrations.
//
//   local:    feat [B, C, h, w]     -> aff [B, D, h, w],  aff[d, p] = exp(-mean_c |f(p) - f(p + o_d)|)
//   boundary: boundary [B, 1, h, w] -> aff [B, D, h, w],  aff[d, p] = 1 - max of the boundary on the path p -> p + o_d
//   0 where p + o_d leaves the map; offsets and paths (IRN's: every pixel of the offset's box within distance 1
//   of the segment) as grmseg.reference (csrc/wsss.h).
//
// Both run one task per (batch, pixel row) under at::parallel_for. The input is first converted to a contiguous
// tensor of the accumulation type (fp32 for half inputs, fp64 for fp64). local: for each channel the row and its
// neighbour rows are read once and |f(p) - f(p + o_d)| is added to a D x w accumulator (which stays in L1); the
// inner loops run over contiguous x ranges, so they vectorise. boundary: a running max per offset over the path
// points (a max is exact in any order, so the result does not depend on the thread count), again over
// contiguous x ranges. Every path point lies in the box of p and p + o_d, so all are inside when p + o_d is.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "wsss.h"

namespace grmseg {
namespace {

// The x range [x0, x1) where x + dx stays inside [0, W).
inline void x_range(int64_t dx, int64_t W, int64_t& x0, int64_t& x1) {
  x0 = std::max<int64_t>(0, -dx);
  x1 = std::min<int64_t>(W, W - dx);
}

}  // namespace

at::Tensor local_affinity_forward_cpu(const at::Tensor& feat, int64_t radius) {
  const char* who = "grmseg_C::local_affinity_forward (CPU)";
  TORCH_CHECK(feat.dim() == 4, who, ": feat must be [B, C, h, w], got a tensor of shape ", feat.sizes());
  wsss::check_float(feat, "feat", who);
  wsss::check_device(feat, "feat", c10::DeviceType::CPU, who);
  wsss::check_radius(radius, who);
  const auto offs = wsss::affinity_offsets(radius);
  const int64_t B = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  const int64_t D = static_cast<int64_t>(offs.size()), P = H * W;
  const at::ScalarType acc_type = at::toOpMathType(feat.scalar_type());
  at::Tensor out = at::zeros({B, D, H, W}, feat.options().dtype(acc_type));
  if (out.numel() == 0 || C == 0) return out.to(feat.scalar_type());
  const at::Tensor f = feat.to(acc_type).contiguous();

  AT_DISPATCH_FLOATING_TYPES(acc_type, "local_affinity_forward_cpu", [&] {
    using acc_t = scalar_t;
    const acc_t* fp = f.const_data_ptr<acc_t>();
    acc_t* op = out.mutable_data_ptr<acc_t>();
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(static_cast<size_t>(D * W));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / H, y = task % H;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t c = 0; c < C; ++c) {
          const acc_t* plane = fp + (bi * C + c) * P;
          const acc_t* __restrict row = plane + y * W;
          for (int64_t d = 0; d < D; ++d) {
            const int64_t dy = offs[d].first, dx = offs[d].second;
            if (y + dy >= H) continue;
            const acc_t* __restrict nrow = plane + (y + dy) * W;
            acc_t* __restrict a = acc.data() + d * W;
            int64_t x0, x1;
            x_range(dx, W, x0, x1);
            for (int64_t x = x0; x < x1; ++x) a[x] += std::abs(row[x] - nrow[x + dx]);
          }
        }
        const acc_t cc = static_cast<acc_t>(C);
        for (int64_t d = 0; d < D; ++d) {
          const int64_t dy = offs[d].first, dx = offs[d].second;
          if (y + dy >= H) continue;  // the row stays 0
          const acc_t* a = acc.data() + d * W;
          acc_t* o = op + ((bi * D + d) * H + y) * W;
          int64_t x0, x1;
          x_range(dx, W, x0, x1);
          for (int64_t x = x0; x < x1; ++x) o[x] = std::exp(-(a[x] / cc));
        }
      }
    });
  });
  return out.to(feat.scalar_type());
}

at::Tensor boundary_affinity_forward_cpu(const at::Tensor& boundary, int64_t radius) {
  const char* who = "grmseg_C::boundary_affinity_forward (CPU)";
  TORCH_CHECK(boundary.dim() == 4 && boundary.size(1) == 1, who,
              ": boundary must be [B, 1, h, w], got a tensor of shape ", boundary.sizes());
  wsss::check_float(boundary, "boundary", who);
  wsss::check_device(boundary, "boundary", c10::DeviceType::CPU, who);
  wsss::check_radius(radius, who);
  const auto offs = wsss::affinity_offsets(radius);
  const int64_t B = boundary.size(0), H = boundary.size(2), W = boundary.size(3);
  const int64_t D = static_cast<int64_t>(offs.size()), P = H * W;
  std::vector<std::vector<wsss::Offset>> paths;
  for (const auto& o : offs) paths.push_back(wsss::path_offsets(o.first, o.second));
  const at::ScalarType acc_type = at::toOpMathType(boundary.scalar_type());
  at::Tensor out = at::zeros({B, D, H, W}, boundary.options().dtype(acc_type));
  if (out.numel() == 0) return out.to(boundary.scalar_type());
  const at::Tensor bd = boundary.to(acc_type).contiguous();

  AT_DISPATCH_FLOATING_TYPES(acc_type, "boundary_affinity_forward_cpu", [&] {
    using acc_t = scalar_t;
    const acc_t* bp = bd.const_data_ptr<acc_t>();
    acc_t* op = out.mutable_data_ptr<acc_t>();
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> mx(static_cast<size_t>(W));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / H, y = task % H;
        const acc_t* plane = bp + bi * P;
        for (int64_t d = 0; d < D; ++d) {
          const int64_t dy = offs[d].first, dx = offs[d].second;
          if (y + dy >= H) continue;  // the row stays 0
          int64_t x0, x1;
          x_range(dx, W, x0, x1);
          const acc_t* __restrict row = plane + y * W;  // path point 0 is (0, 0)
          for (int64_t x = x0; x < x1; ++x) mx[x] = row[x];
          for (size_t i = 1; i < paths[d].size(); ++i) {
            const int64_t py = paths[d][i].first, px = paths[d][i].second;
            const acc_t* __restrict prow = plane + (y + py) * W;
            for (int64_t x = x0; x < x1; ++x) mx[x] = wsss::nan_max(mx[x], prow[x + px]);
          }
          acc_t* o = op + ((bi * D + d) * H + y) * W;
          for (int64_t x = x0; x < x1; ++x) o[x] = acc_t(1) - mx[x];
        }
      }
    });
  });
  return out.to(boundary.scalar_type());
}

at::Tensor local_affinity_forward_meta(const at::Tensor& feat, int64_t radius) {
  const char* who = "grmseg_C::local_affinity_forward";
  TORCH_CHECK(feat.dim() == 4, who, ": feat must be [B, C, h, w], got a tensor of shape ", feat.sym_sizes());
  wsss::check_radius(radius, who);
  return at::empty_symint({feat.sym_size(0), c10::SymInt(wsss::num_offsets(radius)), feat.sym_size(2), feat.sym_size(3)},
                          feat.options());
}

at::Tensor boundary_affinity_forward_meta(const at::Tensor& boundary, int64_t radius) {
  const char* who = "grmseg_C::boundary_affinity_forward";
  TORCH_CHECK(boundary.dim() == 4, who, ": boundary must be [B, 1, h, w], got a tensor of shape ",
              boundary.sym_sizes());
  wsss::check_radius(radius, who);
  return at::empty_symint(
      {boundary.sym_size(0), c10::SymInt(wsss::num_offsets(radius)), boundary.sym_size(2), boundary.sym_size(3)},
      boundary.options());
}

}  // namespace grmseg

TORCH_LIBRARY_IMPL(grmseg_C, CPU, m) {
  m.impl("local_affinity_forward", &grmseg::local_affinity_forward_cpu);
  m.impl("boundary_affinity_forward", &grmseg::boundary_affinity_forward_cpu);
}

TORCH_LIBRARY_IMPL(grmseg_C, Meta, m) {
  m.impl("local_affinity_forward", &grmseg::local_affinity_forward_meta);
  m.impl("boundary_affinity_forward", &grmseg::boundary_affinity_forward_meta);
}
