// graph_conv's CPU kernels (graph_conv_kernel.cpp, one per instruction-set level) and what the glue
// (csrc/cpu/graph_conv_cpu.cpp) hands them: plain pointers, one task per batch element.
//
// The glue does the two large products of each pass (z W forward; gpre W^T and z^T gzw backward) with ATen's
// BLAS on fixed blocks (deterministic); the kernels do everything around them with the [K, K] adjacency:
//   forward       out = act(adj zw + bias)
//   backward_pre  gpre = gout * act'(out);  gzw = adj^T gpre;  gbias += colsum(gpre)
//   backward_post gz = adj^T u  (u = gpre W^T);  gadj += u z^T  (= gpre (z W)^T, without recomputing z W)
// Row widths Dp, Fp are D, F rounded up to whole vectors of every level (the padding is zero).
#pragma once

#include <cstdint>

#include "cpu/capability.h"
#include "cpu/kernels/kernel_table.h"

namespace grmseg {
namespace cpu {

constexpr int64_t kGraphPad = 16;  // row widths are multiples of this (every level's vector length divides it)

template <typename T>
struct GraphConvForwardArgs {
  int64_t K, D, Dp, act;
  const acc_type<T>* adj;   // [K, K]
  const acc_type<T>* zw;    // [B, K, Dp]
  const acc_type<T>* bias;  // [Dp] or null
  T* out;                   // [B, K, D]
};

template <typename T>
struct GraphConvBackwardArgs {
  int64_t K, D, Dp, F, Fp, act;
  const acc_type<T>* adj;  // [K, K]
  const T* gout;           // [B, K, D]
  const T* out;            // [B, K, D]
  acc_type<T>* gpre;       // [B, K, Dp]   written by backward_pre
  acc_type<T>* gzw;        // [B, K, Dp]   written by backward_pre
  acc_type<T>* gbias;      // [B, Dp]      per batch element, written by backward_pre
  const acc_type<T>* u;    // [B, K, Fp]   gpre W^T, read by backward_post
  const acc_type<T>* z;    // [B, K, Fp]
  T* gz;                   // [B, K, F]    written by backward_post
  acc_type<T>* gadj;       // [B, K, K]    per batch element, written by backward_post
};

template <typename T>
struct GraphConvFns {
  void (*forward)(const GraphConvForwardArgs<T>&, int64_t begin, int64_t end);
  void (*backward_pre)(const GraphConvBackwardArgs<T>&, int64_t begin, int64_t end);
  void (*backward_post)(const GraphConvBackwardArgs<T>&, int64_t begin, int64_t end);
};

using GraphConvKernels = PerDtype<GraphConvFns>;

}  // namespace cpu
}  // namespace grmseg

GRMSEG_DECLARE_CPU_KERNELS(GraphConvKernels, graph_conv_kernels)
