// How finely the CPU glue splits its work over threads.
#pragma once

#include <cstdint>

namespace grmseg {
namespace cpu {

// Below this many flops (or element operations) a call runs on the calling thread: starting the other threads
// of a parallel region costs microseconds, and many more when they have been descheduled on a busy machine.
constexpr double kMinParallelWork = 1 << 22;

// The grain for at::parallel_for over `tasks` tasks that together do `work`: all of them at once (no parallel
// region) for small calls, one at a time otherwise. The result never depends on it (the tasks are the same).
inline int64_t grain_for(int64_t tasks, double work) { return work < kMinParallelWork && tasks > 0 ? tasks : 1; }

}  // namespace cpu
}  // namespace grmseg
