// graph_conv's CPU kernels, one instruction-set level per compilation (see graph_conv_kernel.h and
// csrc/cpu/capability.h). One task per batch element; the [K, K] products are gemm_nn / gemm_nt register blocks
// (csrc/cpu/kernels/gemm.h) with the activation, its mask and the bias sums fused around them.

#include "cpu/kernels/graph_conv_kernel.h"

#include "cpu/kernels/gemm.h"

namespace grmseg {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

constexpr double kSlope = 0.2;  // LeakyReLU (csrc/graph_conv.h)

// act(v) for act = 0 (none), 1 (relu), 2 (leaky relu).
template <typename T>
inline Vec<T> activate(const Vec<T>& v, int64_t act) {
  if (act == 0) return v;
  const Vec<T> zero(T(0));
  if (act == 1) return at::vec::maximum(v, zero);
  return Vec<T>::blendv(v * Vec<T>(T(kSlope)), v, v > zero);
}

template <typename T>
void graph_forward(const GraphConvForwardArgs<T>& a, int64_t begin, int64_t end) {
  using acc_t = acc_type<T>;
  constexpr int64_t VL = kVL<acc_t>;
  const int64_t K = a.K, D = a.D, Dp = a.Dp;
  Scratch<acc_t> tmp(K * Dp);
  for (int64_t b = begin; b < end; ++b) {
    // tmp = adj zw_b + bias (bias as a row broadcast over the K rows: row stride 0)
    gemm_nn<acc_t>(K, Dp, K, a.adj, K, 1, a.zw + b * K * Dp, Dp, a.bias, 0, tmp.data(), Dp);
    T* out = a.out + b * K * D;
    for (int64_t k = 0; k < K; ++k) {
      acc_t* row = tmp.data() + k * Dp;
      for (int64_t d = 0; d < Dp; d += VL) activate(Vec<acc_t>::loadu(row + d), a.act).store(row + d);
      for (int64_t d = 0; d < D; ++d) out[k * D + d] = static_cast<T>(row[d]);
    }
  }
}

template <typename T>
void graph_backward_pre(const GraphConvBackwardArgs<T>& a, int64_t begin, int64_t end) {
  using acc_t = acc_type<T>;
  const int64_t K = a.K, D = a.D, Dp = a.Dp;
  const acc_t slope = static_cast<acc_t>(kSlope);
  for (int64_t b = begin; b < end; ++b) {
    acc_t* gpre = a.gpre + b * K * Dp;
    acc_t* gbias = a.gbias + b * Dp;
    std::fill(gbias, gbias + Dp, acc_t(0));
    for (int64_t k = 0; k < K; ++k) {
      const T* go = a.gout + (b * K + k) * D;
      const T* o = a.out + (b * K + k) * D;
      acc_t* g = gpre + k * Dp;
      for (int64_t d = 0; d < D; ++d) {
        const acc_t gv = static_cast<acc_t>(go[d]);
        const bool pos = static_cast<acc_t>(o[d]) > acc_t(0);
        g[d] = a.act == 0 ? gv : a.act == 1 ? (pos ? gv : acc_t(0)) : (pos ? gv : gv * slope);
        gbias[d] += g[d];
      }
      std::fill(g + D, g + Dp, acc_t(0));
    }
    // gzw = adj^T gpre: A(i, j) = adj[j][i]
    gemm_nn<acc_t>(K, Dp, K, a.adj, 1, K, gpre, Dp, nullptr, 0, a.gzw + b * K * Dp, Dp);
  }
}

template <typename T>
void graph_backward_post(const GraphConvBackwardArgs<T>& a, int64_t begin, int64_t end) {
  using acc_t = acc_type<T>;
  const int64_t K = a.K, F = a.F, Fp = a.Fp;
  Scratch<acc_t> tmp(K * Fp);
  for (int64_t b = begin; b < end; ++b) {
    const acc_t* u = a.u + b * K * Fp;
    gemm_nn<acc_t>(K, Fp, K, a.adj, 1, K, u, Fp, nullptr, 0, tmp.data(), Fp);  // gz = adj^T u
    T* gz = a.gz + b * K * F;
    for (int64_t k = 0; k < K; ++k)
      for (int64_t f = 0; f < F; ++f) gz[k * F + f] = static_cast<T>(tmp.data()[k * Fp + f]);
    // gadj[i][j] = sum_f u[i][f] z[j][f]: gemm_nt stores L R^T transposed, so L = z, R = u
    acc_t* gadj = a.gadj + b * K * K;
    std::fill(gadj, gadj + K * K, acc_t(0));
    gemm_nt<acc_t>(K, K, Fp, a.z + b * K * Fp, Fp, u, Fp, gadj, K);
  }
}

}  // namespace

extern constinit const GraphConvKernels graph_conv_kernels =
    per_dtype<GraphConvFns>([]<typename T>() -> GraphConvFns<T> {
      return {&graph_forward<T>, &graph_backward_pre<T>, &graph_backward_post<T>};
    });

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace grmseg
