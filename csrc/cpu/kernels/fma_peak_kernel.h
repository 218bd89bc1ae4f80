// The FMA throughput probe (fma_peak_kernel.cpp, one per instruction-set level) and what the glue
// (csrc/cpu/fma_peak_cpu.cpp) calls: the fp32 rate one core's vector units reach at a level, the ceiling that
// every CPU kernel of that level is measured against (the benchmarks' "of FMA" column). On a machine whose BLAS
// runs wider vectors than a forced level, the BLAS sgemm rate is out of that level's reach; this is not.
#pragma once

#include <cstdint>

#include "cpu/capability.h"

namespace grmseg {
namespace cpu {

struct FmaPeakFns {
  // Runs `rounds` rounds of `flops_per_round` / 2 lane-wise multiply-adds (independent chains, in registers) from
  // `seed`; returns a value depending on all of them, so that none can be left out.
  float (*run)(int64_t rounds, float seed);
  int64_t flops_per_round;
};

}  // namespace cpu
}  // namespace grmseg

GRMSEG_DECLARE_CPU_KERNELS(FmaPeakFns, fma_peak_kernels)
