// dense_crf: the input checks of grmseg_C::dense_crf_forward and the constants of pydensecrf's model that every
// backend shares (grmseg/reference.py holds the same values). ATen core headers only.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>

namespace grmseg {
namespace crf {

constexpr float kProbClip = 1e-5f;  // p is clipped to [kProbClip, 1] before -log (pydensecrf unary_from_softmax)
constexpr float kNormEps = 1e-20f;  // n_i = (filter(1)_i + kNormEps)^-1/2 (pydensecrf's NORMALIZE_SYMMETRIC)
constexpr int kMaxDim = 8;          // lattice keys hold up to 8 int16 coordinates (the kernels use 2 and 5)

// unary [B, K, H, W] float, image [B, 3, H, W] uint8 or float, same device; scales > 0, weights finite.
inline void check_inputs(const at::Tensor& unary, const at::Tensor& image, int64_t iterations, double gaussian_sxy,
                         double gaussian_weight, double bilateral_sxy, double bilateral_srgb, double bilateral_weight,
                         c10::DeviceType device_type, const char* who) {
  TORCH_CHECK(unary.dim() == 4, who, ": unary must be [B, K, H, W], got a tensor of shape ", unary.sizes());
  TORCH_CHECK(image.dim() == 4 && image.size(0) == unary.size(0) && image.size(1) == 3 &&
                  image.size(2) == unary.size(2) && image.size(3) == unary.size(3),
              who, ": image must be [B, 3, H, W] = [", unary.size(0), ", 3, ", unary.size(2), ", ", unary.size(3),
              "], got a tensor of shape ", image.sizes());
  const auto ut = unary.scalar_type();
  TORCH_CHECK(ut == at::kFloat || ut == at::kDouble || ut == at::kHalf || ut == at::kBFloat16, who,
              ": unary must be float16, bfloat16, float32 or float64, got ", ut);
  const auto it = image.scalar_type();
  TORCH_CHECK(it == at::kByte || it == at::kFloat || it == at::kDouble || it == at::kHalf || it == at::kBFloat16, who,
              ": image must be uint8 or a float dtype, got ", it);
  TORCH_CHECK(unary.device().type() == device_type, who, ": unary must be a ", c10::DeviceTypeName(device_type),
              " tensor, got one on ", unary.device());
  TORCH_CHECK(image.device() == unary.device(), who, ": image must be on ", unary.device(), ", got ",
              image.device());
  TORCH_CHECK(iterations >= 0, who, ": iterations must be >= 0, got ", iterations);
  TORCH_CHECK(std::isfinite(gaussian_sxy) && gaussian_sxy > 0, who, ": gaussian_sxy must be > 0, got ", gaussian_sxy);
  TORCH_CHECK(std::isfinite(bilateral_sxy) && bilateral_sxy > 0, who, ": bilateral_sxy must be > 0, got ",
              bilateral_sxy);
  TORCH_CHECK(std::isfinite(bilateral_srgb) && bilateral_srgb > 0, who, ": bilateral_srgb must be > 0, got ",
              bilateral_srgb);
  TORCH_CHECK(std::isfinite(gaussian_weight), who, ": gaussian_weight must be finite, got ", gaussian_weight);
  TORCH_CHECK(std::isfinite(bilateral_weight), who, ": bilateral_weight must be finite, got ", bilateral_weight);
}

}  // namespace crf
}  // namespace grmseg
