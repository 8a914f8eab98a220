// The GEMMs inside the time loops (StepGemm), on row-major matrices whose rows may be strided
// (views into wider buffers, e.g. one gate block of a [B, 3H] row), and the large products
// outside them (linear). In the loops the product writes into the preallocated `out`: for half
// types on CUDA through cuBLASLt with its algorithm chosen once per loop
// (cuda/step_gemm_cublaslt.h), for float on a CPU with AVX2 + FMA our packed GEMM, elsewhere ATen's
// GEMM (MKL / OpenBLAS, cuBLAS).
#pragma once

#include <ATen/ATen.h>

#include <memory>

namespace fused_rnn {
namespace cpu {
class PackedMatrix;
}
class LtStepGemm;
class CublasStepGemm;

// Packing a weight w [N, K] for our CPU GEMM costs about as much as multiplying ~100 rows by it
// with ATen's GEMM (MKL's AVX2 code on AMD CPUs) would lose to ours: measured on the 2-core EPYC,
// packing ran at ~0.5 ns an element, and our GEMM saves ~5 ps per multiply-add. So a product that
// would pack w runs ours only when it multiplies at least this many rows by w in total. (A cell
// called once per token, B = 1, ran 6x slower than torch.nn.LSTMCell when it packed W_ih and
// W_hh on every call.)
constexpr int64_t kMinRowsToPack = 128;

// The GEMM of every step of a loop, whose right operand w stays the same for the sequence:
//   transposed: out [M, N] (+)= a [M, K] · wᵀ, w [N, K]   (forward: h · W_hhᵀ)
//   otherwise:  out [M, N] (+)= a [M, K] · w,  w [K, N]   (backward: d gates · W_hh)
// Float on a CPU with AVX2 + FMA and N % 16 == 0: w is packed once (cpu/packed_gemm.h) and each
// step runs our GEMM on all threads (MKL runs its AVX2 code on AMD CPUs, at half the speed, and
// repacks w every step). Half types on CUDA: cuBLASLt, set up once (cuda/step_gemm_cublaslt.h).
// Elsewhere, and where cuBLASLt offers no algorithm, ATen's GEMM. The loops that the packed recurrence
// (cpu/recurrence.h) cannot run use it: algo="stepwise", state dropout, LSTM projection and
// the reset_before GRU. The transposed view of w is made once, not every step (on CUDA the
// host's time per step bounds small steps).
class StepGemm {
 public:
  // rows: how many rows of a the whole loop will multiply (steps x batch); below
  // kMinRowsToPack, packing would cost more than it saves and ATen's GEMM runs every step.
  // for_capture: made by sequence/graphed_loop.h to capture a loop (on the stream its graph
  // replays on): float32 on CUDA then also gets the product capture() records.
  StepGemm(const at::Tensor& w, bool transposed, int64_t rows, bool for_capture = false);
  void operator()(const at::Tensor& out, const at::Tensor& a, bool accumulate) const;
#ifdef FUSED_RNN_WITH_CUDA
  // Whether graphed_loop.h may capture the product of these operands: cuBLASLt's (half types;
  // ATen's GEMM, where cuBLASLt has no algorithm, would take its workspace inside the capture),
  // or, made for_capture, float32's cuBLAS product (cuda/step_gemm_cublas.h).
  bool capturable(const at::Tensor& out, const at::Tensor& a, bool accumulate) const;
  // The product as graphed_loop.h's capture records it (capturable() must hold).
  void capture(const at::Tensor& out, const at::Tensor& a, bool accumulate) const;
#endif

 private:
  at::Tensor rhs_;  // the product's right operand: wᵀ (a view) or w
  std::shared_ptr<const cpu::PackedMatrix> packed_;  // w packed, or null
  std::shared_ptr<const LtStepGemm> lt_;             // CUDA: the cuBLASLt product, or null
  std::shared_ptr<const CublasStepGemm> blas_;       // CUDA float32, for_capture: or null
};

// The large products outside the time loops (input projection, its gradients, the weight
// gradients): x [M, K] · wᵀ (+ b), w [N, K], b [N]; any strides (transposed views included).
// Float on a CPU with AVX2 + FMA runs the packed GEMM on all threads (csrc/cpu/packed_gemm.h):
// MKL runs its AVX2 code on AMD CPUs, at half the speed. Weight gradients (x read down its
// columns) are ours only with AVX-512 and not on Intel CPUs, where MKL's AVX-512 product is the
// faster (gemm.cpp, use_packed_gemm). Everything else: at::addmm / at::mm.
// Also the op fused_rnn::linear (autograd in fused_rnn/_ops.py).
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b);

// The gradient of a weight summed over all rows: d_pre [R, N]ᵀ · inputs [R, K] -> [N, K].
inline at::Tensor weight_gradient(const at::Tensor& d_pre, const at::Tensor& inputs) {
  return fused_rnn::linear(d_pre.t(), inputs.t(), c10::nullopt);
}

}  // namespace fused_rnn
