// grm_project forward/backward and grm_reproject forward/backward on the CPU: checks, allocation, the split into
// tasks and the fixed-order sums of their partials. The kernels themselves are in csrc/cpu/kernels/grm_kernel.cpp,
// compiled once per instruction-set level; the level in use is picked at run time (csrc/cpu/capability.h).
//
// A call is split into (batch element, pixel chunk) tasks by the shapes alone, never by the thread count; each
// task writes its own [K, C] partial sums, added afterwards in a fixed order, so results are bitwise equal for
// any number of threads. fp32 accumulation for fp16/bf16 inputs, fp64 for fp64. Nothing of size [B, K, P] is
// allocated but the assignment the keep variants return and the GE the joint reprojection backward returns.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu/grm_project_cpu.h"
#include "cpu/kernels/grm_kernel.h"
#include "cpu/output.h"
#include "cpu/parallel.h"
#include "grm_project.h"
#include "grm_reproject.h"

namespace grmseg {
namespace {

constexpr int64_t kTargetTasks = 32;  // enough tasks to keep the threads of a large machine busy

cpu::GrmSplit make_split(int64_t B, int64_t C, int64_t P, int64_t K) {
  const int64_t tiles = std::max<int64_t>(1, (P + cpu::kGrmTile - 1) / cpu::kGrmTile);
  int64_t chunks = std::min(tiles, std::max<int64_t>(1, (kTargetTasks + B - 1) / std::max<int64_t>(B, 1)));
  const int64_t tiles_per_chunk = (tiles + chunks - 1) / chunks;
  chunks = (tiles + tiles_per_chunk - 1) / tiles_per_chunk;
  return {B, C, P, K, chunks, tiles_per_chunk * cpu::kGrmTile};
}

template <typename T>
cpu::MapView<T> view(const at::Tensor& t) {
  return {t.const_data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2)};
}

at::Tensor acc_contiguous(const at::Tensor& t, at::ScalarType acc) { return t.to(acc).contiguous(); }

// out[g, r, c] = sum_{j < per_group} part[g * per_group + j, c, r] (r < rows, c < cols): the tasks' transposed
// [cols, rows] partials added in the order of j, cast to out's dtype. rows = 1 for vector partials.
template <typename acc_t, typename out_t>
void sum_partials(const acc_t* part, int64_t groups, int64_t per_group, int64_t rows, int64_t cols, out_t* out) {
  const int64_t n = rows * cols;
  constexpr int64_t kBlock = 2048;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const double work = static_cast<double>(groups) * per_group * n;
  at::parallel_for(0, groups * blocks, cpu::grain_for(groups * blocks, work), [&](int64_t begin, int64_t end) {
    acc_t acc[kBlock];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / blocks, i0 = (task % blocks) * kBlock, len = std::min(kBlock, n - i0);
      const acc_t* src = part + g * per_group * n + i0;
      std::copy(src, src + len, acc);
      for (int64_t j = 1; j < per_group; ++j) {
        const acc_t* pj = src + j * n;
        for (int64_t i = 0; i < len; ++i) acc[i] += pj[i];
      }
      out_t* og = out + g * n;
      int64_t c = i0 / rows, r = i0 % rows;  // of element i0 + i, stepped along (no division per element)
      for (int64_t i = 0; i < len; ++i) {
        og[r * cols + c] = static_cast<out_t>(acc[i]);
        if (++r == rows) {
          r = 0;
          ++c;
        }
      }
    }
  });
}

template <typename Args, typename Fn>
void run_tasks(const Args& args, int64_t tasks, Fn fn) {
  const cpu::GrmSplit& s = args.s;
  const double work = 2.0 * static_cast<double>(s.B) * s.C * s.P * std::max<int64_t>(s.K, 1);
  at::parallel_for(0, tasks, cpu::grain_for(tasks, work), [&](int64_t begin, int64_t end) { fn(args, begin, end); });
}

}  // namespace

// ------------------------------------------------------------------------------------------ grm_project_forward
namespace {

// h, m and (keep) the assignment a [B, K, P] in the accumulation type; a is empty without keep.
std::tuple<at::Tensor, at::Tensor, at::Tensor> project_forward(const at::Tensor& x, const at::Tensor& w,
                                                               const at::Tensor& b, bool keep, const char* who) {
  check_project_inputs(x, w, b, c10::DeviceType::CPU, who);
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2), K = w.size(0);
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  at::Tensor h = at::empty({B, K, C}, x.options());
  at::Tensor m = at::empty({B, K}, x.options());
  at::Tensor a = cpu::empty_output(keep ? std::vector<int64_t>{B, K, P} : std::vector<int64_t>{0},
                                   x.options().dtype(acc));
  if (B == 0 || K == 0 || P == 0) return {h.zero_(), m.zero_(), a};
  const at::Tensor w_acc = acc_contiguous(w, acc), b_acc = acc_contiguous(b, acc);
  const cpu::GrmSplit split = make_split(B, C, P, K);
  const int64_t tasks = B * split.chunks;
  at::Tensor part_h = at::empty({tasks, C, K}, x.options().dtype(acc));
  at::Tensor part_m = at::empty({tasks, K}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grm_project_forward_cpu", [&] {
    using acc_t = cpu::acc_type<scalar_t>;
    const cpu::ProjectForwardArgs<scalar_t> args{split,
                                                 view<scalar_t>(x),
                                                 w_acc.const_data_ptr<acc_t>(),
                                                 b_acc.const_data_ptr<acc_t>(),
                                                 part_h.mutable_data_ptr<acc_t>(),
                                                 part_m.mutable_data_ptr<acc_t>(),
                                                 keep ? a.mutable_data_ptr<acc_t>() : nullptr};
    run_tasks(args, tasks, GRMSEG_CPU_KERNELS(grm_kernels).get<scalar_t>().project_forward);
    sum_partials(args.ht, B, split.chunks, K, C, h.mutable_data_ptr<scalar_t>());
    sum_partials(args.m, B, split.chunks, 1, K, m.mutable_data_ptr<scalar_t>());
  });
  return {h, m, a};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> grm_project_forward_cpu(const at::Tensor& x, const at::Tensor& w,
                                                            const at::Tensor& b) {
  auto [h, m, a] = project_forward(x, w, b, false, "grmseg_C::grm_project_forward (CPU)");
  return {h, m};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_project_keep_forward_cpu(const at::Tensor& x, const at::Tensor& w,
                                                                           const at::Tensor& b) {
  return project_forward(x, w, b, true, "grmseg_C::grm_project_keep_forward (CPU)");
}

// ------------------------------------------------------------------------------------------ grm_project_backward
namespace {

// The reprojection's part of a joint backward (see grm_kernel.cpp): its GE [B, K, P] and q [B, K, C].
struct JointPart {
  const at::Tensor& ge;
  const at::Tensor& q;
};

// gx, gw, gb; with `a` (the kept assignment) A is read from it, else recomputed from w, b; with `joint`, gx also
// gets q^T GE (gx_base is then the reprojection's gy).
std::tuple<at::Tensor, at::Tensor, at::Tensor> project_backward(const at::Tensor& gh, const at::Tensor& gm,
                                                                const at::Tensor& x, const at::Tensor& w,
                                                                const at::Tensor& b,
                                                                const std::optional<at::Tensor>& gx_base,
                                                                const at::Tensor* a, const JointPart* joint,
                                                                const char* who) {
  check_project_inputs(x, w, b, c10::DeviceType::CPU, who);
  check_project_grads(gh, gm, x, w, who);
  check_project_gx_base(gx_base, x, who);
  if (a != nullptr) check_assignment(*a, x, w.size(0), who);
  if (joint != nullptr) {
    check_assignment(joint->ge, x, w.size(0), who);
    TORCH_CHECK(joint->q.sizes() == gh.sizes() && joint->q.scalar_type() == x.scalar_type(), who,
                ": q must be [B, K, C] = ", gh.sizes(), " with the dtype of x (", x.scalar_type(), "), got ",
                joint->q.scalar_type(), " of shape ", joint->q.sizes());
    TORCH_CHECK(joint->q.device() == x.device(), who, ": q must be on the device of x (", x.device(), "), got ",
                joint->q.device());
  }
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2), K = w.size(0);
  at::Tensor gx = cpu::empty_output({B, C, P}, x.options());
  at::Tensor gw = at::empty({K, C}, w.options());
  at::Tensor gb = at::empty({K}, b.options());
  if (B == 0 || K == 0 || P == 0) {
    if (gx_base.has_value()) gx.copy_(*gx_base); else gx.zero_();
    return {gx, gw.zero_(), gb.zero_()};
  }
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  const at::Tensor w_b = w.to(acc).unsqueeze(0).expand({B, K, C});
  const at::Tensor gh_acc = gh.to(acc);
  // [B, 2K, C] and [B, 2K]: [w; gh] and [b; gm], or with the kept assignment gh and gm alone
  const at::Tensor wg = a != nullptr ? gh_acc.contiguous() : at::cat({w_b, gh_acc}, 1).contiguous();
  const at::Tensor bg = a != nullptr ? gm.to(acc).contiguous()
                                     : at::cat({b.to(acc).unsqueeze(0).expand({B, K}), gm.to(acc)}, 1).contiguous();
  // [B, C, 2K] (joint: [B, C, 3K], q^T first)
  const at::Tensor nt = (joint != nullptr ? at::cat({joint->q.to(acc), gh_acc, w_b}, 1) : at::cat({gh_acc, w_b}, 1))
                            .transpose(1, 2)
                            .contiguous();
  const at::Tensor ge_c = joint != nullptr ? joint->ge.contiguous() : at::Tensor();
  const at::Tensor a_c = a != nullptr ? a->contiguous() : at::Tensor();
  const cpu::GrmSplit split = make_split(B, C, P, K);
  const int64_t tasks = B * split.chunks;
  at::Tensor part_w = at::empty({tasks, C, K}, x.options().dtype(acc));
  at::Tensor part_b = at::empty({tasks, K}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grm_project_backward_cpu", [&] {
    using acc_t = cpu::acc_type<scalar_t>;
    const cpu::ProjectBackwardArgs<scalar_t> args{split,
                                                  view<scalar_t>(x),
                                                  wg.const_data_ptr<acc_t>(),
                                                  bg.const_data_ptr<acc_t>(),
                                                  nt.const_data_ptr<acc_t>(),
                                                  gx_base.has_value() ? view<scalar_t>(*gx_base)
                                                                      : cpu::MapView<scalar_t>{nullptr, 0, 0, 0},
                                                  gx.mutable_data_ptr<scalar_t>(),
                                                  part_w.mutable_data_ptr<acc_t>(),
                                                  part_b.mutable_data_ptr<acc_t>(),
                                                  a != nullptr ? a_c.const_data_ptr<acc_t>() : nullptr,
                                                  joint != nullptr ? ge_c.const_data_ptr<acc_t>() : nullptr};
    run_tasks(args, tasks, GRMSEG_CPU_KERNELS(grm_kernels).get<scalar_t>().project_backward);
    sum_partials(args.gwt, 1, tasks, K, C, gw.mutable_data_ptr<scalar_t>());
    sum_partials(args.gb, 1, tasks, 1, K, gb.mutable_data_ptr<scalar_t>());
  });
  return {gx, gw, gb};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_project_backward_cpu(const at::Tensor& gh, const at::Tensor& gm,
                                                                       const at::Tensor& x, const at::Tensor& w,
                                                                       const at::Tensor& b,
                                                                       const std::optional<at::Tensor>& gx_base) {
  return project_backward(gh, gm, x, w, b, gx_base, nullptr, nullptr, "grmseg_C::grm_project_backward (CPU)");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_project_backward_kept_cpu(const at::Tensor& gh,
                                                                            const at::Tensor& gm, const at::Tensor& x,
                                                                            const at::Tensor& a, const at::Tensor& w,
                                                                            const at::Tensor& b,
                                                                            const std::optional<at::Tensor>& gx_base) {
  return project_backward(gh, gm, x, w, b, gx_base, &a, nullptr, "grmseg_C::grm_project_backward_kept (CPU)");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_project_backward_kept_joint_cpu(
    const at::Tensor& gh, const at::Tensor& gm, const at::Tensor& x, const at::Tensor& a, const at::Tensor& w,
    const at::Tensor& b, const at::Tensor& gy, const at::Tensor& ge, const at::Tensor& q) {
  const char* who = "grmseg_C::grm_project_backward_kept_joint (CPU)";
  check_reproject_grad(gy, x, who);
  const JointPart joint{ge, q};
  return project_backward(gh, gm, x, w, b, gy, &a, &joint, who);
}

// ----------------------------------------------------------------------------------------- grm_reproject_forward
namespace {

// y and (keep) the assignment a [B, K, P] in the accumulation type; a is empty without keep.
std::tuple<at::Tensor, at::Tensor> reproject_forward(const at::Tensor& x, const at::Tensor& q, const at::Tensor& v,
                                                     bool keep, const char* who) {
  check_reproject_inputs(x, q, v, c10::DeviceType::CPU, who);
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2), K = q.size(1);
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  at::Tensor y = cpu::empty_output({B, C, P}, x.options());
  at::Tensor a = cpu::empty_output(keep ? std::vector<int64_t>{B, K, P} : std::vector<int64_t>{0},
                                   x.options().dtype(acc));
  if (B == 0 || P == 0) return {y, a};
  if (C == 0 || K == 0) {  // no scores: the softmax of K zeros (nothing when K = 0)
    if (keep) a.fill_(K > 0 ? 1.0 / static_cast<double>(K) : 0.0);
    return {y.copy_(x), a};
  }
  const at::Tensor q_acc = acc_contiguous(q, acc);
  const at::Tensor vt = v.to(acc).transpose(1, 2).contiguous();  // [B, C, K]
  const cpu::GrmSplit split = make_split(B, C, P, K);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grm_reproject_forward_cpu", [&] {
    using acc_t = cpu::acc_type<scalar_t>;
    const cpu::ReprojectForwardArgs<scalar_t> args{split,
                                                   view<scalar_t>(x),
                                                   q_acc.const_data_ptr<acc_t>(),
                                                   vt.const_data_ptr<acc_t>(),
                                                   y.mutable_data_ptr<scalar_t>(),
                                                   keep ? a.mutable_data_ptr<acc_t>() : nullptr};
    run_tasks(args, B * split.chunks, GRMSEG_CPU_KERNELS(grm_kernels).get<scalar_t>().reproject_forward);
  });
  return {y, a};
}

// gx, gq, gv; with `a` (the kept assignment) A is read from it, else recomputed from q. With `joint`, GE [B, K, P]
// (accumulation dtype) in place of gx: see grm_kernel.cpp.
std::tuple<at::Tensor, at::Tensor, at::Tensor> reproject_backward(const at::Tensor& gy, const at::Tensor& x,
                                                                  const at::Tensor& q, const at::Tensor& v,
                                                                  const at::Tensor* a, bool joint, const char* who) {
  check_reproject_inputs(x, q, v, c10::DeviceType::CPU, who);
  check_reproject_grad(gy, x, who);
  if (a != nullptr) check_assignment(*a, x, q.size(1), who);
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2), K = q.size(1);
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  at::Tensor gx = joint ? cpu::empty_output({B, K, P}, x.options().dtype(acc)) : cpu::empty_output({B, C, P}, x.options());
  at::Tensor gq = at::empty({B, K, C}, q.options());
  at::Tensor gv = at::empty({B, K, C}, v.options());
  if (B == 0 || C == 0 || K == 0 || P == 0) return {joint ? gx.zero_() : gx.copy_(gy), gq.zero_(), gv.zero_()};
  const at::Tensor q_acc = acc_contiguous(q, acc), v_acc = acc_contiguous(v, acc);
  // [B, C, K], for gx's product (none in the joint backward)
  const at::Tensor qt = joint ? at::Tensor() : q_acc.transpose(1, 2).contiguous();
  const at::Tensor a_c = a != nullptr ? a->contiguous() : at::Tensor();
  const cpu::GrmSplit split = make_split(B, C, P, K);
  const int64_t tasks = B * split.chunks;
  at::Tensor part_q = at::empty({tasks, C, K}, x.options().dtype(acc));
  at::Tensor part_v = at::empty({tasks, C, K}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grm_reproject_backward_cpu", [&] {
    using acc_t = cpu::acc_type<scalar_t>;
    const cpu::ReprojectBackwardArgs<scalar_t> args{split,
                                                    view<scalar_t>(x),
                                                    view<scalar_t>(gy),
                                                    q_acc.const_data_ptr<acc_t>(),
                                                    v_acc.const_data_ptr<acc_t>(),
                                                    joint ? nullptr : qt.const_data_ptr<acc_t>(),
                                                    joint ? nullptr : gx.mutable_data_ptr<scalar_t>(),
                                                    part_q.mutable_data_ptr<acc_t>(),
                                                    part_v.mutable_data_ptr<acc_t>(),
                                                    a != nullptr ? a_c.const_data_ptr<acc_t>() : nullptr,
                                                    joint ? gx.mutable_data_ptr<acc_t>() : nullptr};
    run_tasks(args, tasks, GRMSEG_CPU_KERNELS(grm_kernels).get<scalar_t>().reproject_backward);
    sum_partials(args.gqt, B, split.chunks, K, C, gq.mutable_data_ptr<scalar_t>());
    sum_partials(args.gvt, B, split.chunks, K, C, gv.mutable_data_ptr<scalar_t>());
  });
  return {gx, gq, gv};
}

}  // namespace

at::Tensor grm_reproject_forward_cpu(const at::Tensor& x, const at::Tensor& q, const at::Tensor& v) {
  return std::get<0>(reproject_forward(x, q, v, false, "grmseg_C::grm_reproject_forward (CPU)"));
}

std::tuple<at::Tensor, at::Tensor> grm_reproject_keep_forward_cpu(const at::Tensor& x, const at::Tensor& q,
                                                                  const at::Tensor& v) {
  return reproject_forward(x, q, v, true, "grmseg_C::grm_reproject_keep_forward (CPU)");
}

// ---------------------------------------------------------------------------------------- grm_reproject_backward
std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_reproject_backward_cpu(const at::Tensor& gy, const at::Tensor& x,
                                                                         const at::Tensor& q, const at::Tensor& v) {
  return reproject_backward(gy, x, q, v, nullptr, false, "grmseg_C::grm_reproject_backward (CPU)");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_reproject_backward_kept_cpu(const at::Tensor& gy,
                                                                              const at::Tensor& x, const at::Tensor& a,
                                                                              const at::Tensor& q,
                                                                              const at::Tensor& v) {
  return reproject_backward(gy, x, q, v, &a, false, "grmseg_C::grm_reproject_backward_kept (CPU)");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_reproject_backward_kept_joint_cpu(const at::Tensor& gy,
                                                                                    const at::Tensor& x,
                                                                                    const at::Tensor& a,
                                                                                    const at::Tensor& q,
                                                                                    const at::Tensor& v) {
  return reproject_backward(gy, x, q, v, &a, true, "grmseg_C::grm_reproject_backward_kept_joint (CPU)");
}

}  // namespace grmseg
