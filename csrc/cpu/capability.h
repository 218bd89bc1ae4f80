// Instruction-set levels of grmseg's CPU kernels and the run-time choice between them.
//
// Every file under csrc/cpu/kernels/ is compiled once per level (as ATen compiles aten/src/ATen/native/cpu/):
//   DEFAULT  the baseline of the target (SSE2 on x86-64), always built
//   AVX2     -mavx2 -mfma -mf16c -mbmi -mbmi2 -mlzcnt                     (x86-64 with GCC or Clang)
//   AVX512   the AVX2 flags plus -mavx512f -mavx512bw -mavx512vl -mavx512dq (x86-64 with GCC or Clang)
// with CPU_CAPABILITY defined to the level's name, so that its code lands in grmseg::cpu::<LEVEL> (and
// at::vec::Vectorized in at::vec::<LEVEL>). The build defines GRMSEG_CPU_AVX2 / GRMSEG_CPU_AVX512 for every file
// when those variants are linked in. Objects are linked DEFAULT first, so the one copy the linker keeps of an
// inline function shared with the glue (a c10 or std template) is the baseline one.
//
// A kernel family declares a table of function pointers once per level with GRMSEG_DECLARE_CPU_KERNELS; its
// kernel file defines `const Table name = {...}` inside grmseg::cpu::CPU_CAPABILITY (constant-initialised: no
// code runs at load time), and the glue calls GRMSEG_CPU_KERNELS(name) to get the active level's table.
//
// The active level is the best one that both the CPU (cpuid, and the OS saves the registers) and the build
// support, unless $GRMSEG_CPU_CAPABILITY (default | avx2 | avx512, read once at first use) asks for a lower one;
// set_capability changes it at run time (the tests run every kernel at every level).
#pragma once

#include <string>
#include <vector>

namespace grmseg {
namespace cpu {

enum class Capability : int { DEFAULT = 0, AVX2 = 1, AVX512 = 2 };

// "default", "avx2", "avx512".
const char* capability_name(Capability level);

// The best level the CPU runs and this build contains.
Capability supported_capability();

// Every level this CPU runs and this build contains, lowest first.
std::vector<Capability> supported_capabilities();

// Whether this CPU runs `level` and this build contains it (one of supported_capabilities()).
bool is_supported(Capability level);

// The level the kernels use now.
Capability capability();

// Use `level` from now on; it must be one of supported_capabilities() (else c10::Error naming them).
void set_capability(Capability level);

// Parses "default" / "avx2" / "avx512" (any case); false for anything else.
bool parse_capability(const std::string& name, Capability* level);

// One line: the level in use and why (detected, or forced by GRMSEG_CPU_CAPABILITY), and what the CPU and the
// build support, e.g. "avx2 (forced by GRMSEG_CPU_CAPABILITY=avx2; CPU and build support avx512)".
std::string capability_report();

template <typename Table>
const Table& select_kernels_at(Capability level, const Table& base, const Table* avx2, const Table* avx512) {
  switch (level) {
    case Capability::AVX512:
      if (avx512 != nullptr) return *avx512;
      [[fallthrough]];
    case Capability::AVX2:
      if (avx2 != nullptr) return *avx2;
      [[fallthrough]];
    default:
      return base;
  }
}

template <typename Table>
const Table& select_kernels(const Table& base, const Table* avx2, const Table* avx512) {
  return select_kernels_at(capability(), base, avx2, avx512);
}

}  // namespace cpu
}  // namespace grmseg

#ifdef GRMSEG_CPU_AVX2
#define GRMSEG_IF_AVX2(...) __VA_ARGS__
#define GRMSEG_AVX2_PTR(name) (&::grmseg::cpu::AVX2::name)
#else
#define GRMSEG_IF_AVX2(...)
#define GRMSEG_AVX2_PTR(name) (static_cast<decltype(&::grmseg::cpu::DEFAULT::name)>(nullptr))
#endif
#ifdef GRMSEG_CPU_AVX512
#define GRMSEG_IF_AVX512(...) __VA_ARGS__
#define GRMSEG_AVX512_PTR(name) (&::grmseg::cpu::AVX512::name)
#else
#define GRMSEG_IF_AVX512(...)
#define GRMSEG_AVX512_PTR(name) (static_cast<decltype(&::grmseg::cpu::DEFAULT::name)>(nullptr))
#endif

// Declares `extern const Table name;` in grmseg::cpu::DEFAULT and in every other level this build links.
#define GRMSEG_DECLARE_CPU_KERNELS(Table, name)                                     \
  namespace grmseg {                                                                \
  namespace cpu {                                                                   \
  namespace DEFAULT {                                                               \
  extern const Table name;                                                          \
  }                                                                                 \
  GRMSEG_IF_AVX2(namespace AVX2 { extern const Table name; })                       \
  GRMSEG_IF_AVX512(namespace AVX512 { extern const Table name; })                   \
  }                                                                                 \
  }

// The table `name` of the active level (glue code only).
#define GRMSEG_CPU_KERNELS(name)                                                                  \
  ::grmseg::cpu::select_kernels(::grmseg::cpu::DEFAULT::name, GRMSEG_AVX2_PTR(name), GRMSEG_AVX512_PTR(name))

// The table `name` of `level` (a supported one; glue code only).
#define GRMSEG_CPU_KERNELS_AT(name, level)                                                                     \
  ::grmseg::cpu::select_kernels_at((level), ::grmseg::cpu::DEFAULT::name, GRMSEG_AVX2_PTR(name),              \
                                   GRMSEG_AVX512_PTR(name))
