// float32's per-step GEMM as sequence/graphed_loop.h captures it (float32 loops run from graphs
// only with FUSED_RNN_STEPWISE_GRAPHS=all, until measured on a GPU).
//
// Which GEMM: cuBLAS's classic one, the one ATen's mm runs for float32 eagerly. (cuBLASLt's
// first-choice algorithm for float32's backward product was 7x slower: step_gemm_cublaslt.h.)
// Why not ATen's mm inside the capture: it would run with ATen's workspace of the capture
// stream, one buffer shared by every graph captured there, which graphs replaying on two
// streams at once would both write. This product runs on the thread's ATen cuBLAS handle (so
// TF32 follows torch's flag as ATen's does; graphed_loop.h keys its loops by that flag) with a
// workspace of its own: the one of the stream current when it is made, which graphed_loop.h
// makes it on, the stream its graph replays on.
#pragma once

#include <ATen/ATen.h>

#include <memory>

namespace fused_rnn {

class CublasStepGemm {
 public:
  // For the right operand w of every step's product, row-major float32 on CUDA: [N, K] when
  // `transposed` (out = a · wᵀ), else [K, N] (out = a · w). Null for anything else.
  static std::unique_ptr<CublasStepGemm> make(const at::Tensor& w, bool transposed);

  // out [M, N] (+)= a [M, K] · op(w), rows of a and out strided, on the current stream.
  void operator()(const at::Tensor& out, const at::Tensor& a, bool accumulate) const;

 private:
  CublasStepGemm() = default;
  at::Tensor w_;
  bool transposed_ = false;
  int64_t N_ = 0, K_ = 0;
  void* workspace_ = nullptr;  // workspace_bytes_ bytes of the stream current at make()
  int64_t workspace_bytes_ = 0;
};

}  // namespace fused_rnn
