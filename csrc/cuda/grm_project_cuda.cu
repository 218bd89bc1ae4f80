// grm_project_forward on CUDA: the host code. The kernel is project_forward_kernel of grm_fused_kernels.cuh,
// which shares its tile, staging and softmax code with the other GRM kernels (and with the NVRTC path).
//
// One block per (batch, pixel chunk) walks its chunk in tiles of `tile` pixels. For each tile the block
//   1. computes the logits s[K][tile] = b + w x in shared memory, staging x by kChanChunk channels (loads
//      coalesced along the smaller stride of x; each (k, p) is owned by one thread),
//   2. takes the softmax over K per pixel (a warp per pixel, fp32 / fp64 math),
//   3. adds sum_p a[k][p] to m[k] (shared, one owner thread per k) and sum_p a[k][p] x[c][p] to its partial
//      h[k][c] (global, one owner thread per (k, c) and a __syncthreads between tiles: no atomics).
// reduce_chunks_kernel then sums the chunk partials of each batch in a fixed order and casts to the input
// dtype, so the result is deterministic. The chunking depends on the shapes only (grm_plan.cuh).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/grm_fused_kernels.cuh"
#include "cuda/grm_plan.cuh"
#include "cuda/grm_project_cuda.h"
#include "grm_project.h"

namespace grmseg {

std::tuple<at::Tensor, at::Tensor> grm_project_forward_cuda(const at::Tensor& x, const at::Tensor& w,
                                                             const at::Tensor& b) {
  const char* who = "grmseg_C::grm_project_forward (CUDA)";
  check_project_inputs(x, w, b, c10::DeviceType::CUDA, who);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2), K = w.size(0);
  at::Tensor h = at::empty({B, K, C}, x.options());
  at::Tensor m = at::empty({B, K}, x.options());
  if (B == 0 || K == 0) {
    return {h, m};
  }
  const at::ScalarType acc_type = at::toOpMathType(x.scalar_type());
  const at::Tensor w_acc = w.to(acc_type).contiguous();
  const at::Tensor b_acc = b.to(acc_type).contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grm_project_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const grm_plan::Launch l = grm_plan::plan<acc_t>(B, K, C, P, 1, 1, who);
    const int64_t blocks = B * l.chunks;
    at::Tensor part_h = at::zeros({blocks, K, C}, x.options().dtype(acc_type));
    at::Tensor part_m = at::empty({blocks, K}, x.options().dtype(acc_type));
    grmseg_kernels::project_forward_kernel<scalar_t, acc_t>
        <<<static_cast<unsigned int>(blocks), grmseg_kernels::kThreads, l.smem, stream>>>(
            x.const_data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.stride(2), w_acc.const_data_ptr<acc_t>(),
            b_acc.const_data_ptr<acc_t>(), part_h.mutable_data_ptr<acc_t>(), part_m.mutable_data_ptr<acc_t>(), C,
            P, static_cast<int>(K), l.tile, l.chunk_px, l.chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grm_plan::reduce_chunks<scalar_t, acc_t>(part_h, h, B, K * C, l.chunks, stream);
    grm_plan::reduce_chunks<scalar_t, acc_t>(part_m, m, B, K, l.chunks, stream);
  });
  return {h, m};
}

}  // namespace grmseg
