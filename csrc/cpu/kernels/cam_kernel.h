// cam's CPU kernels (cam_kernel.cpp, one per instruction-set level) and what the glue (csrc/cpu/cam_cpu.cpp)
// hands them.
//
// scores: (image, pixel chunk) tasks. Per tile of kCamTile pixels: S = W_b X (only the classes present in the
//         image: W_b holds their rows), ReLU, written to `raw`, and the task's running max per class.
// normalize: (image, class) rows. raw / (max over the image's chunks + 1e-5), or 0 for an absent class.
#pragma once

#include <cstdint>

#include "cpu/capability.h"
#include "cpu/kernels/kernel_table.h"

namespace grmseg {
namespace cpu {

constexpr int64_t kCamTile = 128;  // pixels per tile: a multiple of every level's vector length

template <typename T>
struct CamArgs {
  int64_t B, C, P, K, chunks, chunk_px;
  MapView<T> feat;             // [B, C, P]
  const acc_type<T>* w;        // [B, K, C]: rows [0, present[b]) are the weights of the image's present classes
  const int64_t* classes;      // [B, K]: the class index of each of those rows
  const int64_t* present;      // [B]
  const uint8_t* keep;         // [B, K]: 1 for a present class
  acc_type<T>* raw;            // [B, K, P] (row of class k of image b at (b K + k) P); may be `out` itself
  acc_type<T>* maxima;         // [B * chunks, K] each task's maximum per class (0 for absent ones)
  T* out;                      // [B, K, P]
};

template <typename T>
struct CamFns {
  void (*scores)(const CamArgs<T>&, int64_t begin, int64_t end);     // tasks [begin, end)
  void (*normalize)(const CamArgs<T>&, int64_t begin, int64_t end);  // (image, class) rows [begin, end)
};

using CamKernels = PerDtype<CamFns>;

}  // namespace cpu
}  // namespace grmseg

GRMSEG_DECLARE_CPU_KERNELS(CamKernels, cam_kernels)
