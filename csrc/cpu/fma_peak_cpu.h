// The fp32 FMA rate of this machine's CPU at the kernels' active instruction-set level (csrc/cpu/kernels/
// fma_peak_kernel.cpp): what the benchmarks measure every CPU kernel's flop rate against.
#pragma once

namespace grmseg {
namespace cpu {

// GFLOP/s (a multiply-add counts 2) of at::get_num_threads() threads each running the probe at once, the best
// of three runs of about `seconds` / 3 each.
double fma_peak_gflops(double seconds = 0.3);

}  // namespace cpu
}  // namespace grmseg
