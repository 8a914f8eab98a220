// The time loops' per-step GEMM on CUDA through cuBLASLt, for StepGemm (sequence/gemm.h).
//
// Why not ATen's mm_out: a small recurrent GEMM is a few microseconds of GPU work, and
// at::mm_out spends about as long on the host (dispatcher, checks, the cuBLAS handle and
// workspace lookup, cuBLAS's own algorithm choice), so every step the GPU waited for the host.
// Measured on an H200 (benchmarks/results/h200_gpu_check_e2603bb): the stepwise bf16 LSTM at
// `mid` took 15 us a step, and 6.6 us replayed from a CUDA graph. Here the handle, the
// descriptors and the algorithm are chosen once per loop (and operand alignment), and a step
// costs one cublasLtMatmul call.
//
// float32 (TF32 only where torch.backends.cuda.matmul allows it, as ATen), float16 and bfloat16
// (float sums; split-k partial sums are added in float, never in the storage type). float64,
// and every dtype when FUSED_RNN_STEP_GEMM=aten, keep ATen's GEMM.
#pragma once

#include <ATen/ATen.h>

#include <memory>

namespace fused_rnn {

class LtStepGemm {
 public:
  // For the right operand w of every step's product, row-major on CUDA: [N, K] when
  // `transposed` (out = a · wᵀ), else [K, N] (out = a · w). Null where cuBLASLt is not used.
  static std::unique_ptr<LtStepGemm> make(const at::Tensor& w, bool transposed);
  ~LtStepGemm();

  // out [M, N] (+)= a [M, K] · op(w), rows of a and out strided, on the stream current at
  // make(). Returns false, having done nothing, where cuBLASLt offers no algorithm for these
  // operands: the caller runs ATen's GEMM then.
  bool operator()(const at::Tensor& out, const at::Tensor& a, bool accumulate) const;

 private:
  struct Impl;
  explicit LtStepGemm(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fused_rnn
