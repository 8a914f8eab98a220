#include "gemm.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "../cpu/packed_gemm.h"
#include "fused_rnn/check_message.h"
#include "common.h"
#include "fused_rnn/launch.h"
#ifdef FUSED_RNN_WITH_CUDA
#include "../cuda/step_gemm_cublas.h"
#include "../cuda/step_gemm_cublaslt.h"
#endif

namespace fused_rnn {
namespace {

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_INTERNAL_ASSERT(t.dim() == 2 && (t.size(1) <= 1 || t.stride(1) == 1),
                        message("fused_rnn: GEMM ", name, " must be a row-major matrix, got sizes ",
                                t.sizes(), " strides ", t.strides()));
}

// out [M, N] (+)= a [M, K] · rhs [K, N] through ATen (rhs may be a transposed view); out and a
// checked by the caller.
void aten_gemm(const at::Tensor& out, const at::Tensor& a, const at::Tensor& rhs, bool accumulate) {
  if (out.numel() == 0) return;
  at::Tensor result = out;
  if (accumulate) {
    result.addmm_(a, rhs);
  } else {
    at::mm_out(result, a, rhs);
  }
}

// Whether a weight gradient's product (A read down its columns and gathered block by block, B
// read in place: cpu::gemm) runs ours: only with AVX-512, and by default not on Intel CPUs,
// where MKL runs its AVX-512 code; FUSED_RNN_CPU_WEIGHT_GRADIENTS=packed (ours, with AVX-512) or
// =aten decides instead (the tests run both). Measured on the 2-core AMD EPYC, dW = d_preᵀ · x
// at deepbench_1024 (6400 x 4096 x 1024): 439 GF/s with AVX-512; at ATEN_CPU_CAPABILITY=avx2
// our AVX2 build ran it at 166 GF/s and MKL's AVX2 code at 213 (the input projection and d x
// stay ours there: 230 against MKL's 183-211). On a 2-core Intel Xeon (AVX-512, 48 KiB L1,
// 2 MiB L2), interleaved, best of 3-7: dW at mid (6400 x 2048 x 512) MKL 61 against our 75 ms,
// at large_batch's GRU (12800 x 3072 x 1024) 282-303 against 431-510 ms; d x and the input
// projection stay ours there (320 against 335 ms, 74 against 84).
#ifdef FUSED_RNN_CPU_AVX2
bool weight_gradients_run_packed() {
  const char* value = std::getenv("FUSED_RNN_CPU_WEIGHT_GRADIENTS");
  const std::string choice = value ? value : "";
  TORCH_CHECK(choice.empty() || choice == "packed" || choice == "aten",
              message("fused_rnn: FUSED_RNN_CPU_WEIGHT_GRADIENTS must be 'packed' or 'aten', got '",
                      choice, "'"));
  if (!cpu_has_avx512() || choice == "aten") return false;
  return choice == "packed" || !aten_blas_runs_avx512();
}
#endif

// Whether linear() runs our CPU GEMM for x [M, K] · wᵀ, w [N, K]: from about a million
// multiply-adds, and, where it packs w (all but a weight gradient's in-place operand, see
// cpu::gemm), for at least kMinRowsToPack rows.
bool use_packed_gemm(const at::Tensor& x, const at::Tensor& w) {
#ifdef FUSED_RNN_CPU_AVX2
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  // linear() passes A = x (lda_k = x.stride(1)) and B = wᵀ (ldb_n = w.stride(0)) to cpu::gemm.
  const bool packs_w = !cpu::gemm_reads_b_in_place(x.stride(1), w.stride(0));
  return x.is_cpu() && x.scalar_type() == at::kFloat && N % cpu::kChunk == 0 &&
         M * K * N >= (int64_t{1} << 20) && (M >= kMinRowsToPack || !packs_w) &&
         cpu::cpu_has_packed_gemm() && (packs_w || weight_gradients_run_packed());
#else
  return false;
#endif
}

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
              message("fused_rnn.linear: x must be [M, K] and w [N, K], got x ", x.sizes(),
                      " and w ", w.sizes()));
  TORCH_CHECK(x.scalar_type() == w.scalar_type() && x.device() == w.device(),
              "fused_rnn.linear: w must have x's dtype and device");
  if (b.has_value()) {
    TORCH_CHECK(b->dim() == 1 && b->size(0) == w.size(0) && b->scalar_type() == x.scalar_type() &&
                    b->device() == x.device(),
                message("fused_rnn.linear: b must be [", w.size(0),
                        "] with x's dtype and device, got ", b->sizes()));
  }
  if (!use_packed_gemm(x, w)) return b.has_value() ? at::addmm(*b, x, w.t()) : at::mm(x, w.t());
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor out = sequence_buffer({M, N}, x.options());
  const at::Tensor bias = b.has_value() ? b->contiguous() : at::Tensor();
  cpu::gemm(x.data_ptr<float>(), x.stride(0), x.stride(1), w.data_ptr<float>(), w.stride(1),
            w.stride(0), out.data_ptr<float>(), N, M, K, N, /*accumulate=*/false,
            bias.defined() ? bias.data_ptr<float>() : nullptr);
  return out;
}

StepGemm::StepGemm(const at::Tensor& w, bool transposed, int64_t rows, bool for_capture)
    : rhs_(transposed ? w.t() : w) {
  check_rows(w, "w");
#ifdef FUSED_RNN_WITH_CUDA
  lt_ = LtStepGemm::make(w, transposed);
  if (for_capture && !lt_) blas_ = CublasStepGemm::make(w, transposed);
#else
  (void)for_capture;
#endif
#ifdef FUSED_RNN_CPU_AVX2
  TORCH_INTERNAL_ASSERT(w.dim() == 2);
  const int64_t N = transposed ? w.size(0) : w.size(1), K = transposed ? w.size(1) : w.size(0);
  if (!(w.is_cpu() && w.scalar_type() == at::kFloat && N % cpu::kChunk == 0 && N > 0 && K > 0 &&
        rows >= kMinRowsToPack && cpu::cpu_has_packed_gemm())) {
    return;
  }
  // B(k, n) of the product: w[n, k] when transposed, else w[k, n].
  const int64_t stride_k = transposed ? w.stride(1) : w.stride(0);
  const int64_t stride_n = transposed ? w.stride(0) : w.stride(1);
  packed_ = std::make_shared<const cpu::PackedMatrix>(
      cpu::PackedMatrix::all_columns(w.data_ptr<float>(), stride_k, stride_n, K, N));
#endif
}

#ifdef FUSED_RNN_WITH_CUDA
bool StepGemm::capturable(const at::Tensor& out, const at::Tensor& a, bool accumulate) const {
  return lt_ != nullptr ? lt_->has_plan(out, a, accumulate) : blas_ != nullptr;
}

void StepGemm::capture(const at::Tensor& out, const at::Tensor& a, bool accumulate) const {
  check_rows(out, "out");
  check_rows(a, "a");
  if (lt_ != nullptr) {
    TORCH_INTERNAL_ASSERT((*lt_)(out, a, accumulate), "fused_rnn: no cuBLASLt plan to capture");
    return;
  }
  TORCH_INTERNAL_ASSERT(blas_ != nullptr, "fused_rnn: no product to capture");
  (*blas_)(out, a, accumulate);
}
#endif

void StepGemm::operator()(const at::Tensor& out, const at::Tensor& a, bool accumulate) const {
  check_rows(out, "out");
  check_rows(a, "a");
#ifdef FUSED_RNN_WITH_CUDA
  if (lt_ && (*lt_)(out, a, accumulate)) return;
#endif
  if (!packed_) return aten_gemm(out, a, rhs_, accumulate);
  const int64_t M = a.size(0);
  TORCH_INTERNAL_ASSERT(a.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat &&
                        a.size(1) == packed_->K() && out.size(0) == M);
  if (M == 0) return;
  const float* a_data = a.data_ptr<float>();
  float* c = out.data_ptr<float>();
  // Panels split between the threads; a small product (below ~256k multiply-adds a thread)
  // stays on fewer of them, where forking would cost more than it saves.
  const int64_t per_panel = M * packed_->K() * cpu::kMaxChunksPerPanel * cpu::kChunk;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / per_panel);
  at::parallel_for(0, packed_->panels(), grain, [&](int64_t p0, int64_t p1) {
    cpu::packed_gemm(a_data, a.stride(0), 1, M, *packed_, p0, p1, c, out.stride(0), accumulate);
  });
}

}  // namespace fused_rnn
