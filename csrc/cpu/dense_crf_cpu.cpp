// dense_crf_forward on the CPU, its shape function (Meta) and their registrations.
//
//   unary [B, K, H, W] probabilities, image [B, 3, H, W] (uint8 or float 0..255)  ->  Q [B, K, H, W]
//
// Mean-field inference of pydensecrf's DenseCRF2D (Potts, Gaussian + bilateral kernels, NORMALIZE_SYMMETRIC):
//   Q_0 = p / sum_K p,   Q_t = p exp(m - max m) / sum_K,   m = sum_kernels w alpha n slice(blur(splat(n Q_{t-1})))
// with p clipped to [1e-5, 1] (softmax(log p + m) = p exp(m) / sum: no log is taken) and the messages m filtered
// through a permutohedral lattice per kernel (Adams et al. 2010) built as pydensecrf builds it: the same elevation,
// rounding, ranks, barycentric weights, int16 keys, points in the same order, the same blur ([1/2, 1, 1/2] along
// each of the d + 1 axes in turn), alpha = 1 / (1 + 2^-d), n = (alpha filter(1) + 1e-20)^-1/2. The marginals match
// pydensecrf's to float rounding.
//
// Lattice build, parallel and deterministic (at::parallel_for everywhere):
//   1. per pixel: its d + 1 simplex vertices (entry e = i (d+1) + r), inserted into an open-addressing table:
//      CAS claims an empty slot, a slot holding the same key gets the smaller entry id (atomic min), so each key's
//      slot ends up holding its first entry whatever the schedule;
//   2. lattice point index = rank of the key's first entry among all first entries (a bitmap over the entries and
//      a prefix popcount): pydensecrf's insertion order;
//   3. blur neighbours by key lookups; the splat as a gather: per lattice point its entries in entry order (a CSR
//      built by fixed pixel chunks, whose number depends on the sizes only).
// Each iteration then writes every value from a fixed sequence of reads (splat: CSR order; blur and slice: fixed
// neighbours), so Q is bitwise the same for any thread count.
//
// Data: Q pixel-major [N][Kp] and the lattice values [M + 1][Kp], Kp = K rounded up to 8 (zero padding; row 0 is
// the zero row that missing neighbours read). n is folded into the weights (splat: n_i bary, slice: w alpha n_i
// bary), so one Q buffer feeds both kernels. Per iteration: a splat pass (software-prefetched gathers, tasks of
// equal entry counts) and one pass per blur axis, both lattices in the same parallel regions; then one pixel pass
// slices both kernels, exponentiates (a vectorised exp), normalises and writes Q. The hot loops use 8-lane vectors
// and are compiled for AVX-512, AVX2+FMA and baseline x86-64 (picked at load time). Everything is fp32 (as
// pydensecrf) for every input dtype; Q is returned in the dtype of unary.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <thread>
#include <type_traits>
#include <vector>

#include "cpu/output.h"
#include "dense_crf.h"

namespace grmseg {
namespace {

// Uninitialised buffers of trivial types from torch's CPU allocator (64-byte aligned; seen by its memory profiler).
template <typename T>
class Buf {
 public:
  Buf() = default;
  explicit Buf(int64_t n)
      : ptr_(c10::GetCPUAllocator()->allocate(sizeof(T) * static_cast<size_t>(std::max<int64_t>(n, 1)))) {
    static_assert(std::is_trivially_destructible_v<T>);
  }
  T* get() const { return static_cast<T*>(ptr_.get()); }
  T& operator[](int64_t i) const { return get()[i]; }

 private:
  c10::DataPtr ptr_;
};

template <typename T>
Buf<T> make_buf(int64_t n) {
  return Buf<T>(n);
}

constexpr int64_t kLanes = 8;  // Kp is a multiple of this

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GRMSEG_CRF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GRMSEG_CRF_CLONES
#endif

// ------------------------------------------------------------------------------------------------- lattice keys
struct Key {
  uint64_t lo = 0, hi = 0;  // up to 8 int16 coordinates, 4 per word
  bool operator==(const Key& o) const { return lo == o.lo && hi == o.hi; }
};

inline void key_set(Key& k, int c, int32_t v) {
  const uint64_t bits = static_cast<uint64_t>(static_cast<uint16_t>(static_cast<int16_t>(v)));
  uint64_t& w = c < 4 ? k.lo : k.hi;
  const int shift = 16 * (c & 3);
  w = (w & ~(uint64_t(0xffff) << shift)) | (bits << shift);
}

inline int32_t key_get(const Key& k, int c) {
  const uint64_t w = c < 4 ? k.lo : k.hi;
  return static_cast<int16_t>(static_cast<uint16_t>(w >> (16 * (c & 3))));
}

inline uint64_t key_hash(const Key& k) {  // splitmix64's finaliser of the two words
  uint64_t z = k.lo * 0x9E3779B97F4A7C15ull + k.hi;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Open addressing, linear probing. A slot is claimed by CAS on `owner` (-1 -> entry id), then its key is written
// and `state` set to 1 (release); a thread meeting a claimed slot waits for state 1, compares keys, and on a match
// lowers `owner` to its own entry id if smaller. After the inserts `owner` is the first entry of the slot's key
// whatever the schedule, and `state` is reused for the lattice point index.
struct Slot {
  Key key;
  int32_t owner;
  int32_t state;
};

struct Table {
  int64_t cap = 0, mask = 0;
  Buf<Slot> slots;
  std::atomic<int64_t> claimed{0};
  std::atomic<bool> full{false};  // more than cap / 2 slots claimed: the caller retries with a larger table

  explicit Table(int64_t capacity) : cap(capacity), mask(capacity - 1), slots(make_buf<Slot>(capacity)) {
    Slot* s = slots.get();
    at::parallel_for(0, cap, 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        s[i].owner = -1;
        s[i].state = 0;
      }
    });
  }

  // Insert entry e with key k; returns its slot, or -1 once the table is half full (nothing claimed then: each
  // thread checks before it claims, so at most one claim per thread lands past half and probing always ends).
  int64_t insert(int32_t e, const Key& k) {
    int64_t h = static_cast<int64_t>(key_hash(k) & static_cast<uint64_t>(mask));
    while (true) {
      Slot& s = slots[h];
      int32_t cur = __atomic_load_n(&s.owner, __ATOMIC_RELAXED);
      if (cur < 0) {
        if (full.load(std::memory_order_relaxed)) return -1;
        if (__atomic_compare_exchange_n(&s.owner, &cur, e, false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
          s.key = k;
          __atomic_store_n(&s.state, 1, __ATOMIC_RELEASE);
          if (claimed.fetch_add(1, std::memory_order_relaxed) + 1 > cap / 2) full.store(true);
          return h;
        }
      }
      for (int spin = 1; __atomic_load_n(&s.state, __ATOMIC_ACQUIRE) == 0; ++spin) {
        if (spin % 64 == 0) std::this_thread::yield();  // the claiming thread may have been descheduled
      }
      if (s.key == k) {
        while (e < cur && !__atomic_compare_exchange_n(&s.owner, &cur, e, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
        }
        return h;
      }
      h = (h + 1) & mask;
    }
  }

  // The slot of key k, or -1 (after the inserts).
  int64_t find(const Key& k) const {
    int64_t h = static_cast<int64_t>(key_hash(k) & static_cast<uint64_t>(mask));
    while (true) {
      const Slot& s = slots[h];
      if (s.owner < 0) return -1;
      if (s.key == k) return h;
      h = (h + 1) & mask;
    }
  }
};

// ------------------------------------------------------------------------------------------------------ lattice
struct Lattice {
  int d = 0;
  int64_t N = 0, M = 0;
  float alpha = 1.f;
  Buf<int32_t> offset;   // [N (d+1)]: value row (lattice point + 1) of each entry e = i (d+1) + r
  Buf<float> bary;       // [N (d+1)]: barycentric weight of each entry; slice weight w alpha n_i bary after finish()
  Buf<int32_t> blur;     // [(d+1) M 2]: value rows of the two neighbours along each axis (0: none)
  Buf<int64_t> seg;      // [M + 1]: CSR of the entries of each lattice point, in entry order
  Buf<int32_t> seg_pix;  // [N (d+1)]: pixel of each CSR entry
  Buf<float> seg_w;      // [N (d+1)]: barycentric weight; splat weight n_i bary after finish()
  std::vector<int64_t> parts;  // splat tasks: point ranges [parts[t], parts[t + 1]) of about equal entry counts
};

// Exclusive prefix sum of counts[0, n) into out[0, n] in fixed chunks (the same for any thread count).
template <typename In>
void prefix_sum(const In* counts, int64_t* out, int64_t n) {
  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<int64_t> part(static_cast<size_t>(chunks) + 1, 0);
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      int64_t s = 0;
      for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) s += counts[i];
      part[c + 1] = s;
    }
  });
  for (int64_t c = 0; c < chunks; ++c) part[c + 1] += part[c];
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      int64_t s = part[c];
      for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) {
        out[i] = s;
        s += counts[i];
      }
    }
  });
  out[n] = part[chunks];
}

// Pydensecrf's Permutohedral::init for pixels [begin, end): the D + 1 simplex vertices of each pixel, inserted into
// the table (their slots go to L.offset for now) with their barycentric weights. False when the table filled up.
template <int D>
bool lattice_entries(Lattice& L, const float* feat, Table& table, int64_t begin, int64_t end, bool& bad) {
  constexpr int d1 = D + 1;
  const float inv_std_dev = static_cast<float>(std::sqrt(2.0 / 3.0) * d1);
  float scale[D];
  for (int i = 0; i < D; ++i) scale[i] = static_cast<float>(1.0 / std::sqrt(double((i + 2) * (i + 1))) * inv_std_dev);
  const float down = 1.0f / static_cast<float>(d1), up = static_cast<float>(d1);
  float elevated[d1], rem0[d1], bar[D + 2];
  int rank[d1];
  // The last key and slot of each remainder: neighbouring pixels mostly share their simplex, and a key this thread
  // inserted before (with a smaller entry id) needs no table access (its slot's owner is already smaller).
  Key last_key[d1];
  int64_t last_slot[d1];
  for (int r = 0; r <= D; ++r) last_slot[r] = -1;
  for (int64_t i = begin; i < end; ++i) {
    const float* f = feat + i * D;
    float sm = 0.f;
    for (int j = D; j > 0; --j) {
      const float cf = f[j - 1] * scale[j - 1];
      elevated[j] = sm - static_cast<float>(j) * cf;
      sm += cf;
    }
    elevated[0] = sm;
    float sum = 0.f;
    for (int j = 0; j <= D; ++j) {
      const float v = std::nearbyint(down * elevated[j]);  // round half to even, as SSE's cvtps2dq
      rem0[j] = v * up;
      sum += v;
    }
    for (int j = 0; j <= D; ++j) rank[j] = 0;
    for (int a = 0; a < D; ++a) {
      const float da = elevated[a] - rem0[a];
      for (int b = a + 1; b <= D; ++b) {
        const int lt = da < elevated[b] - rem0[b];
        rank[a] += lt;
        rank[b] += 1 - lt;
      }
    }
    const int isum = static_cast<int>(sum);
    for (int j = 0; j <= D; ++j) {
      rank[j] += isum;
      if (rank[j] < 0) {
        rank[j] += d1;
        rem0[j] += up;
      } else if (rank[j] > D) {
        rank[j] -= d1;
        rem0[j] -= up;
      }
    }
    for (int j = 0; j <= D + 1; ++j) bar[j] = 0.f;
    for (int j = 0; j <= D; ++j) {
      const float v = (elevated[j] - rem0[j]) * down;
      bar[D - rank[j]] += v;
      bar[D - rank[j] + 1] -= v;
    }
    bar[0] += 1.0f + bar[D + 1];
    for (int r = 0; r <= D; ++r) {
      Key k;
      for (int c = 0; c < D; ++c) {
        const float kv = rem0[c] + static_cast<float>(rank[c] <= D - r ? r : r - d1);
        bad |= !(std::fabs(kv) <= 32767.f);  // also catches NaN
        key_set(k, c, static_cast<int32_t>(kv));
      }
      const int64_t e = i * d1 + r;
      if (last_slot[r] < 0 || !(last_key[r] == k)) {
        last_slot[r] = table.insert(static_cast<int32_t>(e), k);
        last_key[r] = k;
        if (last_slot[r] < 0) return false;
      }
      const int64_t slot = last_slot[r];
      L.offset[e] = static_cast<int32_t>(slot);
      L.bary[e] = bar[r];
    }
  }
  return true;
}

// The lattice of features feat [N + 1][d] (pixel-major; row N is zero): the same lattice as pydensecrf's, points in
// its order. pydensecrf's SSE build runs over blocks of 4 pixels and also inserts the vertices of its zero-padded
// lanes: when N is not a multiple of 4 the lattice holds those of the zero feature vector too, after every pixel's.
// They carry no mass but take part in the blur, so they are kept (as the phantom pixel N).
Lattice build_lattice(const float* feat, int64_t N, int d, const char* who) {
  Lattice L;
  L.d = d;
  L.N = N;
  const int d1 = d + 1;
  const int64_t NP = N + (N % 4 != 0 ? 1 : 0);  // with the phantom pixel
  const int64_t E = NP * d1;
  TORCH_CHECK(d == 2 || d == 5, who, ": lattices of dimension 2 and 5 only, got ", d);
  TORCH_CHECK(E < (int64_t(1) << 30), who, ": the image has too many pixels (", N, ") for the lattice");
  L.alpha = 1.0f / (1.0f + std::pow(2.0f, static_cast<float>(-d)));
  L.offset = make_buf<int32_t>(E);
  L.bary = make_buf<float>(E);

  // 1. every entry into the table (pydensecrf starts at 2 N slots too; natural images need far fewer)
  int64_t cap = 4096;
  while (cap < N / 2) cap *= 2;
  std::unique_ptr<Table> table;
  while (true) {
    table = std::make_unique<Table>(cap);
    std::atomic<bool> overflow{false}, ok{true};
    at::parallel_for(0, N, 512, [&](int64_t b, int64_t e) {
      bool bad = false;
      const bool done = d == 2 ? lattice_entries<2>(L, feat, *table, b, e, bad)
                               : lattice_entries<5>(L, feat, *table, b, e, bad);
      if (!done) ok.store(false);
      if (bad) overflow.store(true);
    });
    if (NP > N && ok.load()) {  // the phantom pixel, after the others (its entry ids are the last ones)
      bool bad = false;
      const bool done = d == 2 ? lattice_entries<2>(L, feat, *table, N, NP, bad)
                               : lattice_entries<5>(L, feat, *table, N, NP, bad);
      if (!done) ok.store(false);
    }
    TORCH_CHECK(!overflow.load(), who,
                ": lattice coordinates overflow int16: the features (positions / sxy, colours / srgb) span too "
                "wide a range; use larger gaussian_sxy / bilateral_sxy / bilateral_srgb");
    if (ok.load()) break;  // every entry is in (the table may be a little past half full: fine)
    cap *= 4;
  }

  // 2. lattice points in first-entry order: rank of each slot's owner among all owners (a bitmap over entries)
  const int64_t words = (E + 63) / 64;
  Buf<uint64_t> bits = make_buf<uint64_t>(words);
  std::fill(bits.get(), bits.get() + words, uint64_t(0));
  Slot* slots = table->slots.get();
  at::parallel_for(0, table->cap, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t h = b; h < e; ++h) {
      const int32_t o = slots[h].owner;
      if (o >= 0) __atomic_fetch_or(&bits[o >> 6], uint64_t(1) << (o & 63), __ATOMIC_RELAXED);
    }
  });
  Buf<int32_t> pop = make_buf<int32_t>(words);
  for (int64_t w = 0; w < words; ++w) pop[w] = __builtin_popcountll(bits[w]);
  Buf<int64_t> base = make_buf<int64_t>(words + 1);
  prefix_sum(pop.get(), base.get(), words);
  const int64_t M = L.M = base[words];
  Buf<int64_t> point_slot = make_buf<int64_t>(M);
  Buf<int32_t> slot_point = make_buf<int32_t>(table->cap);  // compact copy of the states, for the entry pass
  at::parallel_for(0, table->cap, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t h = b; h < e; ++h) {
      const int32_t o = slots[h].owner;
      if (o < 0) continue;
      const uint64_t below = bits[o >> 6] & ((uint64_t(1) << (o & 63)) - 1);
      const int32_t m = static_cast<int32_t>(base[o >> 6] + __builtin_popcountll(below));
      slots[h].state = slot_point[h] = m;
      point_slot[m] = h;
    }
  });

  // 3. blur neighbours: along axis j, key -+ 1 everywhere and +- d at coordinate j (pydensecrf's n1, n2)
  L.blur = make_buf<int32_t>(int64_t(d1) * M * 2);
  at::parallel_for(0, M, 1024, [&](int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m) {
      const Key k = slots[point_slot[m]].key;
      for (int j = 0; j <= d; ++j) {
        Key n1, n2;
        for (int c = 0; c < d; ++c) {
          const int32_t v = key_get(k, c);
          key_set(n1, c, c == j ? v + d : v - 1);
          key_set(n2, c, c == j ? v - d : v + 1);
        }
        const int64_t h1 = table->find(n1), h2 = table->find(n2);
        L.blur[(j * M + m) * 2 + 0] = h1 < 0 ? 0 : slots[h1].state + 1;
        L.blur[(j * M + m) * 2 + 1] = h2 < 0 ? 0 : slots[h2].state + 1;
      }
    }
  });

  // 4. entries -> value rows, and the splat CSR: C fixed pixel chunks (a function of the sizes only) count
  //    their entries per point; a point's entries are then laid out chunk by chunk, each chunk in entry order.
  const int64_t C = std::max<int64_t>(1, std::min<int64_t>({64, E / (M + 1), E / (1 << 13)}));
  Buf<int32_t> cnt = make_buf<int32_t>(C * M);
  std::fill(cnt.get(), cnt.get() + C * M, 0);
  at::parallel_for(0, C, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      int32_t* cc = cnt.get() + c * M;
      for (int64_t i = c * N / C * d1; i < (c + 1) * N / C * d1; ++i) {
        const int32_t m = slot_point[L.offset[i]];
        L.offset[i] = m + 1;
        cc[m]++;
      }
    }
  });
  L.seg = make_buf<int64_t>(M + 1);
  {
    Buf<int32_t> total = make_buf<int32_t>(M);
    at::parallel_for(0, M, 4096, [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; ++m) {
        int32_t s = 0;
        for (int64_t c = 0; c < C; ++c) s += cnt[c * M + m];
        total[m] = s;
      }
    });
    prefix_sum(total.get(), L.seg.get(), M);
  }
  at::parallel_for(0, M, 4096, [&](int64_t b, int64_t e) {  // cnt becomes each chunk's first position
    for (int64_t m = b; m < e; ++m) {
      int64_t pos = L.seg[m];
      for (int64_t c = 0; c < C; ++c) {
        const int32_t n = cnt[c * M + m];
        cnt[c * M + m] = static_cast<int32_t>(pos);
        pos += n;
      }
    }
  });
  L.seg_pix = make_buf<int32_t>(E);
  L.seg_w = make_buf<float>(E);
  at::parallel_for(0, C, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      int32_t* cc = cnt.get() + c * M;
      for (int64_t i = c * N / C; i < (c + 1) * N / C; ++i) {
        for (int r = 0; r < d1; ++r) {
          const int32_t t = cc[L.offset[i * d1 + r] - 1]++;
          L.seg_pix[t] = static_cast<int32_t>(i);
          L.seg_w[t] = L.bary[i * d1 + r];
        }
      }
    }
  });
  // splat tasks of about kSplatTask entries each (a point's entries vary from 1 to thousands)
  constexpr int64_t kSplatTask = 1 << 14;
  L.parts.push_back(0);
  for (int64_t m = 0; m < M; ++m) {
    if (L.seg[m + 1] - L.seg[L.parts.back()] >= kSplatTask) L.parts.push_back(m + 1);
  }
  if (L.parts.back() != M) L.parts.push_back(M);
  return L;
}

// ----------------------------------------------------------------------------------------------------- filtering
// GCC vector extensions: 8 lanes, AVX/AVX-512 in the v3/v4 clones, SSE pairs in the baseline one. The helpers are
// always inlined, so no 32-byte vector crosses a call (-Wpsabi: their ABI would differ between the clones).
#pragma GCC diagnostic ignored "-Wpsabi"
#define GRMSEG_INLINE inline __attribute__((always_inline))
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

GRMSEG_INLINE v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

GRMSEG_INLINE void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof(v)); }

GRMSEG_INLINE v8 splat8(float x) { return v8{} + x; }

constexpr int64_t kGroup = 4;  // blocks of 8 channels whose accumulators stay in registers

constexpr int64_t kAhead = 16;  // entries / pixels ahead whose rows are prefetched (the gathers miss the cache)

GRMSEG_INLINE void prefetch_row(const float* p, int64_t bytes) {
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(reinterpret_cast<const char*>(p) + o);
}

// splat: V[m + 1] = sum over the entries of m (CSR order) of w in[pixel], channels [8 c0, 8 (c0 + NB)).
template <int NB>
GRMSEG_INLINE void splat_group(const Lattice& L, const float* __restrict in, float* __restrict V, int64_t Kp,
                               int64_t c0, int64_t b, int64_t e) {
  const int64_t* seg = L.seg.get();
  const int32_t* pix = L.seg_pix.get();
  const float* wts = L.seg_w.get();
  const int64_t t_end = seg[e];
  for (int64_t m = b; m < e; ++m) {
    v8 acc[NB];
    for (int k = 0; k < NB; ++k) acc[k] = v8{};
    for (int64_t t = seg[m]; t < seg[m + 1]; ++t) {
      if (t + kAhead < t_end) prefetch_row(in + static_cast<int64_t>(pix[t + kAhead]) * Kp + 8 * c0, 32 * NB);
      const v8 w = splat8(wts[t]);
      const float* src = in + static_cast<int64_t>(pix[t]) * Kp + 8 * c0;
      for (int k = 0; k < NB; ++k) acc[k] += w * load8(src + 8 * k);
    }
    float* out = V + (m + 1) * Kp + 8 * c0;
    for (int k = 0; k < NB; ++k) store8(out + 8 * k, acc[k]);
  }
}

GRMSEG_CRF_CLONES void splat_rows(const Lattice& L, const float* in, float* V, int64_t Kp, int64_t b, int64_t e) {
  const int64_t blocks = Kp / 8;
  for (int64_t c0 = 0; c0 < blocks; c0 += kGroup) {
    switch (std::min<int64_t>(kGroup, blocks - c0)) {
      case 1: splat_group<1>(L, in, V, Kp, c0, b, e); break;
      case 2: splat_group<2>(L, in, V, Kp, c0, b, e); break;
      case 3: splat_group<3>(L, in, V, Kp, c0, b, e); break;
      default: splat_group<4>(L, in, V, Kp, c0, b, e); break;
    }
  }
}

// one blur pass along axis j: dst[m + 1] = src[m + 1] + 0.5 (src[n1] + src[n2]) (pydensecrf's order of operations)
GRMSEG_CRF_CLONES void blur_rows(const Lattice& L, int j, const float* src, float* dst, int64_t Kp, int64_t b,
                                 int64_t e) {
  const int32_t* nb = L.blur.get() + int64_t(j) * L.M * 2;
  const v8 half = splat8(0.5f);
  for (int64_t m = b; m < e; ++m) {
    const float* v0 = src + (m + 1) * Kp;
    const float* v1 = src + static_cast<int64_t>(nb[2 * m]) * Kp;
    const float* v2 = src + static_cast<int64_t>(nb[2 * m + 1]) * Kp;
    float* out = dst + (m + 1) * Kp;
    for (int64_t c = 0; c < Kp; c += 8) store8(out + c, load8(v0 + c) + half * (load8(v1 + c) + load8(v2 + c)));
  }
}

// One lattice's filter: its two value buffers ([M + 1][Kp], zero row 0); `a` holds the result after filter().
struct Filter {
  const Lattice* L = nullptr;
  float* a = nullptr;
  float* b = nullptr;
};

// Splat + blur of in [N][Kp] through every lattice of fs. The lattices share the parallel regions (one for the
// splats, one per blur axis), so a thread that is late to a region (a busy machine) delays fewer of them.
void filter(std::vector<Filter>& fs, const float* in, int64_t Kp) {
  std::vector<int64_t> first_task{0}, first_point{0};
  int max_d = 0;
  for (const Filter& f : fs) {
    first_task.push_back(first_task.back() + static_cast<int64_t>(f.L->parts.size()) - 1);
    first_point.push_back(first_point.back() + f.L->M);
    max_d = std::max(max_d, f.L->d);
  }
  const int64_t n = static_cast<int64_t>(fs.size());
  // tasks [b, e) or points [b, e) of the concatenation -> per lattice ranges
  auto each = [&](const std::vector<int64_t>& first, int64_t b, int64_t e, auto&& fn) {
    for (int64_t l = 0; l < n; ++l) {
      const int64_t lo = std::max(b, first[l]), hi = std::min(e, first[l + 1]);
      if (lo < hi) fn(fs[l], lo - first[l], hi - first[l]);
    }
  };
  at::parallel_for(0, first_task.back(), 1, [&](int64_t b, int64_t e) {
    each(first_task, b, e, [&](Filter& f, int64_t s, int64_t t) {
      splat_rows(*f.L, in, f.a, Kp, f.L->parts[s], f.L->parts[t]);
    });
  });
  for (int j = 0; j <= max_d; ++j) {
    std::vector<int64_t> first{0};  // the lattices with an axis j this pass
    for (const Filter& f : fs) first.push_back(first.back() + (j <= f.L->d ? f.L->M : 0));
    at::parallel_for(0, first.back(), 2048, [&](int64_t b, int64_t e) {
      each(first, b, e, [&](Filter& f, int64_t s, int64_t t) { blur_rows(*f.L, j, f.a, f.b, Kp, s, t); });
    });
    for (Filter& f : fs) {
      if (j <= f.L->d) std::swap(f.a, f.b);
    }
  }
}

// The symmetric normalisation n = (alpha filter(1) + 1e-20)^-1/2, folded into the weights: the splat reads Q
// (its weights become n_i bary), the slice gives the message (its weights become weight alpha n_i bary).
void finish(Lattice& L, float weight) {
  const int64_t M = L.M, N = L.N, d1 = L.d + 1;
  Buf<float> a = make_buf<float>(M + 1), b = make_buf<float>(M + 1);
  a[0] = b[0] = 0.f;
  at::parallel_for(0, M, 1024, [&](int64_t s, int64_t e) {
    for (int64_t m = s; m < e; ++m) {
      float acc = 0.f;
      for (int64_t t = L.seg[m]; t < L.seg[m + 1]; ++t) acc += L.seg_w[t];
      a[m + 1] = acc;
    }
  });
  float* src = a.get();
  float* dst = b.get();
  for (int j = 0; j <= L.d; ++j) {
    const int32_t* nb = L.blur.get() + int64_t(j) * M * 2;
    at::parallel_for(0, M, 1024, [&](int64_t s, int64_t e) {
      for (int64_t m = s; m < e; ++m) dst[m + 1] = src[m + 1] + 0.5f * (src[nb[2 * m]] + src[nb[2 * m + 1]]);
    });
    std::swap(src, dst);
  }
  Buf<float> norm = make_buf<float>(N);
  at::parallel_for(0, N, 1024, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) {
      float acc = 0.f;
      for (int64_t j = 0; j < d1; ++j) acc += L.bary[i * d1 + j] * src[L.offset[i * d1 + j]] * L.alpha;
      norm[i] = 1.0f / std::sqrt(acc + crf::kNormEps);
      const float c = weight * L.alpha * norm[i];
      for (int64_t j = 0; j < d1; ++j) L.bary[i * d1 + j] *= c;
    }
  });
  at::parallel_for(0, N * d1, 4096, [&](int64_t s, int64_t e) {
    for (int64_t t = s; t < e; ++t) L.seg_w[t] *= norm[L.seg_pix[t]];
  });
}

// exp(x) for x <= 0 (clamped at -87), Cephes expf's reduction and polynomial (~1 ulp), 8 lanes.
GRMSEG_INLINE v8 exp8(v8 x) {
  const v8 lo = splat8(-87.0f), zero = v8{};
  x = x < lo ? lo : x;
  x = x > zero ? zero : x;
  const v8 magic = splat8(12582912.0f);  // 1.5 * 2^23: round to nearest
  const v8 n = (x * 1.44269504088896341f + magic) - magic;
  const v8 r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  v8 p = splat8(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  v8 s;
  std::memcpy(&s, &bits, sizeof(s));
  return p * s;
}

GRMSEG_INLINE float hmax8(v8 v) {
  float r = v[0];
  for (int i = 1; i < 8; ++i) r = std::max(r, v[i]);
  return r;
}

GRMSEG_INLINE float hsum8(v8 v) {
  const float a = (v[0] + v[4]) + (v[2] + v[6]);
  const float b = (v[1] + v[5]) + (v[3] + v[7]);
  return a + b;
}

struct Step {
  const Lattice* g = nullptr;  // Gaussian kernel (or null)
  const Lattice* b = nullptr;  // bilateral kernel (or null)
  const float* vg = nullptr;   // their filtered values [M + 1][Kp]
  const float* vb = nullptr;
  const float* u = nullptr;    // probabilities [K][N] (clipped when read)
  float* q = nullptr;          // out: Q [N][Kp] (the next splat input)
  float* out = nullptr;        // out: Q [K][N] (the last step), or null
  int64_t N = 0, K = 0, Kp = 0;
};

// acc[NB] += the slice of V at pixel i, channels [8 c0, 8 (c0 + NB)) (the weights hold w alpha n).
template <int NB>
GRMSEG_INLINE void slice_group(const Lattice* L, const float* V, int64_t Kp, int64_t i, int64_t c0, v8* acc) {
  const int64_t d1 = L->d + 1;
  for (int64_t j = 0; j < d1; ++j) {
    const v8 w = splat8(L->bary[i * d1 + j]);
    const float* v = V + static_cast<int64_t>(L->offset[i * d1 + j]) * Kp + 8 * c0;
    for (int k = 0; k < NB; ++k) acc[k] += w * load8(v + 8 * k);
  }
}

template <int NB>
GRMSEG_INLINE void messages(const Step& s, int64_t i, int64_t c0, float* m) {
  v8 acc[NB];
  for (int k = 0; k < NB; ++k) acc[k] = v8{};
  if (s.g != nullptr) slice_group<NB>(s.g, s.vg, s.Kp, i, c0, acc);
  if (s.b != nullptr) slice_group<NB>(s.b, s.vb, s.Kp, i, c0, acc);
  for (int k = 0; k < NB; ++k) store8(m + 8 * (c0 + k), acc[k]);
}

GRMSEG_INLINE void prefetch_slice(const Lattice* L, const float* V, int64_t Kp, int64_t i) {
  const int64_t d1 = L->d + 1;
  for (int64_t j = 0; j < d1; ++j) prefetch_row(V + static_cast<int64_t>(L->offset[i * d1 + j]) * Kp, 4 * Kp);
}

// Pixels [b, e): m = slice_g + slice_b;  Q = p exp(m - max m) / sum  into q (and out).
GRMSEG_CRF_CLONES void update_rows(const Step& s, int64_t b, int64_t e, float* m) {
  const int64_t Kp = s.Kp, K = s.K, N = s.N, blocks = Kp / 8;
  float* __restrict q = s.q;
  float* __restrict out = s.out;
  const float* __restrict u = s.u;
  float* p = m + Kp;  // the pixel's clipped probabilities, zero padded
  for (int64_t c = K; c < Kp; ++c) p[c] = 0.f;
  v8 tail;  // 0 on the lanes of the last block that hold classes, -inf on the padding
  for (int l = 0; l < 8; ++l) tail[l] = 8 * (blocks - 1) + l < K ? 0.f : -INFINITY;
  for (int64_t i = b; i < e; ++i) {
    if (i + 4 < e) {
      if (s.g != nullptr) prefetch_slice(s.g, s.vg, Kp, i + 4);
      if (s.b != nullptr) prefetch_slice(s.b, s.vb, Kp, i + 4);
    }
    for (int64_t c0 = 0; c0 < blocks; c0 += kGroup) {
      switch (std::min<int64_t>(kGroup, blocks - c0)) {
        case 1: messages<1>(s, i, c0, m); break;
        case 2: messages<2>(s, i, c0, m); break;
        case 3: messages<3>(s, i, c0, m); break;
        default: messages<4>(s, i, c0, m); break;
      }
    }
    v8 mx = load8(m + Kp - 8) + tail;
    for (int64_t c = 0; c < Kp - 8; c += 8) {
      const v8 v = load8(m + c);
      mx = v > mx ? v : mx;
    }
    const v8 top = splat8(hmax8(mx));
    for (int64_t c = 0; c < K; ++c) p[c] = std::min(1.f, std::max(crf::kProbClip, u[c * N + i]));
    v8 sum = v8{};
    for (int64_t c = 0; c < Kp; c += 8) {
      const v8 v = load8(p + c) * exp8(load8(m + c) - top);
      store8(m + c, v);
      sum += v;
    }
    const v8 inv = splat8(1.0f / hsum8(sum));
    for (int64_t c = 0; c < Kp; c += 8) store8(q + i * Kp + c, load8(m + c) * inv);
    if (out != nullptr) {
      for (int64_t c = 0; c < K; ++c) out[c * N + i] = q[i * Kp + c];
    }
  }
}

// Pixels [b, e): Q_0 = p / sum p (the softmax of log p, p clipped) into q (and out). False on a probability
// outside [0, 1] or NaN.
bool init_rows(const Step& s, int64_t b, int64_t e) {
  const int64_t Kp = s.Kp, K = s.K, N = s.N;
  bool ok = true;
  for (int64_t i = b; i < e; ++i) {
    float* qi = s.q + i * Kp;
    float sum = 0.f;
    for (int64_t c = 0; c < K; ++c) {
      const float v = s.u[c * N + i];
      ok &= v >= 0.f && v <= 1.f;
      qi[c] = std::min(1.f, std::max(crf::kProbClip, v));
      sum += qi[c];
    }
    for (int64_t c = K; c < Kp; ++c) qi[c] = 0.f;
    const float inv = 1.0f / sum;
    for (int64_t c = 0; c < K; ++c) qi[c] *= inv;
    if (s.out != nullptr) {
      for (int64_t c = 0; c < K; ++c) s.out[c * N + i] = qi[c];
    }
  }
  return ok;
}

// The features of one image, pixel-major: (x, y) / sxy, then (r, g, b) / srgb with an image; then a zero row.
void features(float* out, int64_t H, int64_t W, float sxy, const float* rgb, float srgb) {
  const int64_t N = H * W, d = rgb != nullptr ? 5 : 2;
  std::fill(out + N * d, out + (N + 1) * d, 0.f);
  at::parallel_for(0, H, 16, [&](int64_t b, int64_t e) {
    for (int64_t y = b; y < e; ++y) {
      for (int64_t x = 0; x < W; ++x) {
        const int64_t i = y * W + x;
        float* f = out + i * d;
        f[0] = static_cast<float>(x) / sxy;
        f[1] = static_cast<float>(y) / sxy;
        if (rgb != nullptr) {
          for (int c = 0; c < 3; ++c) f[2 + c] = rgb[c * N + i] / srgb;
        }
      }
    }
  });
}

}  // namespace

at::Tensor dense_crf_forward_cpu(const at::Tensor& unary, const at::Tensor& image, int64_t iterations,
                                 double gaussian_sxy, double gaussian_weight, double bilateral_sxy,
                                 double bilateral_srgb, double bilateral_weight) {
  const char* who = "grmseg_C::dense_crf_forward (CPU)";
  crf::check_inputs(unary, image, iterations, gaussian_sxy, gaussian_weight, bilateral_sxy, bilateral_srgb,
                    bilateral_weight, c10::DeviceType::CPU, who);
  const int64_t B = unary.size(0), K = unary.size(1), H = unary.size(2), W = unary.size(3), N = H * W;
  at::Tensor out = cpu::empty_output({B, K, H, W}, unary.options().dtype(at::kFloat));
  if (out.numel() == 0) return out.to(unary.scalar_type());
  const int64_t Kp = (K + kLanes - 1) / kLanes * kLanes;
  const at::Tensor u = unary.to(at::kFloat).contiguous();
  const at::Tensor img = image.to(at::kFloat).contiguous();
  const bool use_g = gaussian_weight != 0.0, use_b = bilateral_weight != 0.0;
  const float wg = static_cast<float>(gaussian_weight), wb = static_cast<float>(bilateral_weight);

  Buf<float> feat = make_buf<float>((N + 1) * 5);
  Lattice lg;
  if (use_g) {  // the Gaussian lattice depends on the image size only: one for the batch
    features(feat.get(), H, W, static_cast<float>(gaussian_sxy), nullptr, 0.f);
    lg = build_lattice(feat.get(), N, 2, who);
    finish(lg, wg);
  }
  Buf<float> q = make_buf<float>(N * Kp);
  Buf<float> vg0, vg1;
  if (use_g) {
    vg0 = make_buf<float>((lg.M + 1) * Kp);
    vg1 = make_buf<float>((lg.M + 1) * Kp);
    std::fill(vg0.get(), vg0.get() + Kp, 0.f);
    std::fill(vg1.get(), vg1.get() + Kp, 0.f);
  }

  for (int64_t bi = 0; bi < B; ++bi) {
    Lattice lb;
    Buf<float> vb0, vb1;
    if (use_b) {
      const float* rgb = img.const_data_ptr<float>() + bi * 3 * N;
      features(feat.get(), H, W, static_cast<float>(bilateral_sxy), rgb, static_cast<float>(bilateral_srgb));
      lb = build_lattice(feat.get(), N, 5, who);
      finish(lb, wb);
      vb0 = make_buf<float>((lb.M + 1) * Kp);
      vb1 = make_buf<float>((lb.M + 1) * Kp);
      std::fill(vb0.get(), vb0.get() + Kp, 0.f);
      std::fill(vb1.get(), vb1.get() + Kp, 0.f);
    }
    Step s;
    s.g = use_g ? &lg : nullptr;
    s.b = use_b ? &lb : nullptr;
    s.q = q.get();
    s.N = N;
    s.K = K;
    s.Kp = Kp;
    float* ob = out.mutable_data_ptr<float>() + bi * K * N;
    s.out = iterations == 0 ? ob : nullptr;
    s.u = u.const_data_ptr<float>() + bi * K * N;
    std::atomic<bool> ok{true};
    at::parallel_for(0, N, 1024, [&](int64_t b, int64_t e) {
      if (!init_rows(s, b, e)) ok.store(false);
    });
    TORCH_CHECK_VALUE(ok.load(), who, ": unary must hold probabilities: finite values in [0, 1]");
    for (int64_t it = 0; it < iterations; ++it) {
      std::vector<Filter> fs;
      if (use_g) fs.push_back({&lg, vg0.get(), vg1.get()});
      if (use_b) fs.push_back({&lb, vb0.get(), vb1.get()});
      filter(fs, q.get(), Kp);
      s.vg = use_g ? fs.front().a : nullptr;
      s.vb = use_b ? fs.back().a : nullptr;
      s.out = it + 1 == iterations ? ob : nullptr;
      at::parallel_for(0, N, 1024, [&](int64_t b, int64_t e) {
        std::vector<float> m(static_cast<size_t>(2 * Kp));
        update_rows(s, b, e, m.data());
      });
    }
  }
  return out.to(unary.scalar_type());
}

at::Tensor dense_crf_forward_meta(const at::Tensor& unary, const at::Tensor& image, int64_t iterations,
                                  double gaussian_sxy, double gaussian_weight, double bilateral_sxy,
                                  double bilateral_srgb, double bilateral_weight) {
  const char* who = "grmseg_C::dense_crf_forward";
  TORCH_CHECK(unary.dim() == 4, who, ": unary must be [B, K, H, W], got a tensor of shape ", unary.sym_sizes());
  TORCH_CHECK(image.dim() == 4, who, ": image must be [B, 3, H, W], got a tensor of shape ", image.sym_sizes());
  (void)iterations;
  (void)gaussian_sxy;
  (void)gaussian_weight;
  (void)bilateral_sxy;
  (void)bilateral_srgb;
  (void)bilateral_weight;
  return at::empty_symint(unary.sym_sizes(), unary.options());
}

}  // namespace grmseg

TORCH_LIBRARY_IMPL(grmseg_C, CPU, m) { m.impl("dense_crf_forward", &grmseg::dense_crf_forward_cpu); }

TORCH_LIBRARY_IMPL(grmseg_C, Meta, m) { m.impl("dense_crf_forward", &grmseg::dense_crf_forward_meta); }
