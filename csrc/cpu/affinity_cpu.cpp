// local_affinity_forward (PSA) and boundary_affinity_forward (IRN) on the CPU, their shape functions (Meta) and
// their registrations.
//
//   local:    feat [B, C, h, w]     -> aff [B, D, h, w],  aff[d, p] = exp(-mean_c |f(p) - f(p + o_d)|)
//   boundary: boundary [B, 1, h, w] -> aff [B, D, h, w],  aff[d, p] = 1 - max of the boundary on the path p -> p + o_d
//   0 where p + o_d leaves the map; offsets and paths (IRN's: every pixel of the offset's box within distance 1
//   of the segment) as grmseg.reference (csrc/wsss.h).
//
// The input is copied once into a zero-padded map in the accumulation type (fp32 for half inputs, fp64 for
// fp64), so that every neighbour and path read is in bounds; then one task per (image, pixel row) under
// at::parallel_for runs the kernels of csrc/cpu/kernels/affinity_kernel.cpp (one per instruction-set level):
// local keeps a block of offsets' channel sums in registers, boundary a running max over the path points (a max
// is exact in any order). Every path point lies in the box of p and p + o_d, so all are inside when p + o_d is.
// No reduction crosses tasks: the result does not depend on the thread count.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/kernels/affinity_kernel.h"
#include "cpu/parallel.h"
#include "wsss.h"

namespace grmseg {
namespace {

// x [B, C, H, W] -> [B, C, H + R, Wp] in the accumulation type: pixel (y, x) at (y, L + x), zeros around.
at::Tensor padded_map(const at::Tensor& x, int64_t R, int64_t L, int64_t Wr, at::ScalarType acc) {
  const int64_t H = x.size(2), W = x.size(3);
  at::Tensor out = at::zeros({x.size(0), x.size(1), H + R, L + Wr + L}, x.options().dtype(acc));
  out.narrow(2, 0, H).narrow(3, L, W).copy_(x);
  return out;
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The offsets (and, for boundary, their paths) as flat arrays for the kernels.
struct OffsetTable {
  std::vector<int64_t> dy, dx, path_begin{0}, path_y, path_x;
  OffsetTable(int64_t radius, bool paths) {
    for (const auto& o : wsss::affinity_offsets(radius)) {
      dy.push_back(o.first);
      dx.push_back(o.second);
      if (paths) {
        for (const auto& pt : wsss::path_offsets(o.first, o.second)) {
          path_y.push_back(pt.first);
          path_x.push_back(pt.second);
        }
        path_begin.push_back(static_cast<int64_t>(path_y.size()));
      }
    }
  }
};

// Runs the affinity kernel `which` over (image, row) tasks: x is [B, C, H, W] (C = 1 for boundary).
at::Tensor run_affinity(const at::Tensor& x, int64_t radius, bool boundary) {
  const OffsetTable offs(radius, boundary);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), D = static_cast<int64_t>(offs.dy.size());
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  at::Tensor out = at::empty({B, D, H, W}, x.options().dtype(acc));
  if (out.numel() == 0) return out.to(x.scalar_type());
  if (C == 0) return out.zero_().to(x.scalar_type());  // (local only) no channels: a mean over nothing
  const int64_t R = radius - 1, L = round_up(R, cpu::kAffinityPad), Wr = round_up(W, cpu::kAffinityPad);
  const at::Tensor map = padded_map(x, R, L, Wr, acc);
  AT_DISPATCH_FLOATING_TYPES(acc, "affinity_forward_cpu", [&] {
    const cpu::AffinityArgs<scalar_t> args{C,
                                           H,
                                           W,
                                           Wr,
                                           L + Wr + L,
                                           L,
                                           R,
                                           D,
                                           map.const_data_ptr<scalar_t>(),
                                           offs.dy.data(),
                                           offs.dx.data(),
                                           offs.path_begin.data(),
                                           offs.path_y.data(),
                                           offs.path_x.data(),
                                           out.mutable_data_ptr<scalar_t>()};
    const auto& fns = GRMSEG_CPU_KERNELS(affinity_kernels).get<scalar_t>();
    const auto fn = boundary ? fns.boundary_rows : fns.local_rows;
    // in the units of cpu::kMinParallelWork (about a flop of a GEMM-shaped kernel): a path point of boundary
    // affinity (a load and a max) costs several, weighted 8: B2 64x64 r5 (1.1M points, 179 us on one thread of
    // the Xeon) then runs on both threads (106 us), B1 32x32 stays on one (44 us)
    const double per_pixel = boundary ? 8.0 * static_cast<double>(offs.path_y.size()) : 3.0 * C * D;
    const double work = per_pixel * B * H * Wr;
    at::parallel_for(0, B * H, cpu::grain_for(B * H, work), [&](int64_t begin, int64_t end) { fn(args, begin, end); });
  });
  return out.to(x.scalar_type());
}

}  // namespace

at::Tensor local_affinity_forward_cpu(const at::Tensor& feat, int64_t radius) {
  const char* who = "grmseg_C::local_affinity_forward (CPU)";
  TORCH_CHECK(feat.dim() == 4, who, ": feat must be [B, C, h, w], got a tensor of shape ", feat.sizes());
  wsss::check_float(feat, "feat", who);
  wsss::check_device(feat, "feat", c10::DeviceType::CPU, who);
  wsss::check_radius(radius, who);
  return run_affinity(feat, radius, false);
}

at::Tensor boundary_affinity_forward_cpu(const at::Tensor& boundary, int64_t radius) {
  const char* who = "grmseg_C::boundary_affinity_forward (CPU)";
  TORCH_CHECK(boundary.dim() == 4 && boundary.size(1) == 1, who,
              ": boundary must be [B, 1, h, w], got a tensor of shape ", boundary.sizes());
  wsss::check_float(boundary, "boundary", who);
  wsss::check_device(boundary, "boundary", c10::DeviceType::CPU, who);
  wsss::check_radius(radius, who);
  return run_affinity(boundary, radius, true);
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
