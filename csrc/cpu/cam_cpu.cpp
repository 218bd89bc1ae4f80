// cam_forward on the CPU, its shape function (Meta) and their registrations.
//
//   feat [B, C, h, w], weight [K, C], labels [B, K] or none  ->  cam [B, K, h, w]
//   cam[b, k] = relu(weight feat[b])[k] / (spatial max + 1e-5), zero for the classes absent from labels.
//
// Pass 1: (batch, pixel chunk) tasks under at::parallel_for. A chunk is walked in tiles of kTile pixels: the tile
// of feat is converted to the accumulation type once (any strides), the K x kTile scores are accumulated over
// channel blocks of kCB (so the feat block stays in L1), ReLU'd and written, and the chunk's per-class max kept.
// Pass 2: per (batch, class) the chunk maxima are reduced in a fixed order and the scores divided and masked.
// Deterministic (the chunking depends on the shapes only). fp32 accumulation for half inputs, fp64 for fp64.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "wsss.h"

namespace grmseg {
namespace {

constexpr int64_t kTile = 64;   // pixels per tile
constexpr int64_t kCB = 64;     // channels per block
constexpr double kCamEps = 1e-5;

template <typename scalar_t, typename acc_t>
void project_chunk(const scalar_t* __restrict fb, int64_t sc, int64_t sh, int64_t sw, int64_t W, const acc_t* __restrict w,
                   int64_t K, int64_t C, int64_t P, int64_t p_begin, int64_t p_end, acc_t* __restrict raw_b,
                   acc_t* __restrict chunk_max, std::vector<acc_t>& xt, std::vector<acc_t>& s) {
  for (int64_t k = 0; k < K; ++k) chunk_max[k] = acc_t(0);
  for (int64_t p0 = p_begin; p0 < p_end; p0 += kTile) {
    const int64_t np = std::min(kTile, p_end - p0);
    // 1. the feat tile [C][kTile] in the accumulation type, zero-padded
    int64_t poff[kTile];
    for (int64_t i = 0; i < np; ++i) poff[i] = ((p0 + i) / W) * sh + ((p0 + i) % W) * sw;
    for (int64_t c = 0; c < C; ++c) {
      acc_t* dst = xt.data() + c * kTile;
      const scalar_t* src = fb + c * sc;
      for (int64_t i = 0; i < np; ++i) dst[i] = static_cast<acc_t>(src[poff[i]]);
      for (int64_t i = np; i < kTile; ++i) dst[i] = acc_t(0);
    }
    // 2. s[k][p] = sum_c w[k][c] x[c][p], channel block by channel block
    std::fill(s.begin(), s.end(), acc_t(0));
    for (int64_t c0 = 0; c0 < C; c0 += kCB) {
      const int64_t c1 = std::min(C, c0 + kCB);
      for (int64_t k = 0; k < K; ++k) {
        acc_t* __restrict sk = s.data() + k * kTile;
        const acc_t* wk = w + k * C;
        for (int64_t c = c0; c < c1; ++c) {
          const acc_t wkc = wk[c];
          const acc_t* __restrict xc = xt.data() + c * kTile;
          for (int64_t i = 0; i < kTile; ++i) sk[i] += wkc * xc[i];
        }
      }
    }
    // 3. ReLU, store, running max
    for (int64_t k = 0; k < K; ++k) {
      const acc_t* sk = s.data() + k * kTile;
      acc_t* out = raw_b + k * P + p0;
      acc_t mx = chunk_max[k];
      for (int64_t i = 0; i < np; ++i) {
        const acc_t v = wsss::nan_relu(sk[i]);
        out[i] = v;
        mx = wsss::nan_max(mx, v);
      }
      chunk_max[k] = mx;
    }
  }
}

}  // namespace

at::Tensor cam_forward_cpu(const at::Tensor& feat, const at::Tensor& weight, const std::optional<at::Tensor>& labels) {
  const char* who = "grmseg_C::cam_forward (CPU)";
  wsss::check_cam_inputs(feat, weight, labels, c10::DeviceType::CPU, who);
  const int64_t B = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3), K = weight.size(0);
  const int64_t P = H * W;
  at::Tensor out = at::empty({B, K, H, W}, feat.options());
  if (out.numel() == 0) return out;
  if (C == 0) return out.zero_();

  const at::ScalarType acc_type = at::toOpMathType(feat.scalar_type());
  const at::Tensor w_acc = weight.to(acc_type).contiguous();
  const bool direct = acc_type == feat.scalar_type();
  at::Tensor raw = direct ? out : at::empty({B, K, H, W}, feat.options().dtype(acc_type));
  std::vector<uint8_t> keep(static_cast<size_t>(B * K), 1);
  if (labels.has_value()) {
    const at::Tensor present = labels->ne(0).to(at::kByte).contiguous();
    std::copy(present.const_data_ptr<uint8_t>(), present.const_data_ptr<uint8_t>() + B * K, keep.begin());
  }

  // Chunking: a function of the shapes only.
  const int64_t tiles = (P + kTile - 1) / kTile;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(tiles, (64 + B - 1) / B));
  const int64_t chunk_px = ((tiles + chunks - 1) / chunks) * kTile;
  const int64_t nchunks = (P + chunk_px - 1) / chunk_px;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "cam_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* fp = feat.const_data_ptr<scalar_t>();
    const int64_t sb = feat.stride(0), sc = feat.stride(1), sh = feat.stride(2), sw = feat.stride(3);
    const acc_t* wp = w_acc.const_data_ptr<acc_t>();
    acc_t* rp = raw.mutable_data_ptr<acc_t>();
    std::vector<acc_t> maxima(static_cast<size_t>(B * nchunks * K));

    at::parallel_for(0, B * nchunks, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> xt(static_cast<size_t>(C * kTile)), s(static_cast<size_t>(K * kTile));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / nchunks, ci = task % nchunks;
        const int64_t p_begin = ci * chunk_px, p_end = std::min(P, p_begin + chunk_px);
        project_chunk<scalar_t, acc_t>(fp + bi * sb, sc, sh, sw, W, wp, K, C, P, p_begin, p_end, rp + bi * K * P,
                                       maxima.data() + task * K, xt, s);
      }
    });

    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * K, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t bi = i / K, k = i % K;
        acc_t mx = acc_t(0);
        for (int64_t ci = 0; ci < nchunks; ++ci) mx = wsss::nan_max(mx, maxima[(bi * nchunks + ci) * K + k]);
        const acc_t denom = mx + static_cast<acc_t>(kCamEps);
        const acc_t* src = rp + i * P;
        scalar_t* dst = op + i * P;
        if (keep[i]) {
          for (int64_t p = 0; p < P; ++p) dst[p] = static_cast<scalar_t>(src[p] / denom);
        } else {
          for (int64_t p = 0; p < P; ++p) dst[p] = static_cast<scalar_t>(0);
        }
      }
    });
  });
  return out;
}

at::Tensor cam_forward_meta(const at::Tensor& feat, const at::Tensor& weight, const std::optional<at::Tensor>& labels) {
  const char* who = "grmseg_C::cam_forward";
  TORCH_CHECK(feat.dim() == 4, who, ": feat must be [B, C, h, w], got a tensor of shape ", feat.sym_sizes());
  TORCH_CHECK(weight.dim() == 2, who, ": weight must be [K, C], got a tensor of shape ", weight.sym_sizes());
  TORCH_CHECK(weight.scalar_type() == feat.scalar_type(), who, ": weight must have the dtype of feat (",
              feat.scalar_type(), "), got ", weight.scalar_type());
  return at::empty_symint({feat.sym_size(0), weight.sym_size(0), feat.sym_size(2), feat.sym_size(3)}, feat.options());
}

}  // namespace grmseg

TORCH_LIBRARY_IMPL(grmseg_C, CPU, m) { m.impl("cam_forward", &grmseg::cam_forward_cpu); }

TORCH_LIBRARY_IMPL(grmseg_C, Meta, m) { m.impl("cam_forward", &grmseg::cam_forward_meta); }
