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
// Layout: the weights are computed once, [B, NN, h, Wr] with Wr = w rounded up to kXB columns (zero weights in
// the extra columns), O(N D) memory. The two state buffers (ping-pong) are [B, K, h + 2R, R + Wr + R], R = r - 1,
// with a zero border, so every neighbour read is in bounds and every inner loop runs over whole blocks of kXB
// columns: for a block, the kXB sums stay in registers over the NN neighbours (no remainder loops); the block's
// weights (NN x kXB values) stay in L1 while they are applied to every class. The extra columns get weight 0
// for every neighbour and hold 0, so they keep writing 0 into the border.
//
// Parallelism: (image, class group) tasks that each run every pass on their own classes (the classes are
// independent): one parallel region for the whole walk, no barrier per pass. With fewer classes than threads,
// one parallel region per pass over (image, row) tasks. A class's arithmetic is the same either way, so the result
// does not depend on the thread count. The pass kernels are compiled for AVX-512, AVX2+FMA and baseline x86-64
// and picked at load time. fp32 state for fp32/fp16/bf16, fp64 for fp64.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "wsss.h"

namespace grmseg {
namespace {

template <typename acc_t>
constexpr int64_t kXB = 64 / static_cast<int64_t>(sizeof(acc_t)) * 4;  // columns per block: 64 fp32, 32 fp64

struct Geometry {
  int64_t B, K, H, W, R, Wr, Hp, S, NN;  // S: row stride of the padded state, Hp: its rows
  int64_t plane() const { return Hp * S; }
};

// wts [B, NN, H, Wr] from aff [B, D, H, W] (contiguous, accumulation type); the normaliser is summed in fp64.
template <typename acc_t>
void walk_weights(const acc_t* __restrict aff, acc_t* __restrict wts, const Geometry& g,
                  const std::vector<wsss::Offset>& offs, acc_t beta) {
  const int64_t D = static_cast<int64_t>(offs.size()), H = g.H, W = g.W, Wr = g.Wr, P = H * W, NN = g.NN;
  at::parallel_for(0, g.B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> dsum(static_cast<size_t>(Wr));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / H, y = task % H;
      const acc_t* ab = aff + bi * D * P;
      acc_t* wb = wts + (bi * NN * H + y) * Wr;  // plane n of this row: wb + n * H * Wr
      std::fill(dsum.begin(), dsum.end(), 1.0);
      for (int64_t d = 0; d < D; ++d) {
        const int64_t dy = offs[d].first, dx = offs[d].second;
        acc_t* fwd = wb + d * H * Wr;
        acc_t* bwd = wb + (D + d) * H * Wr;
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
        acc_t* wn = wb + n * H * Wr;
        for (int64_t x = 0; x < W; ++x) wn[x] = static_cast<acc_t>(static_cast<double>(wn[x]) * dsum[x]);
      }
    }
  });
}

// One pass of rows [y0, y1) of classes [k0, k1) of image bi: src -> dst (padded states), shifts nb [NN][2].
template <typename acc_t>
inline __attribute__((always_inline)) void walk_rows(const acc_t* __restrict src, acc_t* __restrict dst,
                                                     const acc_t* __restrict wts, const Geometry& g, int64_t bi,
                                                     int64_t k0, int64_t k1, int64_t y0, int64_t y1,
                                                     const int64_t* __restrict nb) {
  constexpr int64_t XB = kXB<acc_t>;
  const int64_t H = g.H, Wr = g.Wr, S = g.S, R = g.R, NN = g.NN, plane = g.plane();
  for (int64_t y = y0; y < y1; ++y) {
    const acc_t* wrow = wts + (bi * NN * H + y) * Wr;
    for (int64_t x0 = 0; x0 < Wr; x0 += XB) {
      for (int64_t k = k0; k < k1; ++k) {
        const acc_t* __restrict in = src + (bi * g.K + k) * plane + (y + R) * S + R + x0;  // pixel (y, x0)
        acc_t acc[XB];
        for (int64_t i = 0; i < XB; ++i) acc[i] = acc_t(0);
        for (int64_t n = 0; n < NN; ++n) {
          const acc_t* __restrict wn = wrow + n * H * Wr + x0;
          const acc_t* __restrict yn = in + nb[n];  // nb[n] = sy * S + sx
#pragma GCC unroll 64
          for (int64_t i = 0; i < XB; ++i) acc[i] += wn[i] * (yn[i] - in[i]);
        }
        acc_t* out = dst + (bi * g.K + k) * plane + (y + R) * S + R + x0;
#pragma GCC unroll 64
        for (int64_t i = 0; i < XB; ++i) out[i] = in[i] + acc[i];
      }
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GRMSEG_WALK_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GRMSEG_WALK_CLONES
#endif

// Per-ISA entry points: every pass over whole maps of classes [k0, k1) of image bi (bufs[s % 2] ->
// bufs[(s + 1) % 2]), or one pass over rows [y0, y1) of every class of image bi.
#define GRMSEG_WALK_ENTRY(T)                                                                                       \
  GRMSEG_WALK_CLONES void walk_classes(T* buf0, T* buf1, const T* wts, const Geometry& g, int64_t bi, int64_t k0, \
                                       int64_t k1, const int64_t* nb, int64_t steps) {                            \
    T* bufs[2] = {buf0, buf1};                                                                                     \
    for (int64_t s = 0; s < steps; ++s) walk_rows<T>(bufs[s % 2], bufs[(s + 1) % 2], wts, g, bi, k0, k1, 0, g.H, nb); \
  }                                                                                                                \
  GRMSEG_WALK_CLONES void walk_row_range(const T* src, T* dst, const T* wts, const Geometry& g, int64_t bi,       \
                                         int64_t y0, int64_t y1, const int64_t* nb) {                             \
    walk_rows<T>(src, dst, wts, g, bi, 0, g.K, y0, y1, nb);                                                        \
  }

GRMSEG_WALK_ENTRY(float)
GRMSEG_WALK_ENTRY(double)

}  // namespace

at::Tensor random_walk_forward_cpu(const at::Tensor& cam, const at::Tensor& aff, double beta, int64_t steps) {
  const char* who = "grmseg_C::random_walk_forward (CPU)";
  const int64_t radius = wsss::check_walk_inputs(cam, aff, beta, steps, c10::DeviceType::CPU, who);
  if (steps == 0 || cam.numel() == 0) return cam.clone(at::MemoryFormat::Contiguous);
  const auto offs = wsss::affinity_offsets(radius);
  const at::ScalarType acc_type = at::toOpMathType(cam.scalar_type());
  const int64_t xb = acc_type == at::kDouble ? kXB<double> : kXB<float>;
  Geometry g;
  g.B = cam.size(0);
  g.K = cam.size(1);
  g.H = cam.size(2);
  g.W = cam.size(3);
  g.R = radius - 1;
  g.Wr = (g.W + xb - 1) / xb * xb;
  g.Hp = g.H + 2 * g.R;
  g.S = g.Wr + 2 * g.R;
  const int64_t D = static_cast<int64_t>(offs.size());
  g.NN = 2 * D;

  std::vector<int64_t> nb;  // the shifts as offsets in the padded state
  for (const auto& o : offs) nb.push_back(o.first * g.S + o.second);
  for (const auto& o : offs) nb.push_back(-o.first * g.S - o.second);

  const at::Tensor a = aff.to(acc_type).contiguous();
  at::Tensor wts = at::empty({g.B, g.NN, g.H, g.Wr}, cam.options().dtype(acc_type));
  at::Tensor ping = at::zeros({g.B, g.K, g.Hp, g.S}, cam.options().dtype(acc_type));
  at::Tensor pong = at::zeros_like(ping);
  ping.narrow(2, g.R, g.H).narrow(3, g.R, g.W).copy_(cam);

  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const bool by_class = g.B * g.K >= threads;
  const int64_t groups = std::min<int64_t>(g.K, std::max<int64_t>(1, (threads + g.B - 1) / g.B));
  const int64_t per_group = (g.K + groups - 1) / groups;

  AT_DISPATCH_FLOATING_TYPES(acc_type, "random_walk_forward_cpu", [&] {
    using acc_t = scalar_t;
    walk_weights<acc_t>(a.const_data_ptr<acc_t>(), wts.mutable_data_ptr<acc_t>(), g, offs, static_cast<acc_t>(beta));
    const acc_t* wp = wts.const_data_ptr<acc_t>();
    acc_t* bufs[2] = {ping.mutable_data_ptr<acc_t>(), pong.mutable_data_ptr<acc_t>()};
    if (by_class) {
      at::parallel_for(0, g.B * groups, 1, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t bi = task / groups, k0 = (task % groups) * per_group, k1 = std::min(g.K, k0 + per_group);
          if (k0 < k1) walk_classes(bufs[0], bufs[1], wp, g, bi, k0, k1, nb.data(), steps);
        }
      });
    } else {
      for (int64_t s = 0; s < steps; ++s) {
        at::parallel_for(0, g.B * g.H, 1, [&](int64_t begin, int64_t end) {
          for (int64_t task = begin; task < end; ++task) {
            const int64_t bi = task / g.H, y = task % g.H;
            walk_row_range(bufs[s % 2], bufs[(s + 1) % 2], wp, g, bi, y, y + 1, nb.data());
          }
        });
      }
    }
  });
  const at::Tensor& result = steps % 2 == 0 ? ping : pong;
  return result.narrow(2, g.R, g.H).narrow(3, g.R, g.W).to(cam.scalar_type()).contiguous();
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
