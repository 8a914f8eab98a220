// float32's per-step GEMM for graph capture (step_gemm_cublas.h).
#include "step_gemm_cublas.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "fused_rnn/check_message.h"
#include "step_gemm_cublaslt.h"

namespace fused_rnn {

std::unique_ptr<CublasStepGemm> CublasStepGemm::make(const at::Tensor& w, bool transposed) {
  if (!w.is_cuda() || w.dim() != 2 || w.scalar_type() != at::kFloat || w.stride(1) != 1 ||
      w.numel() == 0) {
    return nullptr;  // an empty product: nothing to capture (ATen's GEMM)
  }
  std::unique_ptr<CublasStepGemm> gemm(new CublasStepGemm());
  gemm->w_ = w;
  gemm->transposed_ = transposed;
  gemm->N_ = transposed ? w.size(0) : w.size(1);
  gemm->K_ = transposed ? w.size(1) : w.size(0);
  std::tie(gemm->workspace_, gemm->workspace_bytes_) =
      step_gemm_workspace(w, c10::cuda::getCurrentCUDAStream().stream());
  return gemm;
}

void CublasStepGemm::operator()(const at::Tensor& out, const at::Tensor& a, bool accumulate) const {
  TORCH_INTERNAL_ASSERT(a.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat &&
                        a.size(1) == K_ && out.size(1) == N_ && out.size(0) == a.size(0));
  const int64_t M = a.size(0);
  if (M == 0) return;
  // This thread's ATen handle, on the current stream, with its math mode set from torch's TF32
  // flag (and ATen's workspace for the stream, replaced by ours below; ATen sets its own again
  // at its next use).
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
  auto check = [](cublasStatus_t status, const char* what) {
    TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS,
                message("fused_rnn: cuBLAS ", what, " failed: ", cublasGetStatusString(status)));
  };
  check(cublasSetWorkspace(handle, workspace_, static_cast<size_t>(workspace_bytes_)),
        "SetWorkspace");
  check(cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_HOST), "SetPointerMode");
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  // Column-major, cuBLAS's order: outᵀ [N, M] = op(w)ᵀ [N, K] · aᵀ [K, M]. Row-major w [N, K]
  // is column-major [K, N] (transposed: op T), row-major w [K, N] column-major [N, K] (op N).
  // Leading dimensions at least the rows cuBLAS reads (a one-row matrix may have any stride).
  const auto ld = [](int64_t stride, int64_t rows) {
    return static_cast<int>(std::max<int64_t>(stride, rows));
  };
  check(cublasSgemm(handle, transposed_ ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N,
                    static_cast<int>(N_), static_cast<int>(M), static_cast<int>(K_), &alpha,
                    w_.data_ptr<float>(), ld(w_.stride(0), transposed_ ? K_ : N_),
                    a.data_ptr<float>(), ld(a.stride(0), K_), &beta, out.data_ptr<float>(),
                    ld(out.stride(0), N_)),
        "Sgemm");
  // ATen's workspace back on its handle, for whoever uses the handle next without setting it.
  (void)at::cuda::getCurrentCUDABlasHandle();
}

}  // namespace fused_rnn
