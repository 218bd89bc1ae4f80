// Shared by the WSSS kernels (cam, local_affinity, boundary_affinity, random_walk) on CPU and CUDA:
// the affinity offsets and the boundary paths of grmseg.reference, in the same order, and the input checks.
// ATen core headers only, so nvcc stays fast.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <utility>
#include <vector>

namespace grmseg {
namespace wsss {

using Offset = std::pair<int64_t, int64_t>;  // (dy, dx)

// NaN propagates as in grmseg.reference (torch.amax, torch.relu): a max over values holding a NaN is NaN, and
// relu(NaN) is NaN. std::max and `v > 0 ? v : 0` would drop it. Host and device code.
template <typename T>
C10_HOST_DEVICE inline T nan_max(T a, T b) {
  return (a > b || a != a) ? a : b;
}
template <typename T>
C10_HOST_DEVICE inline T nan_relu(T v) {
  return v < T(0) ? T(0) : v;
}

// grmseg.reference.affinity_offsets: {(0, x): 1 <= x < r} then {(y, x): 1 <= y < r, -r < x < r, x^2 + y^2 < r^2}
// row by row (34 offsets for r = 5, none for r = 1).
inline std::vector<Offset> affinity_offsets(int64_t radius) {
  std::vector<Offset> out;
  for (int64_t dx = 1; dx < radius; ++dx) out.emplace_back(0, dx);
  for (int64_t dy = 1; dy < radius; ++dy) {
    for (int64_t dx = -radius + 1; dx < radius; ++dx) {
      if (dx * dx + dy * dy < radius * radius) out.emplace_back(dy, dx);
    }
  }
  return out;
}

inline int64_t num_offsets(int64_t radius) { return static_cast<int64_t>(affinity_offsets(radius).size()); }

// The radius whose offset set has `count` entries, or -1 (the count grows strictly with the radius).
inline int64_t radius_from_offsets(int64_t count, int64_t max_radius = 64) {
  for (int64_t r = 1; r <= max_radius; ++r) {
    const int64_t n = num_offsets(r);
    if (n == count) return r;
    if (n > count) break;
  }
  return -1;
}

// grmseg.reference.path_offsets (IRN's PathIndex): every pixel (y, x) of the bounding box of the segment
// (0, 0) -> (dy, dx) with (dy x - dx y)^2 < dy^2 + dx^2 (squared perpendicular distance < 1, exact in integers),
// sorted by (|y| + |x|, y, x): (0, 0) first, (dy, dx) last. Every point lies in the box of p and p + (dy, dx).
inline std::vector<Offset> path_offsets(int64_t dy, int64_t dx) {
  const int64_t length_sq = dy * dy + dx * dx;
  std::vector<Offset> out;
  for (int64_t y = std::min<int64_t>(0, dy); y <= std::max<int64_t>(0, dy); ++y) {
    for (int64_t x = std::min<int64_t>(0, dx); x <= std::max<int64_t>(0, dx); ++x) {
      const int64_t cross = dy * x - dx * y;
      if (length_sq == 0 || cross * cross < length_sq) out.emplace_back(y, x);
    }
  }
  std::sort(out.begin(), out.end(), [](const Offset& a, const Offset& b) {
    const int64_t la = std::abs(a.first) + std::abs(a.second), lb = std::abs(b.first) + std::abs(b.second);
    return la != lb ? la < lb : a < b;
  });
  return out;
}

// The most points of any path of the offsets of `radius`.
inline int64_t max_path_length(int64_t radius) {
  size_t n = 1;
  for (const auto& o : affinity_offsets(radius)) n = std::max(n, path_offsets(o.first, o.second).size());
  return static_cast<int64_t>(n);
}

inline bool is_float_type(at::ScalarType dt) {
  return dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16;
}

inline void check_float(const at::Tensor& t, const char* name, const char* who) {
  TORCH_CHECK(is_float_type(t.scalar_type()), who, ": ", name, " must be float16, bfloat16, float32 or float64, got ",
              t.scalar_type());
}

inline void check_device(const at::Tensor& t, const char* name, c10::DeviceType device_type, const char* who) {
  TORCH_CHECK(t.device().type() == device_type, who, ": ", name, " must be a ", c10::DeviceTypeName(device_type),
              " tensor, got one on ", t.device());
}

inline void check_radius(int64_t radius, const char* who) {
  TORCH_CHECK(radius >= 1 && radius <= 64, who, ": radius must be in [1, 64], got ", radius);
}

// cam_forward inputs: feat [B, C, h, w], weight [K, C] (same dtype), labels [B, K] (any dtype) or none.
inline void check_cam_inputs(const at::Tensor& feat, const at::Tensor& weight, const c10::optional<at::Tensor>& labels,
                             c10::DeviceType device_type, const char* who) {
  TORCH_CHECK(feat.dim() == 4, who, ": feat must be [B, C, h, w], got a tensor of shape ", feat.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == feat.size(1), who, ": weight must be [K, C] with C = ",
              feat.size(1), ", got a tensor of shape ", weight.sizes());
  check_float(feat, "feat", who);
  TORCH_CHECK(weight.scalar_type() == feat.scalar_type(), who, ": weight must have the dtype of feat (",
              feat.scalar_type(), "), got ", weight.scalar_type());
  check_device(feat, "feat", device_type, who);
  TORCH_CHECK(weight.device() == feat.device(), who, ": weight must be on ", feat.device(), ", got ", weight.device());
  if (labels.has_value()) {
    const at::Tensor& l = *labels;
    TORCH_CHECK(l.dim() == 2 && l.size(0) == feat.size(0) && l.size(1) == weight.size(0), who,
                ": labels must be [B, K] = [", feat.size(0), ", ", weight.size(0), "], got a tensor of shape ",
                l.sizes());
    TORCH_CHECK(l.device() == feat.device(), who, ": labels must be on ", feat.device(), ", got ", l.device());
  }
}

// random_walk_forward inputs: cam [B, K, h, w], aff [B, D, h, w] (same dtype and device, D an offset count).
// Returns the radius.
inline int64_t check_walk_inputs(const at::Tensor& cam, const at::Tensor& aff, double beta, int64_t steps,
                                 c10::DeviceType device_type, const char* who) {
  TORCH_CHECK(cam.dim() == 4, who, ": cam must be [B, K, h, w], got a tensor of shape ", cam.sizes());
  TORCH_CHECK(aff.dim() == 4 && aff.size(0) == cam.size(0) && aff.size(2) == cam.size(2) &&
                  aff.size(3) == cam.size(3),
              who, ": aff must be [B, D, h, w] with B, h, w of cam ", cam.sizes(), ", got a tensor of shape ",
              aff.sizes());
  check_float(cam, "cam", who);
  TORCH_CHECK(aff.scalar_type() == cam.scalar_type(), who, ": aff must have the dtype of cam (", cam.scalar_type(),
              "), got ", aff.scalar_type());
  check_device(cam, "cam", device_type, who);
  TORCH_CHECK(aff.device() == cam.device(), who, ": aff must be on ", cam.device(), ", got ", aff.device());
  TORCH_CHECK(beta > 0, who, ": beta must be > 0, got ", beta);
  TORCH_CHECK(steps >= 0, who, ": steps must be >= 0, got ", steps);
  const int64_t radius = radius_from_offsets(aff.size(1));
  TORCH_CHECK(radius >= 1, who, ": aff has ", aff.size(1),
              " offsets, which is no radius's offset count (r=1: 0, r=2: 4, r=3: 12, r=5: 34, ...)");
  return radius;
}

}  // namespace wsss
}  // namespace grmseg
