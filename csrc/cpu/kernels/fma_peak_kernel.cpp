// The FMA throughput probe, one instruction-set level per compilation (see fma_peak_kernel.h and
// csrc/cpu/capability.h): kChains independent accumulators, each updated with one vector multiply-add per round,
// enough of them to cover the FMA latency on every FMA port, few enough to stay in registers (32 zmm for
// AVX-512, 16 ymm for AVX2; the baseline's Vectorized<float> is two SSE registers and has no FMA instruction:
// a multiply and an add).

#include "cpu/kernels/fma_peak_kernel.h"

#include "cpu/kernels/gemm.h"

namespace grmseg {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

#if defined(CPU_CAPABILITY_AVX512)
constexpr int kChains = 24;
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int kChains = 12;
#else
constexpr int kChains = 6;
#endif

float run(int64_t rounds, float seed) {
  using V = Vec<float>;
  V acc[kChains];
#pragma GCC unroll 32
  for (int i = 0; i < kChains; ++i) acc[i] = V(seed + static_cast<float>(i));
  const V mul(1.0f + 1e-7f * seed), add(1e-7f * seed);  // run-time values: nothing can be folded
  for (int64_t r = 0; r < rounds; ++r) {
#pragma GCC unroll 32
    for (int i = 0; i < kChains; ++i) acc[i] = at::vec::fmadd(acc[i], mul, add);
  }
  V sum = acc[0];
  for (int i = 1; i < kChains; ++i) sum = sum + acc[i];
  return hsum<float>(sum);
}

}  // namespace

extern constinit const FmaPeakFns fma_peak_kernels = {&run, 2 * kChains * kVL<float>};

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace grmseg
