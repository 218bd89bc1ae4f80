// Register-blocked building blocks of grmseg's CPU kernels, written once with at::vec::Vectorized and compiled
// once per instruction-set level (kernel files only: see csrc/cpu/capability.h).
//
//   gemm_nn   C[m][n] = C0 + sum_k A(i, k) B[k][n]       A read as broadcasts, B and C rows contiguous
//   gemm_nt   C[m][n] += sum_p L[i][p] R[j][p]             both operands contiguous along the reduction
//   softmax_columns / softmax_backward_columns             per column (pixel) over the rows (classes)
//   load_tile / store_tile                                 a [C][np] slice of a strided map to a tile buffer
//                                                          (accumulation type, zero-padded to whole vectors), back
// Column counts of gemm_nn and reduction lengths of gemm_nt are whole vectors (callers pad with zeros). Every
// reduction runs in a fixed order that depends on the shapes only.
#pragma once

#ifndef CPU_CAPABILITY
#error "kernel files are compiled with CPU_CAPABILITY=<level> (see csrc/cpu/capability.h)"
#endif

#pragma GCC diagnostic ignored "-Wunknown-pragmas"  // the ATen vector headers carry clang / CUDA pragmas
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>

namespace grmseg {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
constexpr int64_t kVL = Vec<T>::size();

// Register blocks per level: gemm_nn keeps kNnRows x kNnVecs accumulators (plus kNnVecs rows of B and one
// broadcast), gemm_nt kNtRows x kNtCols (plus kNtCols rows of R and one of L). 16 ymm (AVX2), 32 zmm (AVX-512);
// the baseline's Vectorized is two SSE registers wide.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kNnRows = 12, kNnVecs = 2, kNtRows = 4, kNtCols = 6;
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int kNnRows = 6, kNnVecs = 2, kNtRows = 4, kNtCols = 3;
#else
constexpr int kNnRows = 4, kNnVecs = 1, kNtRows = 2, kNtCols = 3;
#endif

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// This thread's stack of scratch memory, reused from call to call: a kernel's buffers are carved from one region
// instead of being allocated (and faulted in) anew on every call. The region grows to the largest total a thread
// has held at once (up to kMaxBytes a thread), the next time the stack is empty; requests that do not fit meanwhile
// are allocated by the caller.
class ScratchStack {
 public:
  static constexpr size_t kMaxBytes = size_t(16) << 20;

  static ScratchStack& mine() {
    thread_local ScratchStack stack;
    return stack;
  }
  // `bytes` (a multiple of 64) aligned to 64, or null when they do not fit
  void* push(size_t bytes) {
    if (top_ == 0 && want_ > cap_) grow();
    if (top_ + bytes <= kMaxBytes) want_ = std::max(want_, top_ + bytes);
    if (bytes > cap_ - top_) return nullptr;
    void* p = base_ + top_;
    top_ += bytes;
    return p;
  }
  void pop(size_t bytes) { top_ -= bytes; }
  ~ScratchStack() { std::free(base_); }

 private:
  void grow() {
    std::free(base_);
    cap_ = (want_ + 65535) / 65536 * 65536;
    base_ = static_cast<char*>(std::aligned_alloc(64, cap_));
    if (base_ == nullptr) cap_ = 0;
  }
  char* base_ = nullptr;
  size_t cap_ = 0, top_ = 0, want_ = 0;
};

// Zero-filled scratch aligned to a cache line (vector rows then start on line boundaries), from this thread's
// ScratchStack where it fits. Scratch objects are locals, so they are released in the reverse order of their
// construction, as the stack requires.
template <typename T>
class Scratch {
 public:
  explicit Scratch(int64_t n)
      : bytes_(static_cast<size_t>(round_up(std::max<int64_t>(n, 1) * static_cast<int64_t>(sizeof(T)), 64))) {
    p_ = static_cast<T*>(ScratchStack::mine().push(bytes_));
    if (p_ == nullptr) {
      own_ = true;
      p_ = static_cast<T*>(std::aligned_alloc(64, bytes_));
      if (p_ == nullptr) throw std::bad_alloc();
    }
    std::memset(static_cast<void*>(p_), 0, bytes_);
  }
  ~Scratch() {
    if (own_) {
      std::free(p_);
    } else {
      ScratchStack::mine().pop(bytes_);
    }
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* data() const { return p_; }

 private:
  size_t bytes_;
  T* p_ = nullptr;
  bool own_ = false;
};

// Splits n rows into ceil(n / max_rows) blocks of nearly equal size; calls f(first row, rows).
template <typename F>
inline void for_row_blocks(int64_t n, int64_t max_rows, const F& f) {
  if (n <= 0) return;
  const int64_t blocks = (n + max_rows - 1) / max_rows;
  const int64_t base = n / blocks, extra = n % blocks;
  int64_t i0 = 0;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t rows = base + (blk < extra ? 1 : 0);
    f(i0, rows);
    i0 += rows;
  }
}

// ------------------------------------------------------------------------------------------------ prefetch
// Data a caller needs after the current product (the next tile of a map: rows of `stride` bytes, `bytes` of each
// row), prefetched into L2 a few lines at a time while the product runs, so that reading it later overlaps with
// arithmetic now. A product walks its register blocks; block (i, j) fetches the lines of rows [i0, i0 + M) that lie
// in its share [j * step, (j + 1) * step) of each row. Default: nothing.
struct Prefetch {
  const char* p = nullptr;
  int64_t stride = 0, bytes = 0;
};

inline void prefetch_rows(const Prefetch& pf, int64_t row0, int64_t rows, int64_t from, int64_t to) {
  to = std::min(to, pf.bytes);
  for (int64_t r = row0; r < row0 + rows; ++r) {
    const char* row = pf.p + r * pf.stride;
    for (int64_t off = from; off < to; off += 64) __builtin_prefetch(row + off, 0, 2);
  }
}

// ------------------------------------------------------------------------------------------------ streaming
// Whether this level has streaming (non-temporal) stores: they write a line without reading it first, and do not
// keep it in the caches (for outputs too large for them anyway).
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
constexpr bool kHasStreamingStores = true;
#else
constexpr bool kHasStreamingStores = false;
#endif

// v to p (aligned to the vector) with a streaming store where the level has them, else a plain one.
template <typename T>
inline void stream_store(T* p, const Vec<T>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    _mm512_stream_ps(p, v);
  } else {
    _mm512_stream_pd(p, v);
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    _mm256_stream_ps(p, v);
  } else {
    _mm256_stream_pd(p, v);
  }
#else
  v.store(p);
#endif
}

// Whether rows of stride ld starting at p can take streaming stores of whole vectors.
template <typename T>
inline bool can_stream(const T* p, int64_t ld) {
  constexpr int64_t bytes = kVL<T> * static_cast<int64_t>(sizeof(T));
  return kHasStreamingStores && reinterpret_cast<uintptr_t>(p) % bytes == 0 && (ld * sizeof(T)) % bytes == 0;
}

// Orders this thread's streaming stores before whatever follows (another thread may read the data next).
inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  _mm_sfence();
#endif
}

// ------------------------------------------------------------------------------------------------ gemm_nn
// Rows [0, M) of C over `blocks` column blocks of NV vectors: C[i][j] = C0[i][j] (or 0 when c0 is null) +
// sum_k A(i, k) B[k][j]. C0 may alias C. Block j also prefetches rows [pf_row, pf_row + pf_rows) of pf, its share
// of pf_step bytes. With Pack, every vector of B read is also stored at the same place of pk (rows of ldpk): B
// copied on the way.
template <typename T, int M, int NV, bool Pack>
void nn_block(int64_t kd, const T* a, int64_t sa, int64_t sk, const T* b, int64_t ldb, const T* c0,
              int64_t ldc0, T* c, int64_t ldc, int64_t blocks, const Prefetch* pf, int64_t pf_row,
              int64_t pf_rows, int64_t pf_step, T* pk, int64_t ldpk) {
  using V = Vec<T>;
  constexpr int64_t VL = kVL<T>, NB = NV * VL;
  for (int64_t jb = 0; jb < blocks; ++jb) {
    if (pf != nullptr) prefetch_rows(*pf, pf_row, pf_rows, jb * pf_step, (jb + 1) * pf_step);
    const int64_t j0 = jb * NB;
    V acc[M][NV];
    if (c0 != nullptr) {
#pragma GCC unroll 16
      for (int i = 0; i < M; ++i)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[i][v] = V::loadu(c0 + i * ldc0 + j0 + v * VL);
    } else {
#pragma GCC unroll 16
      for (int i = 0; i < M; ++i)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[i][v] = V(T(0));
    }
    const T* bj = b + j0;
    for (int64_t k = 0; k < kd; ++k) {
      const T* bk = bj + k * ldb;
      const T* ak = a + k * sk;
      V bv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) bv[v] = V::loadu(bk + v * VL);
      if constexpr (Pack) {
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) bv[v].store(pk + k * ldpk + j0 + v * VL);
      }
#pragma GCC unroll 16
      for (int i = 0; i < M; ++i) {
        const V ai(ak[i * sa]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[i][v] = at::vec::fmadd(ai, bv[v], acc[i][v]);
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v].store(c + i * ldc + j0 + v * VL);
  }
}

template <typename T>
using NnFn = void (*)(int64_t, const T*, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T*, int64_t,
                      int64_t, const Prefetch*, int64_t, int64_t, int64_t, T*, int64_t);

template <typename T, int NV, bool Pack, int... R>
constexpr std::array<NnFn<T>, sizeof...(R)> nn_table(std::integer_sequence<int, R...>) {
  return {&nn_block<T, R + 1, NV, Pack>...};
}

// C[m][n] = C0[m][n] (or 0 when c0 is null) + sum_{k < kd} A(i, k) B[k][n], A(i, k) = a[i * sa + k * sk].
// n is a multiple of the vector length. c0 may be c. `next`: prefetched on the way, rows [0, m) (see Prefetch).
// `pack` (rows of ld_pack): B [kd][n] is also copied there, by the first block of rows as it reads B, and the other
// blocks read it from there. (For a B whose rows alias in the caches, a power of two apart: read once where it
// lies, then from the copy.)
template <typename T>
void gemm_nn(int64_t m, int64_t n, int64_t kd, const T* a, int64_t sa, int64_t sk, const T* b, int64_t ldb,
             const T* c0, int64_t ldc0, T* c, int64_t ldc, const Prefetch& next = {}, T* pack = nullptr,
             int64_t ld_pack = 0) {
  static constexpr auto full = nn_table<T, kNnVecs, false>(std::make_integer_sequence<int, kNnRows>());
  static constexpr auto single = nn_table<T, 1, false>(std::make_integer_sequence<int, kNnRows>());
  static constexpr auto full_pack = nn_table<T, kNnVecs, true>(std::make_integer_sequence<int, kNnRows>());
  static constexpr auto single_pack = nn_table<T, 1, true>(std::make_integer_sequence<int, kNnRows>());
  constexpr int64_t VL = kVL<T>, NB = kNnVecs * VL;
  const int64_t blocks = n / NB, tail = (n - blocks * NB) / VL;
  const Prefetch* pf = next.p != nullptr ? &next : nullptr;
  // each column block prefetches its share of the rows' bytes; the tail vectors the rest
  const int64_t step = blocks > 0 ? (next.bytes + blocks - 1) / blocks : 0;
  for_row_blocks(m, kNnRows, [&](int64_t i0, int64_t rows) {
    const bool packs = pack != nullptr && i0 == 0, packed = pack != nullptr && i0 > 0;
    const T* bi = packed ? pack : b;
    const int64_t ldbi = packed ? ld_pack : ldb;
    const T* c0i = c0 == nullptr ? nullptr : c0 + i0 * ldc0;
    if (blocks > 0) {
      (packs ? full_pack : full)[rows - 1](kd, a + i0 * sa, sa, sk, bi, ldbi, c0i, ldc0, c + i0 * ldc, ldc, blocks,
                                           pf, i0, rows, step, pack, ld_pack);
    }
    if (tail > 0) {
      const int64_t j0 = blocks * NB;
      (packs ? single_pack : single)[rows - 1](kd, a + i0 * sa, sa, sk, bi + j0, ldbi,
                                               c0i == nullptr ? nullptr : c0i + j0, ldc0, c + i0 * ldc + j0, ldc,
                                               tail, blocks > 0 ? nullptr : pf, i0, rows, next.bytes,
                                               pack == nullptr ? nullptr : pack + j0, ld_pack);
    }
  });
}

// ------------------------------------------------------------------------------------------------ gemm_nt
template <typename T>
inline T hsum(const Vec<T>& v) {
  return at::vec::vec_reduce_all<T>([](const Vec<T>& x, const Vec<T>& y) { return x + y; }, v);
}

// out[i] += the sum of the lanes of acc[i], i < M <= 4, in a fixed order.
template <typename T, int M>
inline void add_hsums(const Vec<T>* acc, T* out) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    __m256 v[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
#if defined(CPU_CAPABILITY_AVX512)
      v[i] = i < M ? _mm256_add_ps(_mm512_castps512_ps256(acc[i]), _mm512_extractf32x8_ps(acc[i], 1))
                   : _mm256_setzero_ps();
#else
      v[i] = i < M ? static_cast<__m256>(acc[i]) : _mm256_setzero_ps();
#endif
    }
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    const __m128 sums = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    if constexpr (M == 4) {
      _mm_storeu_ps(out, _mm_add_ps(_mm_loadu_ps(out), sums));
    } else {  // the first M lanes only (a masked lane is not touched: out[M] may lie past the buffer)
      const __m128i mask = _mm_setr_epi32(M > 0 ? -1 : 0, M > 1 ? -1 : 0, M > 2 ? -1 : 0, 0);
      _mm_maskstore_ps(out, mask, _mm_add_ps(_mm_maskload_ps(out, mask), sums));
    }
    return;
  }
#endif
  for (int i = 0; i < M; ++i) out[i] += hsum<T>(acc[i]);
}

// Rows [0, M) of L against rows [0, N) of R: out[j][i] += sum_{p < kd} L[i][p] R[j][p]; also prefetches bytes
// [pf_from, pf_to) of rows [0, N) of pf.
template <typename T, int M, int N>
void nt_block(int64_t kd, const T* l, int64_t ldl, const T* r, int64_t ldr, T* out, int64_t ldo, const Prefetch* pf,
              int64_t pf_from, int64_t pf_to) {
  using V = Vec<T>;
  constexpr int64_t VL = kVL<T>;
  if (pf != nullptr) prefetch_rows(*pf, 0, N, pf_from, pf_to);
  V acc[N][M];
#pragma GCC unroll 16
  for (int j = 0; j < N; ++j)
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) acc[j][i] = V(T(0));
  for (int64_t p = 0; p < kd; p += VL) {
    V rv[N];
#pragma GCC unroll 16
    for (int j = 0; j < N; ++j) rv[j] = V::loadu(r + j * ldr + p);
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      const V li = V::loadu(l + i * ldl + p);
#pragma GCC unroll 16
      for (int j = 0; j < N; ++j) acc[j][i] = at::vec::fmadd(li, rv[j], acc[j][i]);
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < N; ++j) add_hsums<T, M>(acc[j], out + j * ldo);
}

template <typename T>
using NtFn = void (*)(int64_t, const T*, int64_t, const T*, int64_t, T*, int64_t, const Prefetch*, int64_t, int64_t);

template <typename T, int N, int... M>
constexpr std::array<NtFn<T>, sizeof...(M)> nt_row_table(std::integer_sequence<int, M...>) {
  return {&nt_block<T, M + 1, N>...};
}

template <typename T, int... N>
constexpr std::array<std::array<NtFn<T>, kNtRows>, sizeof...(N)> nt_table(std::integer_sequence<int, N...>) {
  return {nt_row_table<T, N + 1>(std::make_integer_sequence<int, kNtRows>())...};
}

// out[j][i] += sum_{p < kd} L[i * ldl + p] R[j * ldr + p] for i < m, j < n (the product L R^T, stored
// transposed: [n][m], row stride ldo); kd is a multiple of the vector length. `next`: prefetched on the way,
// rows [0, n) (see Prefetch).
// The blocks of R (the large operand: C rows of a tile) are the outer loop and every block of rows of L meets each
// of them in turn, so that each block of R is read from L2 once and then from L1 (L, K rows, stays in L1): with the
// blocks of L outside, R streamed from L2 once per block of L, which at AVX-512 is more than L2 delivers. The rows
// of L go in whole blocks of kNtRows and one shorter block last (21 rows: 4 4 4 4 4 1), not in nearly equal blocks
// (4 4 4 3 3 3): 157 against 123 GFLOP/s at AVX-512 (benchmarks/cpu_blocks.py). The prefetches of a block of R's
// rows are spread over its passes.
template <typename T>
void gemm_nt(int64_t m, int64_t n, int64_t kd, const T* l, int64_t ldl, const T* r, int64_t ldr, T* out,
             int64_t ldo, const Prefetch& next = {}) {
  static_assert(kNtRows <= 4, "add_hsums reduces up to 4 accumulators at once");
  static constexpr auto table = nt_table<T>(std::make_integer_sequence<int, kNtCols>());
  const Prefetch* pf = next.p != nullptr ? &next : nullptr;
  const int64_t passes = (m + kNtRows - 1) / kNtRows;
  const int64_t step = pf == nullptr ? 0 : round_up((next.bytes + passes - 1) / std::max<int64_t>(passes, 1), 64);
  for (int64_t j0 = 0; j0 < n; j0 += kNtCols) {
    const int64_t cols = std::min<int64_t>(kNtCols, n - j0);
    const Prefetch rows_j = pf == nullptr ? Prefetch{} : Prefetch{pf->p + j0 * pf->stride, pf->stride, pf->bytes};
    for (int64_t i0 = 0, pass = 0; i0 < m; i0 += kNtRows, ++pass) {
      const int64_t rows = std::min<int64_t>(kNtRows, m - i0);
      table[cols - 1][rows - 1](kd, l + i0 * ldl, ldl, r + j0 * ldr, ldr, out + j0 * ldo + i0, ldo,
                                pf == nullptr ? nullptr : &rows_j, pass * step, (pass + 1) * step);
    }
  }
}

// Sum of the first n (a multiple of the vector length) entries of x.
template <typename T>
T sum_vec(const T* x, int64_t n) {
  Vec<T> acc(T(0));
  for (int64_t p = 0; p < n; p += kVL<T>) acc = acc + Vec<T>::loadu(x + p);
  return hsum<T>(acc);
}

// ------------------------------------------------------------------------------------------------ softmax
inline Vec<float> fast_exp(const Vec<float>& v) { return v.exp_u20(); }
inline Vec<double> fast_exp(const Vec<double>& v) { return v.exp(); }

// Softmax over the K rows (stride ld) of s, column by column, for columns [0, ncols) (whole vectors); columns
// >= np get 0 (padding).
template <typename T>
void softmax_columns(T* s, int64_t K, int64_t ld, int64_t ncols, int64_t np) {
  using V = Vec<T>;
  constexpr int64_t VL = kVL<T>;
  for (int64_t j = 0; j < ncols; j += VL) {
    V mx = V::loadu(s + j);
    for (int64_t k = 1; k < K; ++k) mx = at::vec::maximum(mx, V::loadu(s + k * ld + j));
    V sum(T(0));
    for (int64_t k = 0; k < K; ++k) {
      const V e = fast_exp(V::loadu(s + k * ld + j) - mx);
      e.store(s + k * ld + j);
      sum = sum + e;
    }
    const V inv = V(T(1)) / sum;
    for (int64_t k = 0; k < K; ++k) (V::loadu(s + k * ld + j) * inv).store(s + k * ld + j);
    if (j + VL > np) {
      const int64_t from = std::max<int64_t>(np, j);
      for (int64_t k = 0; k < K; ++k) std::fill(s + k * ld + from, s + k * ld + j + VL, T(0));
    }
  }
}

// g <- a * (g - sum_k a * g), column by column (K rows of stride ld, columns [0, ncols)).
template <typename T>
void softmax_backward_columns(const T* a, T* g, int64_t K, int64_t ld, int64_t ncols) {
  using V = Vec<T>;
  constexpr int64_t VL = kVL<T>;
  for (int64_t j = 0; j < ncols; j += VL) {
    V dot(T(0));
    for (int64_t k = 0; k < K; ++k) dot = at::vec::fmadd(V::loadu(a + k * ld + j), V::loadu(g + k * ld + j), dot);
    for (int64_t k = 0; k < K; ++k) {
      const V ak = V::loadu(a + k * ld + j);
      (ak * (V::loadu(g + k * ld + j) - dot)).store(g + k * ld + j);
    }
  }
}

// Fills rows [0, m) (stride ld) with their constant v[i] over columns [0, ncols).
template <typename T>
void fill_rows(T* s, int64_t m, int64_t ld, int64_t ncols, const T* v) {
  for (int64_t i = 0; i < m; ++i) std::fill(s + i * ld, s + i * ld + ncols, v[i]);
}

// ------------------------------------------------------------------------------------------------ tiles
// Row stride of the tile buffers: the tile plus one cache line, so that the rows of a tile do not all map to the
// same cache sets (a power-of-two stride would).
template <typename T>
constexpr int64_t tile_ld(int64_t tile) {
  return tile + 64 / static_cast<int64_t>(sizeof(T));
}

// Copies the [C][np] slice at pixel p0 of a map with strides (sc, sp) into buf ([C][ldb], the accumulation type),
// columns [np, ncols) zeroed. (Read in place, a map whose rows are a power of two apart would thrash the caches.)
template <typename scalar_t, typename acc_t>
void load_tile(const scalar_t* src, int64_t sc, int64_t sp, int64_t C, int64_t p0, int64_t np, int64_t ncols,
               acc_t* buf, int64_t ldb) {
  if (sp == 1) {
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* s = src + c * sc + p0;
      acc_t* d = buf + c * ldb;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        std::memcpy(d, s, static_cast<size_t>(np) * sizeof(acc_t));
      } else {
        for (int64_t p = 0; p < np; ++p) d[p] = static_cast<acc_t>(s[p]);
      }
    }
  } else {
    constexpr int64_t kB = 16;  // blocks of 16 pixels x 16 channels: both sides stay in cache
    for (int64_t c0 = 0; c0 < C; c0 += kB) {
      const int64_t c1 = std::min(C, c0 + kB);
      for (int64_t q0 = 0; q0 < np; q0 += kB) {
        const int64_t q1 = std::min(np, q0 + kB);
        for (int64_t p = q0; p < q1; ++p) {
          const scalar_t* s = src + (p0 + p) * sp;
          for (int64_t c = c0; c < c1; ++c) buf[c * ldb + p] = static_cast<acc_t>(s[c * sc]);
        }
      }
    }
  }
  if (np < ncols) {
    for (int64_t c = 0; c < C; ++c) std::fill(buf + c * ldb + np, buf + c * ldb + ncols, acc_t(0));
  }
}

// Outputs at least this large go to memory with streaming stores: they do not fit in the caches anyway, and a
// streaming store does not read the line first.
constexpr int64_t kStreamBytes = 4 << 20;

// Copies a [C][np] tile (row stride ld) into a contiguous [C][P] map at pixel p0, in the map's dtype; with
// `stream`, through streaming stores where the rows allow (call stream_fence() before the data is shared).
template <typename scalar_t, typename acc_t>
void store_tile(const acc_t* tile, int64_t ld, scalar_t* dst, int64_t P, int64_t p0, int64_t C, int64_t np,
                bool stream = false) {
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* s = tile + c * ld;
    scalar_t* d = dst + c * P + p0;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      constexpr int64_t VL = kVL<acc_t>;
      if (stream && can_stream(d, VL) && np % VL == 0) {
        for (int64_t p = 0; p < np; p += VL) stream_store(d + p, Vec<acc_t>::loadu(s + p));
        continue;
      }
      std::memcpy(d, s, static_cast<size_t>(np) * sizeof(acc_t));
    } else {
      for (int64_t p = 0; p < np; ++p) d[p] = static_cast<scalar_t>(s[p]);
    }
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace grmseg
