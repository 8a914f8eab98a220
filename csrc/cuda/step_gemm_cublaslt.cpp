#include "step_gemm_cublaslt.h"

#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cublasLt.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fused_rnn/check_message.h"

namespace fused_rnn {
namespace {

// Workspace for split-k algorithms. The recurrent GEMMs are skinny (M = batch rows) and small;
// 4 MiB admits split-k where it pays without weighing on memory.
constexpr int64_t kWorkspaceBytes = int64_t{4} << 20;

void check_lt(cublasStatus_t status, const char* what) {
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS,
              message("fused_rnn: cuBLASLt ", what, " failed: ", cublasLtGetStatusString(status)));
}

// The largest power of two up to 256 that divides the address: what the heuristic may assume.
uint32_t alignment_of(const void* pointer) {
  const auto address = reinterpret_cast<uintptr_t>(pointer);
  uint32_t alignment = 256;
  while (alignment > 1 && address % alignment != 0) alignment /= 2;
  return alignment;
}

struct LtTypes {
  cudaDataType_t data;
  cublasComputeType_t compute;
  cudaDataType_t scale;  // alpha and beta are float for every type here
};

bool lt_types(at::ScalarType dtype, LtTypes* types) {
  switch (dtype) {
    case at::kFloat:
      *types = {CUDA_R_32F,
                at::globalContext().allowTF32CuBLAS() ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                      : CUBLAS_COMPUTE_32F,
                CUDA_R_32F};
      return true;
    case at::kHalf:
      *types = {CUDA_R_16F, CUBLAS_COMPUTE_32F, CUDA_R_32F};
      return true;
    case at::kBFloat16:
      *types = {CUDA_R_16BF, CUBLAS_COMPUTE_32F, CUDA_R_32F};
      return true;
    default:
      return false;
  }
}

bool aten_requested() {
  const char* value = std::getenv("FUSED_RNN_STEP_GEMM");
  return value != nullptr && std::strcmp(value, "aten") == 0;
}

// The operands one plan serves: what the layouts and the heuristic's answer depend on.
struct PlanKey {
  int64_t M, lda, ldo;
  uint32_t align_a, align_out;
  bool accumulate;
  bool operator==(const PlanKey& o) const {
    return M == o.M && lda == o.lda && ldo == o.ldo && align_a == o.align_a &&
           align_out == o.align_out && accumulate == o.accumulate;
  }
};

struct Layout {
  cublasLtMatrixLayout_t handle = nullptr;
  Layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld) {
    check_lt(cublasLtMatrixLayoutCreate(&handle, type, rows, cols, ld), "MatrixLayoutCreate");
  }
  ~Layout() { cublasLtMatrixLayoutDestroy(handle); }
  Layout(const Layout&) = delete;
  Layout& operator=(const Layout&) = delete;
};

// In cuBLASLt's column-major terms the row-major product out [M, N] = a [M, K] · op(w) is
// out_c [N, M] = op'(w_c) [N, K] · a_c [K, M], where x_c is x's memory read column-major (xᵀ).
struct Plan {
  PlanKey key;
  std::unique_ptr<Layout> a_layout, out_layout;  // a_c [K, M] ld lda; out_c [N, M] ld ldo
  cublasLtMatmulAlgo_t algo{};
  bool found = false;
};

}  // namespace

struct LtStepGemm::Impl {
  at::Tensor w;
  int64_t N = 0, K = 0;
  LtTypes types{};
  cublasLtHandle_t handle = nullptr;
  cudaStream_t stream = nullptr;
  cublasLtMatmulDesc_t desc = nullptr;
  std::unique_ptr<Layout> w_layout;  // w_c: [K, N] (transposed, then op T) or [N, K], ld w.stride(0)
  at::Tensor workspace;              // [kWorkspaceBytes] bytes
  mutable std::vector<Plan> plans;   // one per PlanKey met in this loop (usually one)

  ~Impl() {
    if (desc != nullptr) cublasLtMatmulDescDestroy(desc);
  }

  const Plan& plan_for(const PlanKey& key) const {
    for (const Plan& plan : plans) {
      if (plan.key == key) return plan;
    }
    Plan plan;
    plan.key = key;
    plan.a_layout = std::make_unique<Layout>(types.data, K, key.M, key.lda);
    plan.out_layout = std::make_unique<Layout>(types.data, N, key.M, key.ldo);
    cublasLtMatmulPreference_t preference = nullptr;
    check_lt(cublasLtMatmulPreferenceCreate(&preference), "MatmulPreferenceCreate");
    const uint64_t workspace_bytes = kWorkspaceBytes;
    const uint32_t align_w = alignment_of(w.data_ptr());
    // Split-k partial sums only in the compute type (float), never in the storage type.
    const uint32_t reductions = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> alignments[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_w},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_out},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_out},
        {CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, reductions}};
    cublasStatus_t status = cublasLtMatmulPreferenceSetAttribute(
        preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
        sizeof(workspace_bytes));
    for (const auto& [attribute, value] : alignments) {
      if (status == CUBLAS_STATUS_SUCCESS) {
        status = cublasLtMatmulPreferenceSetAttribute(preference, attribute, &value, sizeof(value));
      }
    }
    cublasLtMatmulHeuristicResult_t result{};
    int results = 0;
    if (status == CUBLAS_STATUS_SUCCESS) {
      status = cublasLtMatmulAlgoGetHeuristic(handle, desc, w_layout->handle, plan.a_layout->handle,
                                              plan.out_layout->handle, plan.out_layout->handle,
                                              preference, 1, &result, &results);
    }
    cublasLtMatmulPreferenceDestroy(preference);
    // No algorithm (CUBLAS_STATUS_NOT_SUPPORTED, or none returned): ATen's GEMM runs these.
    plan.found = status == CUBLAS_STATUS_SUCCESS && results > 0 &&
                 static_cast<int64_t>(result.workspaceSize) <= kWorkspaceBytes;
    if (plan.found) plan.algo = result.algo;
    plans.push_back(std::move(plan));
    return plans.back();
  }
};

LtStepGemm::LtStepGemm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LtStepGemm::~LtStepGemm() = default;

std::unique_ptr<LtStepGemm> LtStepGemm::make(const at::Tensor& w, bool transposed) {
  LtTypes types{};
  if (!w.is_cuda() || w.dim() != 2 || !lt_types(w.scalar_type(), &types) || aten_requested()) {
    return nullptr;
  }
  auto impl = std::make_unique<Impl>();
  impl->w = w;
  impl->N = transposed ? w.size(0) : w.size(1);
  impl->K = transposed ? w.size(1) : w.size(0);
  if (impl->N == 0 || impl->K == 0) return nullptr;  // nothing, or zeros: ATen's GEMM
  impl->types = types;
  impl->handle = at::cuda::getCurrentCUDABlasLtHandle();
  impl->stream = c10::cuda::getCurrentCUDAStream().stream();
  check_lt(cublasLtMatmulDescCreate(&impl->desc, types.compute, types.scale), "MatmulDescCreate");
  const cublasOperation_t op_w = transposed ? CUBLAS_OP_T : CUBLAS_OP_N, op_a = CUBLAS_OP_N;
  check_lt(cublasLtMatmulDescSetAttribute(impl->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_w,
                                          sizeof(op_w)), "MatmulDescSetAttribute");
  check_lt(cublasLtMatmulDescSetAttribute(impl->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_a,
                                          sizeof(op_a)), "MatmulDescSetAttribute");
  impl->w_layout = transposed ? std::make_unique<Layout>(types.data, impl->K, impl->N, w.stride(0))
                              : std::make_unique<Layout>(types.data, impl->N, impl->K, w.stride(0));
  impl->workspace = at::empty({kWorkspaceBytes}, w.options().dtype(at::kByte));
  return std::unique_ptr<LtStepGemm>(new LtStepGemm(std::move(impl)));
}

bool LtStepGemm::operator()(const at::Tensor& out, const at::Tensor& a, bool accumulate) const {
  const Impl& impl = *impl_;
  TORCH_INTERNAL_ASSERT(a.scalar_type() == impl.w.scalar_type() &&
                        out.scalar_type() == impl.w.scalar_type() && a.size(1) == impl.K &&
                        out.size(1) == impl.N && out.size(0) == a.size(0));
  const int64_t M = a.size(0);
  if (M == 0) return true;
  const PlanKey key{M, std::max<int64_t>(a.stride(0), impl.K), std::max<int64_t>(out.stride(0), impl.N),
                    alignment_of(a.data_ptr()), alignment_of(out.data_ptr()), accumulate};
  const Plan& plan = impl.plan_for(key);
  if (!plan.found) return false;
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  check_lt(cublasLtMatmul(impl.handle, impl.desc, &alpha, impl.w.data_ptr(), impl.w_layout->handle,
                          a.data_ptr(), plan.a_layout->handle, &beta, out.data_ptr(),
                          plan.out_layout->handle, out.data_ptr(), plan.out_layout->handle,
                          &plan.algo, impl.workspace.data_ptr(), kWorkspaceBytes, impl.stream),
           "Matmul");
  return true;
}

}  // namespace fused_rnn
