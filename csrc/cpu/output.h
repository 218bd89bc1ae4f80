// Allocation of the CPU kernels' large outputs.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace grmseg {
namespace cpu {

// Outputs at least this large ask Linux for transparent huge pages (see empty_output).
constexpr int64_t kHugePageOutputBytes = int64_t(4) << 20;

// at::empty(sizes, options), and for an output of at least kHugePageOutputBytes, its whole 2 MiB pages marked for
// transparent huge pages (madvise MADV_HUGEPAGE, Linux) before anything writes them. Memory that large usually comes
// to the allocator fresh from the kernel (glibc maps blocks of 32 MiB and more anew on every allocation): its first
// write then faults it in 2 MiB at a time instead of 4 KiB (8192 faults for a [8, 256, 64 * 64] fp32 map: more than
// half of grm_reproject's forward time there on a 2-core KVM guest). Memory the allocator reuses is left as it is;
// with huge pages off (THP "never") the advice does nothing.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
  if (bytes >= kHugePageOutputBytes) {
    constexpr uintptr_t kHuge = uintptr_t(2) << 20;
    const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = (begin + bytes) & ~(kHuge - 1);
    if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // advice: may fail
  }
#endif
  return t;
}

}  // namespace cpu
}  // namespace grmseg
