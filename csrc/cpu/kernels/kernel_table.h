// What every CPU kernel family shares across the glue / kernel boundary: the accumulation type of each input
// dtype, a strided map view, and a table holding one set of function pointers per input dtype (one such table per instruction-set
// level, see csrc/cpu/capability.h).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

namespace grmseg {
namespace cpu {

// fp64 for fp64, fp32 for fp32, fp16 and bf16.
template <typename T>
using acc_type = std::conditional_t<std::is_same_v<T, double>, double, float>;

// A [B, C, P] map, any strides (elements).
template <typename T>
struct MapView {
  const T* data;
  int64_t sb, sc, sp;
};

// Fns<T> for the two accumulation dtypes only (kernel families whose glue converts fp16/bf16 input first).
template <template <typename> class Fns>
struct PerAccDtype {
  Fns<float> f32;
  Fns<double> f64;

  template <typename T>
  const Fns<T>& get() const {
    if constexpr (std::is_same_v<T, float>) {
      return f32;
    } else {
      static_assert(std::is_same_v<T, double>, "an accumulation dtype");
      return f64;
    }
  }
};

// Fns<T> for each floating input dtype T.
template <template <typename> class Fns>
struct PerDtype : PerAccDtype<Fns> {
  Fns<c10::Half> f16;
  Fns<c10::BFloat16> bf16;

  template <typename T>
  const Fns<T>& get() const {
    if constexpr (std::is_same_v<T, c10::Half>) {
      return f16;
    } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
      return bf16;
    } else {
      return PerAccDtype<Fns>::template get<T>();
    }
  }
};

// The table of a kernel file: Fns<T> made by make<T>() for every dtype (constant-initialised).
template <template <typename> class Fns, typename Make>
constexpr PerDtype<Fns> per_dtype(Make make) {
  return {{make.template operator()<float>(), make.template operator()<double>()},
          make.template operator()<c10::Half>(), make.template operator()<c10::BFloat16>()};
}

}  // namespace cpu
}  // namespace grmseg
