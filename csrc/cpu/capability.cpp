// The run-time choice of the CPU kernels' instruction-set level (see capability.h).

#include "cpu/capability.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <mutex>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define GRMSEG_X86_CPUID 1
#else
#define GRMSEG_X86_CPUID 0
#endif

namespace grmseg {
namespace cpu {
namespace {

constexpr const char* kEnvVar = "GRMSEG_CPU_CAPABILITY";

#if GRMSEG_X86_CPUID
unsigned long long xgetbv0() {
  unsigned int eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}
#endif

// What the CPU runs, from cpuid (and XCR0: the OS must save the ymm / zmm state).
Capability cpu_level() {
#if GRMSEG_X86_CPUID
  unsigned int a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return Capability::DEFAULT;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
  if (!(osxsave && avx)) return Capability::DEFAULT;
  const unsigned long long xcr0 = xgetbv0();
  if ((xcr0 & 0x6) != 0x6) return Capability::DEFAULT;  // xmm and ymm state
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return Capability::DEFAULT;
  const bool bmi1 = b & (1u << 3), avx2 = b & (1u << 5), bmi2 = b & (1u << 8);
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17), avx512bw = b & (1u << 30),
             avx512vl = b & (1u << 31);
  unsigned int a8 = 0, b8 = 0, c8 = 0, d8 = 0;
  const bool lzcnt = __get_cpuid(0x80000001, &a8, &b8, &c8, &d8) && (c8 & (1u << 5));
  if (!(avx2 && fma && f16c && bmi1 && bmi2 && lzcnt)) return Capability::DEFAULT;
  const bool zmm_state = (xcr0 & 0xE0) == 0xE0;  // opmask, upper halves of zmm0-15, zmm16-31
  if (avx512f && avx512dq && avx512bw && avx512vl && zmm_state) return Capability::AVX512;
  return Capability::AVX2;
#else
  return Capability::DEFAULT;
#endif
}

// The best level this build contains.
constexpr Capability build_level() {
#if defined(GRMSEG_CPU_AVX512)
  return Capability::AVX512;
#elif defined(GRMSEG_CPU_AVX2)
  return Capability::AVX2;
#else
  return Capability::DEFAULT;
#endif
}

bool built(Capability level) {
  switch (level) {
    case Capability::DEFAULT:
      return true;
    case Capability::AVX2:
#ifdef GRMSEG_CPU_AVX2
      return true;
#else
      return false;
#endif
    case Capability::AVX512:
#ifdef GRMSEG_CPU_AVX512
      return true;
#else
      return false;
#endif
  }
  return false;
}

struct State {
  Capability supported = Capability::DEFAULT;
  std::atomic<int> active{0};
  std::string reason;  // why the active level is what it is
};

State& state() {
  static State* s = [] {
    auto* st = new State();
    const Capability cpu = cpu_level();
    st->supported = static_cast<int>(cpu) < static_cast<int>(build_level()) ? cpu : build_level();
    Capability chosen = st->supported;
    st->reason = "detected";
    if (const char* env = std::getenv(kEnvVar); env != nullptr && *env != '\0') {
      Capability asked;
      if (!parse_capability(env, &asked)) {
        st->reason = std::string("detected; ignored ") + kEnvVar + "=" + env + ": not default, avx2 or avx512";
        TORCH_WARN("grmseg: ", kEnvVar, "=", env, " is not default, avx2 or avx512; using ",
                   capability_name(chosen));
      } else if (static_cast<int>(asked) > static_cast<int>(st->supported)) {
        st->reason = std::string("detected; ") + kEnvVar + "=" + env + " asked for more than the CPU and build support";
        TORCH_WARN("grmseg: ", kEnvVar, "=", env, " but the CPU and this build support only up to ",
                   capability_name(st->supported), "; using ", capability_name(chosen));
      } else {
        chosen = asked;
        st->reason = std::string("forced by ") + kEnvVar + "=" + env;
      }
    }
    st->active.store(static_cast<int>(chosen));
    return st;
  }();
  return *s;
}

std::mutex& reason_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace

const char* capability_name(Capability level) {
  switch (level) {
    case Capability::DEFAULT:
      return "default";
    case Capability::AVX2:
      return "avx2";
    case Capability::AVX512:
      return "avx512";
  }
  return "unknown";
}

bool parse_capability(const std::string& name, Capability* level) {
  std::string low;
  for (char ch : name) low.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
  for (Capability c : {Capability::DEFAULT, Capability::AVX2, Capability::AVX512}) {
    if (low == capability_name(c)) {
      *level = c;
      return true;
    }
  }
  return false;
}

Capability supported_capability() { return state().supported; }

bool is_supported(Capability level) {
  return built(level) && static_cast<int>(level) <= static_cast<int>(supported_capability());
}

std::vector<Capability> supported_capabilities() {
  std::vector<Capability> out;
  for (Capability c : {Capability::DEFAULT, Capability::AVX2, Capability::AVX512}) {
    if (is_supported(c)) out.push_back(c);
  }
  return out;
}

Capability capability() { return static_cast<Capability>(state().active.load(std::memory_order_relaxed)); }

void set_capability(Capability level) {
  State& st = state();
  TORCH_CHECK(is_supported(level),
              "grmseg: CPU kernel level ", capability_name(level), " is not available here (the CPU and this build ",
              "support up to ", capability_name(st.supported), ")");
  std::lock_guard<std::mutex> lock(reason_mutex());
  st.active.store(static_cast<int>(level));
  st.reason = "set at run time";
}

std::string capability_report() {
  State& st = state();
  std::lock_guard<std::mutex> lock(reason_mutex());
  std::string out = capability_name(capability());
  out += " (";
  out += st.reason;
  out += "; CPU and build support up to ";
  out += capability_name(st.supported);
  out += ", build has";
  for (Capability c : {Capability::DEFAULT, Capability::AVX2, Capability::AVX512}) {
    if (built(c)) {
      out += " ";
      out += capability_name(c);
    }
  }
  out += ")";
  return out;
}

}  // namespace cpu
}  // namespace grmseg
