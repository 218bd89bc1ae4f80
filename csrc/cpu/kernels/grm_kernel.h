// The GRM kernels' CPU tasks (grm_project forward/backward, grm_reproject forward/backward): what the glue
// (csrc/cpu/grm_cpu.cpp, compiled once) hands to the kernels (grm_kernel.cpp, compiled once per instruction-set
// level). Plain pointers and strides only.
//
// A call is split into tasks = (batch element, pixel chunk), B * chunks of them, chunk_px pixels each (the last
// chunk of an image shorter); a kernel runs tasks [begin, end) and writes each task's own [K, C] partial sums,
// which the glue adds up in a fixed order. The [K, C] partials are stored transposed, [C, K]. Inside a chunk, pixels go in tiles of kGrmTile.
// The *_keep forwards also write the assignment A [B, K, P] (acc type, contiguous) that their *_kept backwards
// then read instead of recomputing it: the same kernels, with the assignment pointer set.
#pragma once

#include <cstdint>

#include "cpu/capability.h"
#include "cpu/kernels/kernel_table.h"

namespace grmseg {
namespace cpu {

constexpr int64_t kGrmTile = 256;  // pixels per tile: a multiple of every level's vector length

struct GrmSplit {
  int64_t B, C, P, K, chunks, chunk_px;
};

// h [K, C] (stored transposed), m [K] of each task (acc type) from x, w [K, C], b [K].
template <typename T>
struct ProjectForwardArgs {
  GrmSplit s;
  MapView<T> x;
  const acc_type<T>* w;
  const acc_type<T>* b;
  acc_type<T>* ht;  // [tasks, C, K]
  acc_type<T>* m;  // [tasks, K]
  acc_type<T>* a = nullptr;  // [B, K, P]: the assignment, written when not null
};

// gx [B, C, P] (contiguous; plus gx_base when given) and each task's gw [K, C] (transposed), gb [K]. With the
// assignment a given, wg and bg hold gh and gm alone ([B, K, C], [B, K]) and A is read from a.
template <typename T>
struct ProjectBackwardArgs {
  GrmSplit s;
  MapView<T> x;
  const acc_type<T>* wg;  // [B, 2K, C]: w, then gh of the batch element (a given: [B, K, C], gh)
  const acc_type<T>* bg;  // [B, 2K]: b, then gm (a given: [B, K], gm)
  const acc_type<T>* nt;  // [B, C, 2K]: gh^T next to w^T (ge given: [B, C, 3K], q^T first)
  MapView<T> gx_base;     // added to gx (any strides); data null: nothing
  T* gx;
  acc_type<T>* gwt;  // [tasks, C, K]
  acc_type<T>* gb;  // [tasks, K]
  const acc_type<T>* a = nullptr;  // [B, K, P]: the kept assignment, or null (recomputed)
  // [B, K, P]: GE of a grm_reproject of the same x (ReprojectBackwardArgs::ge), or null. When given, nt holds
  // [q; gh; w]^T ([B, C, 3K]) and gx also gets q^T GE: the reprojection's gx product joined to this one.
  const acc_type<T>* ge = nullptr;
};

// y [B, C, P] (contiguous) = x + v^T softmax_K(q x).
template <typename T>
struct ReprojectForwardArgs {
  GrmSplit s;
  MapView<T> x;
  const acc_type<T>* q;   // [B, K, C]
  const acc_type<T>* vt;  // [B, C, K]
  T* y;
  acc_type<T>* a = nullptr;  // [B, K, P]: the assignment, written when not null
};

// gx [B, C, P] (contiguous) and each task's gq, gv [K, C] (transposed).
template <typename T>
struct ReprojectBackwardArgs {
  GrmSplit s;
  MapView<T> x, gy;
  const acc_type<T>* q;   // [B, K, C]
  const acc_type<T>* v;   // [B, K, C]
  const acc_type<T>* qt;  // [B, C, K] (null with ge: no gx product)
  T* gx;
  acc_type<T>* gqt;  // [tasks, C, K]
  acc_type<T>* gvt;  // [tasks, C, K]
  const acc_type<T>* a = nullptr;  // [B, K, P]: the kept assignment, or null (recomputed)
  // [B, K, P]: when not null, GE (the gradient of the logits q x) goes here and gx (null) is not computed: a
  // grm_project backward of the same x adds gy + q^T GE to its own gx (ProjectBackwardArgs::ge).
  acc_type<T>* ge = nullptr;
};

template <typename T>
struct GrmFns {
  void (*project_forward)(const ProjectForwardArgs<T>&, int64_t begin, int64_t end);
  void (*project_backward)(const ProjectBackwardArgs<T>&, int64_t begin, int64_t end);
  void (*reproject_forward)(const ReprojectForwardArgs<T>&, int64_t begin, int64_t end);
  void (*reproject_backward)(const ReprojectBackwardArgs<T>&, int64_t begin, int64_t end);
};

using GrmKernels = PerDtype<GrmFns>;

}  // namespace cpu
}  // namespace grmseg

GRMSEG_DECLARE_CPU_KERNELS(GrmKernels, grm_kernels)
