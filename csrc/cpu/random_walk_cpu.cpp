// random_walk_forward on the CPU, its shape function (Meta) and their registrations.
//
//   cam [B, K, h, w], aff [B, D, h, w], beta, steps  ->  cam_vec @ T^steps  [B, K, h, w]
//
// T is the column-normalised A^beta of the symmetric affinity matrix (unit diagonal, A[p, p + o_d] = aff[d, p]);
// it is never formed. Instead, `steps` local passes over the 2D neighbours of every pixel j and j itself:
//
//   y_j <- sum_{n < 2D} wts[n, j] y_{j + s_n}  +  wts[2D, j] y_j,   s_{0..D-1} = +o_d, s_{D..2D-1} = -o_d
//
// with wts[d, j] = aff[d, j]^beta / d_j, wts[D + d, j] = aff[d, j - o_d]^beta / d_j (0 where the neighbour leaves
// the map), wts[2D, j] = 1 / d_j and d_j = 1 + the sum of the powered weights (>= 1: no division by zero), the
// normaliser summed in fp64. That is y_j <- sum_i T_ij y_i. The neighbours are summed from zero and the pixel's
// own term, often the largest, is added last, so that the rounding of the small terms is not at the scale of
// y_j. Measured after 256 steps on IRN-like maps (max error over the max, against float64; tests/
// test_wsss_random_walk.py): 1.8e-6 to 3.5e-6 at every instruction-set level, where IRN's own fp32 dense walk (T
// squared eight times) is 2.4e-5 to 3.0e-5; a float32 simulation of the same sum with the own term first gave
// 1.2e-5 to 7.5e-5. The difference form y_j + sum_n w_n (y_{j+s_n} - y_j), which this kernel used before, is more
// accurate still (3e-7 to 1.1e-6) but costs a subtraction per term, which halves the FP ports' limit.
//
// Layout: the weights are computed once, blocked per row block (MR rows) and pixel block (XB columns) of the pass
// kernel, in the order it reads them: [B, Hr / MR, Wr / XB, (2D + 1) MR, XB] with Wr = w rounded up to XB columns
// and Hr = h rounded up to MR rows (zero weights in the extra columns and rows), O(N D) memory. The two state
// buffers (ping-pong) are [B, K, Hp, L + Wr + L] with a zero border: R = r - 1 rows above, R + (row block - 1) below
// and L = R rounded up to a cache line on each side, so every read of a row block is in bounds and the pass kernels
// run over whole blocks of XB columns; the extra columns get weight 0 for every term and hold 0, so they keep
// writing 0 into the border, and the extra rows of a row block are computed and not stored. For a row block, the
// sums of several classes and rows stay in registers; each input vector is loaded once per class for all the rows of
// the block that read it, and each weight vector once for all the classes (the schedule below;
// csrc/cpu/kernels/random_walk_kernel.cpp, compiled once per instruction-set level).
//
// Parallelism: (image, class group) tasks that each run every pass on their own classes (the classes are
// independent): one parallel region for the whole walk, no barrier per pass. With fewer than 4 classes per
// thread (IRN's walk has an image's present classes and the background, often 2 or 3), one parallel region per
// pass over (image, row block) tasks. A class's arithmetic is the same either way, so the
// result does not depend on the thread count. fp32 state for fp32/fp16/bf16, fp64 for fp64.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <unistd.h>
#include <vector>

#include "cpu/kernels/random_walk_kernel.h"
#include "cpu/parallel.h"
#include "wsss.h"

namespace grmseg {
namespace {

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Geometry {
  // R: border rows above; L: border columns (R rounded up to a cache line, so that pixel (y, 0) is line-aligned);
  // S: row stride of the padded state, Hp: its rows, XB, MR: the pass kernel's pixel block and row block, RB: the
  // row blocks of H rows
  int64_t B, K, H, W, R, L, Wr, Hp, RB, S, NN, XB, MR;
  int64_t plane() const { return Hp * S; }
};

// The pass kernel's schedule for a row block of g.MR rows (see cpu::WalkArgs): every input position that one of
// its rows reads as a neighbour, grouped by the mask of the rows that read it, and where each row's weight for
// each of its terms goes in the block's weights (slot[i][n], a vector index): in the order the kernel reads
// them, each row's own weight last.
struct Schedule {
  std::vector<int64_t> shifts, groups;
  std::vector<std::vector<int64_t>> slot;  // [MR][NN]
  int64_t vectors = 0;                     // weight vectors of a block (every row's terms)
};

Schedule row_block_schedule(const std::vector<wsss::Offset>& offs, const Geometry& g) {
  const int64_t D = static_cast<int64_t>(offs.size()), MR = g.MR;
  std::vector<std::pair<int64_t, int64_t>> shifts;  // neighbour n: (dy, dx)
  for (const auto& o : offs) shifts.emplace_back(o.first, o.second);
  for (const auto& o : offs) shifts.emplace_back(-o.first, -o.second);
  // (row within the block + dy, dx) -> the neighbour index of each row that reads it (-1: none)
  std::map<std::pair<int64_t, int64_t>, std::vector<int64_t>> reads;
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t n = 0; n < 2 * D; ++n) {
      const std::pair<int64_t, int64_t> pos{i + shifts[n].first, shifts[n].second};
      reads.try_emplace(pos, MR, -1).first->second[i] = n;
    }
  Schedule s;
  s.groups.assign(static_cast<size_t>(1) << MR, 0);
  s.slot.assign(static_cast<size_t>(MR), std::vector<int64_t>(static_cast<size_t>(g.NN), 0));
  for (unsigned mask = 1; mask < (1u << MR); ++mask) {
    for (const auto& [pos, n] : reads) {
      unsigned m = 0;
      for (int64_t i = 0; i < MR; ++i) m |= (n[i] >= 0 ? 1u : 0u) << i;
      if (m != mask) continue;
      s.shifts.push_back(pos.first * g.S + pos.second);
      for (int64_t i = 0; i < MR; ++i)
        if (n[i] >= 0) s.slot[i][n[i]] = s.vectors++;
    }
    s.groups[mask] = static_cast<int64_t>(s.shifts.size());
  }
  for (int64_t i = 0; i < MR; ++i) s.slot[i][2 * D] = s.vectors++;
  return s;
}

// wts [B, RB, Wr / XB, U, XB] (zeroed; U = sched.vectors) from aff [B, D, H, W] (contiguous, accumulation
// type), row y's weight for term n of pixel block xb at vector slot[y % MR][n] of block (y / MR, xb); the
// normaliser is summed in fp64.
template <typename acc_t>
void walk_weights(const acc_t* __restrict aff, acc_t* __restrict wts, const Geometry& g,
                  const std::vector<wsss::Offset>& offs, const Schedule& sched, acc_t beta) {
  const int64_t D = static_cast<int64_t>(offs.size()), H = g.H, W = g.W, Wr = g.Wr, P = H * W, NN = g.NN;
  // terms 0 .. 2D - 1: the neighbours; term 2D: the pixel itself (unit affinity)
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
      acc_t* own = wb + 2 * D * Wr;
      std::fill(own, own + Wr, acc_t(0));
      std::fill(own, own + W, acc_t(1));
      for (int64_t n = 0; n < NN; ++n) {
        acc_t* wn = wb + n * Wr;
        for (int64_t x = 0; x < W; ++x) wn[x] = static_cast<acc_t>(static_cast<double>(wn[x]) * dsum[x]);
      }
      // into the row block's weights, in the kernel's order
      const int64_t U = sched.vectors;
      const std::vector<int64_t>& slot = sched.slot[y % g.MR];
      acc_t* out = wts + (bi * g.RB + y / g.MR) * (Wr / g.XB) * U * g.XB;
      for (int64_t x0 = 0; x0 < Wr; x0 += g.XB)
        for (int64_t n = 0; n < NN; ++n)
          std::copy(wb + n * Wr + x0, wb + n * Wr + x0 + g.XB, out + (x0 / g.XB * U + slot[n]) * g.XB);
    }
  });
}

// What a class block's sweep over several steps may keep in cache: 3/4 of this core's L2 (1.5 MiB when the
// system does not say).
int64_t wave_bytes() {
  static const int64_t bytes = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return l2 > 0 ? static_cast<int64_t>(l2) / 4 * 3 : int64_t(3) << 19;
  }();
  return bytes;
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
  const int64_t mr = acc_type == at::kDouble ? kernels.f64.rows : kernels.f32.rows;
  Geometry g;
  g.B = cam.size(0);
  g.K = cam.size(1);
  g.H = cam.size(2);
  g.W = cam.size(3);
  g.R = radius - 1;
  const int64_t line = 64 / static_cast<int64_t>(acc_type == at::kDouble ? sizeof(double) : sizeof(float));
  g.L = ceil_div(g.R, line) * line;
  g.Wr = ceil_div(g.W, xb) * xb;
  g.MR = mr;
  g.RB = ceil_div(g.H, mr);
  g.Hp = g.H + 2 * g.R + mr - 1;
  g.S = g.Wr + 2 * g.L;
  g.NN = 2 * static_cast<int64_t>(offs.size()) + 1;
  g.XB = xb;
  const Schedule sched = row_block_schedule(offs, g);

  const at::Tensor a = aff.to(acc_type).contiguous();
  at::Tensor wts = at::zeros({g.B, g.RB, g.Wr / g.XB, sched.vectors, g.XB}, cam.options().dtype(acc_type));
  at::Tensor ping = at::zeros({g.B, g.K, g.Hp, g.S}, cam.options().dtype(acc_type));
  at::Tensor pong = at::zeros_like(ping);
  ping.narrow(2, g.R, g.H).narrow(3, g.L, g.W).copy_(cam);

  // small walks run on the calling thread (a parallel region per pass would cost more than the pass)
  const double work = 2.0 * steps * g.B * g.K * g.H * g.Wr * g.NN;
  const int64_t threads = work < cpu::kMinParallelWork ? 1 : std::max<int64_t>(1, at::get_num_threads());
  // (image, class group) tasks need a few classes per thread: with fewer, a thread's class block is too thin to
  // share its loads, and one parallel region per pass over rows, all classes in each block, is faster. Measured
  // (Xeon, AVX2, 94x125 r5, 256 steps, 2 threads, class groups -> rows): K2 16.2 -> 11.3 ms, K3 20.2 -> 13.9,
  // K6 24.8 -> 21.1, K8 27.6 -> 30.6. On one thread the class path (its sweeps keep the weights in L2) is faster.
  constexpr int64_t kMinClassesPerThread = 4;
  const bool by_class = threads == 1 || g.B * g.K >= kMinClassesPerThread * threads;
  const int64_t groups = std::min<int64_t>(g.K, std::max<int64_t>(1, (threads + g.B - 1) / g.B));
  const int64_t per_group = (g.K + groups - 1) / groups;

  AT_DISPATCH_FLOATING_TYPES(acc_type, "random_walk_forward_cpu", [&] {
    using acc_t = scalar_t;
    walk_weights<acc_t>(a.const_data_ptr<acc_t>(), wts.mutable_data_ptr<acc_t>(), g, offs, sched,
                        static_cast<acc_t>(beta));
    const cpu::WalkArgs<acc_t> args{g.K, g.H, g.Wr, g.S, g.R, g.L, g.plane(), g.RB,
                                    sched.shifts.data(), sched.groups.data(), sched.vectors, wave_bytes(),
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
        at::parallel_for(0, g.B * g.RB, 1, [&](int64_t begin, int64_t end) {
          for (int64_t task = begin; task < end; ++task) {
            const int64_t bi = task / g.RB, y = task % g.RB * g.MR;
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
