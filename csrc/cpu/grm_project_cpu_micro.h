// Register-blocked micro-kernels of grm_project_forward on the CPU, for one instruction set.
// Included several times by grm_project_cpu.cpp (no include guard), each time with
//   GRMSEG_MICRO_NS    the namespace of this variant (e.g. avx512)
//   GRMSEG_MICRO_ATTR  its function attributes (e.g. __attribute__((target("avx512f,..."))))
//   GRMSEG_MICRO_VB    its vector width in bytes (16, 32 or 64)
// Every function carries the attribute itself: GNU vector code in a function compiled for a narrower target is
// split into narrow pieces before it is inlined, so helpers must not be shared between variants.
// Expects kTile and kKB in the enclosing namespace.

namespace GRMSEG_MICRO_NS {

template <typename T>
struct Vec {
  typedef T V __attribute__((vector_size(GRMSEG_MICRO_VB)));
  static constexpr int64_t VL = GRMSEG_MICRO_VB / static_cast<int64_t>(sizeof(T));
  static constexpr int64_t NB = 2 * VL;  // columns per register block
  static_assert(kTile % NB == 0, "kTile must be a multiple of the column block");
};

template <typename T>
GRMSEG_MICRO_ATTR inline typename Vec<T>::V load(const T* p) {
  typename Vec<T>::V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
GRMSEG_MICRO_ATTR inline void store(T* p, typename Vec<T>::V v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename T>
GRMSEG_MICRO_ATTR inline typename Vec<T>::V splat(T s) {
  return s - typename Vec<T>::V{};  // a plain broadcast: s - 0 folds to s (-0 included)
}

// S[Kp][kTile] = W[Kp][C] X[C][kTile] + bias (W and bias padded to Kp rows with zeros).
template <typename T>
GRMSEG_MICRO_ATTR void logits(const T* __restrict w, const T* __restrict bias, const T* __restrict xt,
                              T* __restrict s, int64_t Kp, int64_t C) {
  using V = typename Vec<T>::V;
  constexpr int64_t VL = Vec<T>::VL, NB = Vec<T>::NB;
  for (int64_t k0 = 0; k0 < Kp; k0 += kKB) {
    const T* wk = w + k0 * C;
    for (int64_t p0 = 0; p0 < kTile; p0 += NB) {
      V a0[kKB], a1[kKB];
#pragma GCC unroll 4
      for (int64_t kk = 0; kk < kKB; ++kk) a0[kk] = a1[kk] = splat<T>(bias[k0 + kk]);
      for (int64_t c = 0; c < C; ++c) {
        const V x0 = load<T>(xt + c * kTile + p0), x1 = load<T>(xt + c * kTile + p0 + VL);
#pragma GCC unroll 4
        for (int64_t kk = 0; kk < kKB; ++kk) {
          const V wv = splat<T>(wk[kk * C + c]);
          a0[kk] += wv * x0;
          a1[kk] += wv * x1;
        }
      }
#pragma GCC unroll 4
      for (int64_t kk = 0; kk < kKB; ++kk) {
        store<T>(s + (k0 + kk) * kTile + p0, a0[kk]);
        store<T>(s + (k0 + kk) * kTile + p0 + VL, a1[kk]);
      }
    }
  }
}

// hloc[Kp][Cp] += A[Kp][np] X^T[np][Cp];  mloc[k] += sum_p A[k][p].
template <typename T>
GRMSEG_MICRO_ATTR void accumulate(const T* __restrict a, const T* __restrict xT, T* __restrict hloc,
                                  T* __restrict mloc, int64_t Kp, int64_t Cp, int64_t np) {
  using V = typename Vec<T>::V;
  constexpr int64_t VL = Vec<T>::VL, NB = Vec<T>::NB;
  for (int64_t k0 = 0; k0 < Kp; k0 += kKB) {
    const T* ak = a + k0 * kTile;
    for (int64_t c0 = 0; c0 < Cp; c0 += NB) {
      V a0[kKB], a1[kKB];
#pragma GCC unroll 4
      for (int64_t kk = 0; kk < kKB; ++kk) a0[kk] = a1[kk] = V{};
      for (int64_t p = 0; p < np; ++p) {
        const V x0 = load<T>(xT + p * Cp + c0), x1 = load<T>(xT + p * Cp + c0 + VL);
#pragma GCC unroll 4
        for (int64_t kk = 0; kk < kKB; ++kk) {
          const V av = splat<T>(ak[kk * kTile + p]);
          a0[kk] += av * x0;
          a1[kk] += av * x1;
        }
      }
#pragma GCC unroll 4
      for (int64_t kk = 0; kk < kKB; ++kk) {
        T* hk = hloc + (k0 + kk) * Cp + c0;
        store<T>(hk, load<T>(hk) + a0[kk]);
        store<T>(hk + VL, load<T>(hk + VL) + a1[kk]);
      }
    }
    for (int64_t kk = 0; kk < kKB; ++kk) {
      T sum = T(0);
      for (int64_t p = 0; p < np; ++p) sum += ak[kk * kTile + p];
      mloc[k0 + kk] += sum;
    }
  }
}

}  // namespace GRMSEG_MICRO_NS
