// The GEMMs inside the time loops, on row-major matrices whose rows may be strided (views into
// wider buffers, e.g. one gate block of a [B, 3H] row):
//   gemm_abt: out [M, N] (+)= a [M, K] · bᵀ, b [N, K]   (forward: h · W_hhᵀ)
//   gemm_ab:  out [M, N] (+)= a [M, K] · b,  b [K, N]   (backward: d gates · W_hh)
// CPU: ATen (MKL / OpenBLAS). CUDA: cuBLAS directly on the current stream: a time step is a few
// microseconds of GPU work, so the dispatcher and addmm's checks would otherwise dominate it.
#pragma once

#include <ATen/ATen.h>

namespace fused_rnn {

void gemm_abt(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate);
void gemm_ab(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate);

#ifdef FUSED_RNN_WITH_CUDA
// out (+)= a · bᵀ (b_transposed) or a · b, via cuBLAS (csrc/cuda/gemm_cuda.cpp).
void gemm_cuda(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool b_transposed,
               bool accumulate);
#endif

}  // namespace fused_rnn
