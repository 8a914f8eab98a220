// cuBLAS for the per-step GEMMs (see csrc/sequence/gemm.h), through ATen's wrappers so that the
// current stream, the handle's workspace and torch's TF32 / reduced-precision flags apply.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDABlas.h>

#include <algorithm>

#include "../sequence/gemm.h"

namespace fused_rnn {

namespace {

// The leading dimension of a row-major matrix: its row stride (a single row's stride is
// arbitrary in torch, so use its length).
int64_t leading_dim(const at::Tensor& t) {
  return t.size(0) <= 1 ? std::max<int64_t>(t.size(1), 1) : t.stride(0);
}

}  // namespace

// Row-major out [M, N] is column-major outᵀ [N, M]; so out = a · op(b) is computed as
// outᵀ = op(b)ᵀ · aᵀ, with every matrix passed as stored and its row stride as leading dim.
void gemm_cuda(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool b_transposed,
               bool accumulate) {
  const int64_t M = a.size(0), K = a.size(1), N = out.size(1);
  if (K == 0) {
    if (!accumulate) out.zero_();
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "fused_rnn_gemm", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    at::cuda::blas::gemm<scalar_t>(b_transposed ? 't' : 'n', 'n', N, M, K, opmath_t(1),
                                   b.data_ptr<scalar_t>(), leading_dim(b), a.data_ptr<scalar_t>(),
                                   leading_dim(a), opmath_t(accumulate ? 1 : 0),
                                   out.data_ptr<scalar_t>(), leading_dim(out));
  });
}

}  // namespace fused_rnn
