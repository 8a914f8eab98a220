// The time loops' per-step GEMM on CUDA through cuBLASLt, for StepGemm (sequence/gemm.h).
//
// Why not ATen's mm_out: a small recurrent GEMM is a few microseconds of GPU work, and
// at::mm_out spends about as long on the host (dispatcher, checks, the cuBLAS handle and
// workspace lookup, cuBLAS's own algorithm choice), so every step the GPU waited for the host.
// Here the handle, the descriptors and the algorithm are chosen once per loop (and operand
// alignment), and a step costs one cublasLtMatmul call: against FUSED_RNN_STEP_GEMM=aten in the
// same GPU run the bf16 stepwise loops got faster at every workload measured, though most of a
// step is still the host's until the loop is replayed from a graph (docs/persistent.md).
//
// float16 and bfloat16 only, with float sums whose split-k partial sums are added in float,
// never in the storage type. float32 and float64 keep ATen's GEMM: in the same run float32
// training (no TF32) at deepbench_1024 and big_h took 72 ms through cuBLASLt against 10 ms through
// ATen (inference was even), so cuBLASLt's first-choice algorithm for the backward's
// dh += d_pre [B, 4H] · W_hh was that slow; and a float32 step is less the host's.
// FUSED_RNN_STEP_GEMM=aten sends every dtype to ATen's GEMM.
#pragma once

#include <ATen/ATen.h>

#include <cuda_runtime_api.h>

#include <memory>
#include <utility>

namespace fused_rnn {

// Whether FUSED_RNN_STEP_GEMM=aten sends every step's product to ATen's GEMM.
bool step_gemm_aten_requested();

// The step products' workspace for `stream` on `like`'s device: {data, bytes}, one per stream,
// kept for the process's life; none ({nullptr, 0}) while the stream is being captured (a
// caller's graph). For LtStepGemm and CublasStepGemm (step_gemm_cublas.h).
std::pair<void*, int64_t> step_gemm_workspace(const at::Tensor& like, cudaStream_t stream);

class LtStepGemm {
 public:
  // For the right operand w of every step's product, row-major on CUDA: [N, K] when
  // `transposed` (out = a · wᵀ), else [K, N] (out = a · w). Null where cuBLASLt is not used.
  static std::unique_ptr<LtStepGemm> make(const at::Tensor& w, bool transposed);
  ~LtStepGemm();

  // out [M, N] (+)= a [M, K] · op(w), rows of a and out strided, on the current stream (a graph
  // capture's, for sequence/graphed_loop.h, whose replay runs on the stream current at make(),
  // the workspace's). Returns false, having done nothing, where cuBLASLt offers no algorithm for
  // these operands: the caller runs ATen's GEMM then.
  bool operator()(const at::Tensor& out, const at::Tensor& a, bool accumulate) const;
  // Whether operator() would run these operands through cuBLASLt (it resolves their plan now):
  // what sequence/graphed_loop.h asks of every product before it captures a loop.
  bool has_plan(const at::Tensor& out, const at::Tensor& a, bool accumulate) const;

 private:
  struct Impl;
  explicit LtStepGemm(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fused_rnn
