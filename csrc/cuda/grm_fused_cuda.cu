// grm_project_backward, grm_reproject_forward and grm_reproject_backward on CUDA.
//
// Same scheme as grm_project_forward (grm_project_cuda.cu): one block per (batch, pixel chunk) walks its chunk
// in tiles of `tile` pixels. Per tile the block
//   1. computes the [K][tile] logits (and the [K][tile] gradient of the assignment) in shared memory, staging
//      x (and gy) by kChanChunk channels with loads coalesced along P (one owner thread per (k, p)),
//   2. takes the softmax over K per pixel and its backward in registers (one thread per pixel, fp32/fp64),
//   3. accumulates the [K, C] reductions over pixels into this block's partial in global memory (one owner
//      thread per (k, c): no atomics) and writes the [C, tile] pixel outputs coalesced along P.
// A second kernel sums the partials of the chunks in a fixed order and casts them to the input dtype, so every
// result is deterministic. The chunking depends on the shapes only (grm_plan.cuh). Shared rows are padded to
// tile + 1, the softmax takes a warp per pixel, and x is staged with loads coalesced along its smaller stride
// (pixels for NCHW, channels for channels-last): grm_fused_kernels.cuh.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <limits>

#include "cuda/grm_fused_kernels.cuh"
#include "cuda/grm_plan.cuh"
#include "cuda/grm_project_cuda.h"
#include "grm_project.h"
#include "grm_reproject.h"

namespace grmseg {
namespace {

using namespace grmseg_kernels;  // kThreads, kChanChunk and the kernels
using grm_plan::Launch;
using grm_plan::plan;
using grm_plan::reduce_chunks;

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_project_backward_cuda(const at::Tensor& gh, const at::Tensor& gm,
                                                                        const at::Tensor& x, const at::Tensor& w,
                                                                        const at::Tensor& b,
                                                                        const std::optional<at::Tensor>& gx_base) {
  const char* who = "grmseg_C::grm_project_backward (CUDA)";
  check_project_inputs(x, w, b, c10::DeviceType::CUDA, who);
  check_project_grads(gh, gm, x, w, who);
  check_project_gx_base(gx_base, x, who);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2), K = w.size(0);
  at::Tensor gx = at::empty({B, C, P}, x.options());
  at::Tensor gw = at::empty({K, C}, w.options());
  at::Tensor gb = at::empty({K}, b.options());
  if (B == 0 || K == 0 || P == 0) {
    if (gx_base.has_value()) gx.copy_(*gx_base); else gx.zero_();
    return {gx, gw.zero_(), gb.zero_()};
  }
  const at::ScalarType acc_type = at::toOpMathType(x.scalar_type());
  const at::Tensor w_acc = w.to(acc_type).contiguous(), b_acc = b.to(acc_type).contiguous();
  const at::Tensor gh_acc = gh.to(acc_type).contiguous(), gm_acc = gm.to(acc_type).contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grm_project_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Launch l = plan<acc_t>(B, K, C, P, 2, 1, who);
    const int64_t blocks = B * l.chunks;
    at::Tensor part_w = at::zeros({blocks, K, C}, x.options().dtype(acc_type));
    at::Tensor part_b = at::empty({blocks, K}, x.options().dtype(acc_type));
    project_backward_kernel<scalar_t, acc_t><<<static_cast<unsigned int>(blocks), kThreads, l.smem, stream>>>(
        x.const_data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.stride(2), w_acc.const_data_ptr<acc_t>(),
        b_acc.const_data_ptr<acc_t>(), gh_acc.const_data_ptr<acc_t>(), gm_acc.const_data_ptr<acc_t>(),
        gx.mutable_data_ptr<scalar_t>(), part_w.mutable_data_ptr<acc_t>(), part_b.mutable_data_ptr<acc_t>(), C, P,
        static_cast<int>(K), l.tile, l.chunk_px, l.chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    reduce_chunks<scalar_t, acc_t>(part_w, gw, 1, K * C, blocks, stream);
    reduce_chunks<scalar_t, acc_t>(part_b, gb, 1, K, blocks, stream);
  });
  // added after the kernel here (one more pass over the map; the CPU kernel adds it in its last product)
  if (gx_base.has_value()) gx.add_(*gx_base);
  return {gx, gw, gb};
}

at::Tensor grm_reproject_forward_cuda(const at::Tensor& x, const at::Tensor& q, const at::Tensor& v) {
  const char* who = "grmseg_C::grm_reproject_forward (CUDA)";
  check_reproject_inputs(x, q, v, c10::DeviceType::CUDA, who);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2), K = q.size(1);
  at::Tensor y = at::empty({B, C, P}, x.options());
  if (B == 0 || C == 0 || P == 0) return y;
  if (K == 0) return y.copy_(x);
  const at::ScalarType acc_type = at::toOpMathType(x.scalar_type());
  const at::Tensor q_acc = q.to(acc_type).contiguous(), v_acc = v.to(acc_type).contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grm_reproject_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Launch l = plan<acc_t>(B, K, C, P, 1, 1, who);
    const int64_t blocks = B * l.chunks;
    reproject_forward_kernel<scalar_t, acc_t><<<static_cast<unsigned int>(blocks), kThreads, l.smem, stream>>>(
        x.const_data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.stride(2), q_acc.const_data_ptr<acc_t>(),
        v_acc.const_data_ptr<acc_t>(), y.mutable_data_ptr<scalar_t>(), C, P, static_cast<int>(K), l.tile,
        l.chunk_px, l.chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grm_reproject_backward_cuda(const at::Tensor& gy, const at::Tensor& x,
                                                                          const at::Tensor& q, const at::Tensor& v) {
  const char* who = "grmseg_C::grm_reproject_backward (CUDA)";
  check_reproject_inputs(x, q, v, c10::DeviceType::CUDA, who);
  check_reproject_grad(gy, x, who);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2), K = q.size(1);
  at::Tensor gx = at::empty({B, C, P}, x.options());
  at::Tensor gq = at::empty({B, K, C}, q.options());
  at::Tensor gv = at::empty({B, K, C}, v.options());
  if (B == 0 || C == 0 || K == 0 || P == 0) {
    return {gx.copy_(gy), gq.zero_(), gv.zero_()};
  }
  const at::ScalarType acc_type = at::toOpMathType(x.scalar_type());
  const at::Tensor q_acc = q.to(acc_type).contiguous(), v_acc = v.to(acc_type).contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grm_reproject_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Launch l = plan<acc_t>(B, K, C, P, 2, 2, who);
    const int64_t blocks = B * l.chunks;
    at::Tensor part_q = at::zeros({blocks, K, C}, x.options().dtype(acc_type));
    at::Tensor part_v = at::zeros({blocks, K, C}, x.options().dtype(acc_type));
    reproject_backward_kernel<scalar_t, acc_t><<<static_cast<unsigned int>(blocks), kThreads, l.smem, stream>>>(
        gy.const_data_ptr<scalar_t>(), gy.stride(0), gy.stride(1), gy.stride(2), x.const_data_ptr<scalar_t>(),
        x.stride(0), x.stride(1), x.stride(2), q_acc.const_data_ptr<acc_t>(), v_acc.const_data_ptr<acc_t>(),
        gx.mutable_data_ptr<scalar_t>(), part_q.mutable_data_ptr<acc_t>(), part_v.mutable_data_ptr<acc_t>(), C, P,
        static_cast<int>(K), l.tile, l.chunk_px, l.chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    reduce_chunks<scalar_t, acc_t>(part_q, gq, B, K * C, l.chunks, stream);
    reduce_chunks<scalar_t, acc_t>(part_v, gv, B, K * C, l.chunks, stream);
  });
  return {gx, gq, gv};
}

}  // namespace grmseg
