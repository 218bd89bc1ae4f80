// fma_peak_gflops: the probe of csrc/cpu/kernels/fma_peak_kernel.cpp at the active level, on every intra-op thread.

#include "cpu/fma_peak_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "cpu/kernels/fma_peak_kernel.h"

namespace grmseg {
namespace cpu {
namespace {

double elapsed(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

}  // namespace

double fma_peak_gflops(double seconds, Capability level, int threads_wanted) {
  const FmaPeakFns& probe = GRMSEG_CPU_KERNELS_AT(fma_peak_kernels, level);
  std::vector<float> sink(1);
  // rounds for about a third of `seconds` on one thread (every thread runs as many)
  int64_t rounds = 1 << 14;
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    sink[0] += probe.run(rounds, 1.0f);
    const double dt = elapsed(t0);
    if (dt >= 0.01 || rounds >= (int64_t{1} << 40)) {
      rounds = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(rounds) * seconds / 3 / std::max(dt, 1e-9)));
      break;
    }
    rounds *= 4;
  }
  const int64_t threads = std::max(1, threads_wanted > 0 ? threads_wanted : at::get_num_threads());
  sink.assign(static_cast<size_t>(threads), 0.0f);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) sink[static_cast<size_t>(t)] += probe.run(rounds, 1.0f + static_cast<float>(t));
    });
    const double dt = elapsed(t0);
    best = std::max(best, static_cast<double>(threads) * static_cast<double>(rounds) *
                              static_cast<double>(probe.flops_per_round) / dt);
  }
  volatile float keep = sink[0];  // the results are used
  (void)keep;
  return best / 1e9;
}

}  // namespace cpu
}  // namespace grmseg
