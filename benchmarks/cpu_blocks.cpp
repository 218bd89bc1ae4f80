// The building blocks of the GRM CPU kernels (csrc/cpu/kernels/gemm.h) timed alone on one tile, single-threaded,
// with their data in L1/L2: what a block can do before memory, tiling and the rest of a kernel take their share.
// Compiled once per instruction-set level by benchmarks/cpu_blocks.py with setup.py's flags for that level.
//
//   cpu_blocks C K REPEATS   ->   one line per block: name <tab> microseconds per call <tab> flops per call
//
// The shapes are those of one kGrmTile-pixel tile of the GRM kernels (csrc/cpu/kernels/grm_kernel.cpp).

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "cpu/kernels/gemm.h"
#include "cpu/kernels/grm_kernel.h"

namespace {

using namespace grmseg::cpu::CPU_CAPABILITY;
using Clock = std::chrono::steady_clock;

// Median-free but steady enough here: the best of five runs of `repeats` calls, microseconds per call.
template <typename F>
double best_us(const F& f, int repeats) {
  f();
  double best = 1e30;
  for (int run = 0; run < 5; ++run) {
    const auto t0 = Clock::now();
    for (int i = 0; i < repeats; ++i) f();
    const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / repeats;
    best = us < best ? us : best;
  }
  return best;
}

void report(const char* name, double us, double flops) { std::printf("%s\t%.3f\t%.0f\n", name, us, flops); }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s C K REPEATS\n", argv[0]);
    return 2;
  }
  const int64_t C = std::atoll(argv[1]), K = std::atoll(argv[2]);
  const int repeats = std::atoi(argv[3]);
  constexpr int64_t T = grmseg::cpu::kGrmTile, ld = tile_ld<float>(T);
  const int64_t P = 16 * T;  // the map a tile is copied from
  Scratch<float> X(C * ld), Z(2 * K * ld), W(2 * K * C), N(C * 2 * K), H(C * K), map(C * P);
  for (int64_t i = 0; i < C * ld; ++i) X.data()[i] = static_cast<float>(i % 97) * 0.01f;
  for (int64_t i = 0; i < 2 * K * ld; ++i) Z.data()[i] = static_cast<float>(i % 7) * 0.1f;
  for (int64_t i = 0; i < 2 * K * C; ++i) W.data()[i] = N.data()[i] = static_cast<float>(i % 13) * 0.001f;
  const double product = 2.0 * static_cast<double>(K * C * T);  // one [K, C] x [C, T] product

  report("gemm_nn S = W X (K x T, over C)",
         best_us([&] { gemm_nn<float>(K, T, C, W.data(), C, 1, X.data(), ld, nullptr, 0, Z.data(), ld); }, repeats),
         product);
  report("gemm_nn [S; G] = [W; GH] X (2K x T, over C)",
         best_us([&] { gemm_nn<float>(2 * K, T, C, W.data(), C, 1, X.data(), ld, nullptr, 0, Z.data(), ld); },
                 repeats),
         2 * product);
  report("gemm_nn y = X + V^T A (C x T, over K)",
         best_us([&] { gemm_nn<float>(C, T, K, N.data(), K, 1, Z.data(), ld, X.data(), ld, X.data(), ld); },
                 repeats),
         product);
  report("gemm_nn gx = [GH^T W^T] [A; GS] (C x T, over 2K)",
         best_us([&] { gemm_nn<float>(C, T, 2 * K, N.data(), 2 * K, 1, Z.data(), ld, nullptr, 0, X.data(), ld); },
                 repeats),
         2 * product);
  report("gemm_nt h^T += X A^T (K x C, over T)",
         best_us([&] { gemm_nt<float>(K, C, T, Z.data(), ld, X.data(), ld, H.data(), K); }, repeats), product);
  report("softmax_columns (K x T)", best_us([&] { softmax_columns<float>(Z.data(), K, ld, T, T); }, repeats), 0);
  report("load_tile (C x T from a C x 16T map)",
         best_us([&] { load_tile<float, float>(map.data(), P, 1, C, 2 * T, T, T, X.data(), ld); }, repeats), 0);
  // grm_project's forward over the 16 tiles of a [C, 16T] map as its kernel runs them (next tile prefetched during
  // the last product), and the same without the tile copies (every tile's data already in its buffer): the gap is
  // what copying each tile out of a map whose rows alias in the caches costs.
  Scratch<float> bias(K), msum(K);
  for (const bool copy : {true, false}) {
    const double us = best_us(
        [&] {
          for (int64_t p0 = 0; p0 < P; p0 += T) {
            if (copy) load_tile<float, float>(map.data(), P, 1, C, p0, T, T, X.data(), ld);
            const Prefetch next = copy && p0 + T < P ? Prefetch{reinterpret_cast<const char*>(map.data() + p0 + T),
                                                                P * 4, T * 4}
                                                     : Prefetch{};
            fill_rows(Z.data(), K, ld, T, bias.data());
            gemm_nn<float>(K, T, C, W.data(), C, 1, X.data(), ld, Z.data(), ld, Z.data(), ld);
            softmax_columns<float>(Z.data(), K, ld, T, T);
            for (int64_t k = 0; k < K; ++k) msum.data()[k] += sum_vec<float>(Z.data() + k * ld, T);
            gemm_nt<float>(K, C, T, Z.data(), ld, X.data(), ld, H.data(), K, next);
          }
        },
        repeats / 16 + 1);
    report(copy ? "grm_project forward per tile, tiles copied from a map" : "grm_project forward per tile, no copies",
           us / 16, 2 * product);
  }
  float sum = 0;  // keep the results alive
  for (int64_t i = 0; i < C * K; ++i) sum += H.data()[i];
  std::fprintf(stderr, "checksum %g\n", static_cast<double>(sum));
  return 0;
}
