// random_walk_forward on the CPU, its shape function (Meta) and their registrations.
//
//   cam [B, K, h, w], aff [B, D, h, w], beta, steps  ->  cam_vec @ T^steps  [B, K, h, w]
//
// T is the column-normalised A^beta of the symmetric affinity matrix (unit diagonal, A[p, p + o_d] = aff[d, p]);
// it is never formed. Instead, `steps` local passes over the NN = 2D neighbours of every pixel j:
//
//   y_j <- y_j + sum_n wts[n, j] (y_{j + s_n} - y_j),   s_{0..D-1} = +o_d, s_{D..2D-1} = -o_d
//
// with wts[d, j] = aff[d, j]^beta / d_j, wts[D + d, j] = aff[d, j - o_d]^beta / d_j (0 where the neighbour leaves
// the map) and d_j = 1 + the sum of the powered weights (>= 1: no division by zero). This is the same as
// y_j <- sum_i T_ij y_i (the self weight 1 / d_j = 1 - the sum of the others), written so that the column sums of
// T are exactly 1 whatever the rounding of the weights, and so that the rounding of a pass scales with the
// differences y_i - y_j, not with y. Measured after 256 steps on IRN-like maps (max error over the max, against
// float64): 3e-7 to 1.1e-6, where IRN's own fp32 dense walk (T squared eight times) is 2.3e-5 to 3.2e-5 and the
// direct sum of y_i T_ij, whose rounded column sums compound step after step, 1.6e-4 to 2.4e-4 (tests/
// test_wsss_random_walk.py). The normaliser d_j is summed in fp64.
//
// Layout: the weights are computed once, blocked per pixel block of the pass kernel: [B, h, Wr / XB, NN, XB] with
// Wr = w rounded up to XB columns (zero weights in the extra columns), O(N D) memory. The two state buffers
// (ping-pong) are [B, K, h + 2R, L + Wr + L], R = r - 1 and L = R rounded up to a cache line, with a zero border, so every neighbour read is in bounds
// and the pass kernels run over whole blocks of XB columns: for a block, the sums of several classes stay in
// registers over the NN neighbours, each weight vector loaded once for all of them (csrc/cpu/kernels/
// random_walk_kernel.cpp, compiled once per instruction-set level). The extra columns get weight 0 for every
// neighbour and hold 0, so they keep writing 0 into the border.
//
// Parallelism: (image, class group) tasks that each run every pass on their own classes (the classes are
// independent): one parallel region for the whole walk, no barrier per pass. With fewer classes than threads,
// one parallel region per pass over (image, row) tasks. A class's arithmetic is the same either way, so the result
// does not depend on the thread count. fp32 state for fp32/fp16/bf16, fp64 for fp64.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/kernels/random_walk_kernel.h"
#include "cpu/parallel.h"
#include "wsss.h"

namespace grmseg {
namespace {

struct Geometry {
  // R: border rows; L: border columns (R rounded up to a cache line, so that pixel (y, 0) is line-aligned);
  // S: row stride of the padded state, Hp: its rows, XB: the pass kernel's pixel block
  int64_t B, K, H, W, R, L, Wr, Hp, S, NN, XB;
  int64_t plane() const { return Hp * S; }
};

// wts [B, H, Wr / XB, NN, XB] from aff [B, D, H, W] (contiguous, accumulation type); the normaliser is summed in
// fp64.
template <typename acc_t>
void walk_weights(const acc_t* __restrict aff, acc_t* __restrict wts, const Geometry& g,
                  const std::vector<wsss::Offset>& offs, acc_t beta) {
  const int64_t D = static_cast<int64_t>(offs.size()), H = g.H, W = g.W, Wr = g.Wr, P = H * W, NN = g.NN;
  const double work = 20.0 * g.B * H * W * NN;  // a pow and a few flops per weight
  at::parallel_for(0, g.B * H, cpu::grain_for(g.B * H, work), [&](int64_t begin, int64_t end) {
    std::vector<double> dsum(static_cast<size_t>(Wr));
    std::vector<acc_t> row(static_cast<size_t>(NN * Wr));  // this row's weights, [NN, Wr]
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / H, y = task % H;
      const acc_t* ab = aff + bi * D * P;
      acc_t* wb = row.data();  // neighbour n of this row: wb + n * Wr
      std::fill(dsum.begin(), dsum.end(), 1.0);
      for (int64_t d = 0; d < D; ++d) {
        const int64_t dy = offs[d].first, dx = offs[d].second;
        acc_t* fwd = wb + d * Wr;
        acc_t* bwd = wb + (D + d) * Wr;
        std::fill(fwd, fwd + Wr, acc_t(0));
        std::fill(bwd, bwd + Wr, acc_t(0));
        // + o_d: the pair (p, p + o_d) is aff[d, p]
        if (y + dy < H) {
          const acc_t* a = ab + d * P + y * W;
          for (int64_t x = std::max<int64_t>(0, -dx); x < std::min(W, W - dx); ++x) {
            fwd[x] = std::pow(a[x], beta);
            dsum[x] += static_cast<double>(fwd[x]);
          }
        }
        // - o_d: the pair (p - o_d, p) is aff[d, p - o_d]
        if (y - dy >= 0) {
          const acc_t* a = ab + d * P + (y - dy) * W;
          for (int64_t x = std::max<int64_t>(0, dx); x < std::min(W, W + dx); ++x) {
            bwd[x] = std::pow(a[x - dx], beta);
            dsum[x] += static_cast<double>(bwd[x]);
          }
        }
      }
      for (int64_t x = 0; x < W; ++x) dsum[x] = 1.0 / dsum[x];
      for (int64_t n = 0; n < NN; ++n) {
        acc_t* wn = wb + n * Wr;
        for (int64_t x = 0; x < W; ++x) wn[x] = static_cast<acc_t>(static_cast<double>(wn[x]) * dsum[x]);
      }
      // blocked: [Wr / XB, NN, XB]
      acc_t* out = wts + (bi * H + y) * NN * Wr;
      for (int64_t x0 = 0; x0 < Wr; x0 += g.XB)
        for (int64_t n = 0; n < NN; ++n) std::copy(wb + n * Wr + x0, wb + n * Wr + x0 + g.XB, out + x0 * NN + n * g.XB);
    }
  });
}

}  // namespace

at::Tensor random_walk_forward_cpu(const at::Tensor& cam, const at::Tensor& aff, double beta, int64_t steps) {
  const char* who = "grmseg_C::random_walk_forward (CPU)";
  const int64_t radius = wsss::check_walk_inputs(cam, aff, beta, steps, c10::DeviceType::CPU, who);
  if (steps == 0 || cam.numel() == 0) return cam.clone(at::MemoryFormat::Contiguous);
  const auto offs = wsss::affinity_offsets(radius);
  const at::ScalarType acc_type = at::toOpMathType(cam.scalar_type());
  const auto& kernels = GRMSEG_CPU_KERNELS(walk_kernels);
  const int64_t xb = acc_type == at::kDouble ? kernels.f64.xblock : kernels.f32.xblock;
  Geometry g;
  g.B = cam.size(0);
  g.K = cam.size(1);
  g.H = cam.size(2);
  g.W = cam.size(3);
  g.R = radius - 1;
  const int64_t line = 64 / static_cast<int64_t>(acc_type == at::kDouble ? sizeof(double) : sizeof(float));
  g.L = (g.R + line - 1) / line * line;
  g.Wr = (g.W + xb - 1) / xb * xb;
  g.Hp = g.H + 2 * g.R;
  g.S = g.Wr + 2 * g.L;
  const int64_t D = static_cast<int64_t>(offs.size());
  g.NN = 2 * D;
  g.XB = xb;

  std::vector<int64_t> nb;  // the shifts as offsets in the padded state
  for (const auto& o : offs) nb.push_back(o.first * g.S + o.second);
  for (const auto& o : offs) nb.push_back(-o.first * g.S - o.second);

  const at::Tensor a = aff.to(acc_type).contiguous();
  at::Tensor wts = at::empty({g.B, g.H, g.Wr / g.XB, g.NN, g.XB}, cam.options().dtype(acc_type));
  at::Tensor ping = at::zeros({g.B, g.K, g.Hp, g.S}, cam.options().dtype(acc_type));
  at::Tensor pong = at::zeros_like(ping);
  ping.narrow(2, g.R, g.H).narrow(3, g.L, g.W).copy_(cam);

  // small walks run on the calling thread (a parallel region per pass would cost more than the pass)
  const double work = 2.0 * steps * g.B * g.K * g.H * g.Wr * g.NN;
  const int64_t threads = work < cpu::kMinParallelWork ? 1 : std::max<int64_t>(1, at::get_num_threads());
  const bool by_class = g.B * g.K >= threads;
  const int64_t groups = std::min<int64_t>(g.K, std::max<int64_t>(1, (threads + g.B - 1) / g.B));
  const int64_t per_group = (g.K + groups - 1) / groups;

  AT_DISPATCH_FLOATING_TYPES(acc_type, "random_walk_forward_cpu", [&] {
    using acc_t = scalar_t;
    walk_weights<acc_t>(a.const_data_ptr<acc_t>(), wts.mutable_data_ptr<acc_t>(), g, offs, static_cast<acc_t>(beta));
    const cpu::WalkArgs<acc_t> args{g.K, g.H, g.Wr, g.S, g.R, g.L, g.NN, g.plane(), nb.data(),
                                    wts.const_data_ptr<acc_t>()};
    const auto& fns = kernels.get<acc_t>();
    acc_t* bufs[2] = {ping.mutable_data_ptr<acc_t>(), pong.mutable_data_ptr<acc_t>()};
    if (by_class) {
      at::parallel_for(0, g.B * groups, threads == 1 ? g.B * groups : 1, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t bi = task / groups, k0 = (task % groups) * per_group, k1 = std::min(g.K, k0 + per_group);
          if (k0 < k1) fns.walk_classes(args, bufs[0], bufs[1], bi, k0, k1, steps);
        }
      });
    } else {
      for (int64_t s = 0; s < steps; ++s) {
        at::parallel_for(0, g.B * g.H, 1, [&](int64_t begin, int64_t end) {
          for (int64_t task = begin; task < end; ++task) {
            const int64_t bi = task / g.H, y = task % g.H;
            fns.walk_rows(args, bufs[s % 2], bufs[(s + 1) % 2], bi, y, y + 1);
          }
        });
      }
    }
  });
  const at::Tensor& result = steps % 2 == 0 ? ping : pong;
  return result.narrow(2, g.R, g.H).narrow(3, g.L, g.W).to(cam.scalar_type()).contiguous();
}

at::Tensor random_walk_forward_meta(const at::Tensor& cam, const at::Tensor& aff, double beta, int64_t steps) {
  const char* who = "grmseg_C::random_walk_forward";
  TORCH_CHECK(cam.dim() == 4, who, ": cam must be [B, K, h, w], got a tensor of shape ", cam.sym_sizes());
  TORCH_CHECK(aff.dim() == 4, who, ": aff must be [B, D, h, w], got a tensor of shape ", aff.sym_sizes());
  TORCH_CHECK(aff.scalar_type() == cam.scalar_type(), who, ": aff must have the dtype of cam (", cam.scalar_type(),
              "), got ", aff.scalar_type());
  (void)beta;
  (void)steps;
  return at::empty_symint(cam.sym_sizes(), cam.options());
}

}  // namespace grmseg

TORCH_LIBRARY_IMPL(grmseg_C, CPU, m) { m.impl("random_walk_forward", &grmseg::random_walk_forward_cpu); }

TORCH_LIBRARY_IMPL(grmseg_C, Meta, m) { m.impl("random_walk_forward", &grmseg::random_walk_forward_meta); }
