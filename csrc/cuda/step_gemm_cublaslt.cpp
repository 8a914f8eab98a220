#include "step_gemm_cublaslt.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cublasLt.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#include "fused_rnn/check_message.h"

namespace fused_rnn {
namespace {

// Workspace for split-k algorithms. The recurrent GEMMs are skinny (M = batch rows) and small;
// 4 MiB admits split-k where it pays without weighing on memory.
constexpr int64_t kWorkspaceBytes = int64_t{4} << 20;

}  // namespace

// One workspace per (device, stream), kept for the life of the process as cuBLAS keeps its own:
// each loop allocating 4 MiB of its own raised a training step's peak memory by 4 MiB (what
// tests/test_backward_memory.py caught on a GPU). The map is never destroyed, so nothing is freed
// at exit, when the CUDA allocator may be gone. Products made while their stream is being
// captured (a caller's torch.cuda.graph) get none: what is allocated then belongs to the graph,
// and an existing workspace baked into the caller's graph could be written by that graph's
// replay, on any stream, while eager products on this stream use it. (graphed_loop.h makes its
// products before it captures, on the stream its graphs replay on.)
std::pair<void*, int64_t> step_gemm_workspace(const at::Tensor& like, cudaStream_t stream) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone) return {nullptr, 0};
  static std::mutex mutex;
  static auto* workspaces = new std::map<std::pair<int, cudaStream_t>, at::Tensor>();
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(static_cast<int>(like.device().index()), stream);
  const auto found = workspaces->find(key);
  if (found != workspaces->end()) return {found->second.data_ptr(), kWorkspaceBytes};
  at::Tensor workspace = at::empty({kWorkspaceBytes}, like.options().dtype(at::kByte));
  void* data = workspace.data_ptr();
  workspaces->emplace(key, std::move(workspace));
  return {data, kWorkspaceBytes};
}

namespace {

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

// The storage type of a half-type sequence; sums and alpha, beta are float. (float32 stays with
// ATen: see the header.)
bool lt_data_type(at::ScalarType dtype, cudaDataType_t* type) {
  switch (dtype) {
    case at::kHalf:
      *type = CUDA_R_16F;
      return true;
    case at::kBFloat16:
      *type = CUDA_R_16BF;
      return true;
    default:
      return false;
  }
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
  cudaDataType_t type{};
  cublasLtHandle_t handle = nullptr;
  cublasLtMatmulDesc_t desc = nullptr;
  std::unique_ptr<Layout> w_layout;  // w_c: [K, N] (transposed, then op T) or [N, K], ld w.stride(0)
  void* workspace = nullptr;         // workspace_bytes bytes: the stream current at make()'s
  int64_t workspace_bytes = 0;
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
    plan.a_layout = std::make_unique<Layout>(type, K, key.M, key.lda);
    plan.out_layout = std::make_unique<Layout>(type, N, key.M, key.ldo);
    cublasLtMatmulPreference_t preference = nullptr;
    check_lt(cublasLtMatmulPreferenceCreate(&preference), "MatmulPreferenceCreate");
    const uint64_t max_workspace = static_cast<uint64_t>(workspace_bytes);
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
        preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_workspace,
        sizeof(max_workspace));
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
                 static_cast<int64_t>(result.workspaceSize) <= workspace_bytes;
    if (plan.found) plan.algo = result.algo;
    plans.push_back(std::move(plan));
    return plans.back();
  }
};

bool step_gemm_aten_requested() {
  const char* value = std::getenv("FUSED_RNN_STEP_GEMM");
  return value != nullptr && std::strcmp(value, "aten") == 0;
}

LtStepGemm::LtStepGemm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LtStepGemm::~LtStepGemm() = default;

std::unique_ptr<LtStepGemm> LtStepGemm::make(const at::Tensor& w, bool transposed) {
  cudaDataType_t type{};
  if (!w.is_cuda() || w.dim() != 2 || !lt_data_type(w.scalar_type(), &type) ||
      step_gemm_aten_requested()) {
    return nullptr;
  }
  auto impl = std::make_unique<Impl>();
  impl->w = w;
  impl->N = transposed ? w.size(0) : w.size(1);
  impl->K = transposed ? w.size(1) : w.size(0);
  if (impl->N == 0 || impl->K == 0) return nullptr;  // nothing, or zeros: ATen's GEMM
  impl->type = type;
  impl->handle = at::cuda::getCurrentCUDABlasLtHandle();
  std::tie(impl->workspace, impl->workspace_bytes) =
      step_gemm_workspace(w, c10::cuda::getCurrentCUDAStream().stream());
  check_lt(cublasLtMatmulDescCreate(&impl->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate");
  const cublasOperation_t op_w = transposed ? CUBLAS_OP_T : CUBLAS_OP_N, op_a = CUBLAS_OP_N;
  check_lt(cublasLtMatmulDescSetAttribute(impl->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_w,
                                          sizeof(op_w)), "MatmulDescSetAttribute");
  check_lt(cublasLtMatmulDescSetAttribute(impl->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_a,
                                          sizeof(op_a)), "MatmulDescSetAttribute");
  impl->w_layout = transposed ? std::make_unique<Layout>(type, impl->K, impl->N, w.stride(0))
                              : std::make_unique<Layout>(type, impl->N, impl->K, w.stride(0));
  return std::unique_ptr<LtStepGemm>(new LtStepGemm(std::move(impl)));
}

namespace {
PlanKey plan_key(const at::Tensor& out, const at::Tensor& a, bool accumulate, int64_t N, int64_t K) {
  return {a.size(0), std::max<int64_t>(a.stride(0), K), std::max<int64_t>(out.stride(0), N),
          alignment_of(a.data_ptr()), alignment_of(out.data_ptr()), accumulate};
}
}  // namespace

bool LtStepGemm::has_plan(const at::Tensor& out, const at::Tensor& a, bool accumulate) const {
  const Impl& impl = *impl_;
  return a.size(0) == 0 || impl.plan_for(plan_key(out, a, accumulate, impl.N, impl.K)).found;
}

bool LtStepGemm::operator()(const at::Tensor& out, const at::Tensor& a, bool accumulate) const {
  const Impl& impl = *impl_;
  TORCH_INTERNAL_ASSERT(a.scalar_type() == impl.w.scalar_type() &&
                        out.scalar_type() == impl.w.scalar_type() && a.size(1) == impl.K &&
                        out.size(1) == impl.N && out.size(0) == a.size(0));
  const int64_t M = a.size(0);
  if (M == 0) return true;
  const Plan& plan = impl.plan_for(plan_key(out, a, accumulate, impl.N, impl.K));
  if (!plan.found) return false;
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  check_lt(cublasLtMatmul(impl.handle, impl.desc, &alpha, impl.w.data_ptr(), impl.w_layout->handle,
                          a.data_ptr(), plan.a_layout->handle, &beta, out.data_ptr(),
                          plan.out_layout->handle, out.data_ptr(), plan.out_layout->handle,
                          &plan.algo, impl.workspace, impl.workspace_bytes,
                          c10::cuda::getCurrentCUDAStream().stream()),
           "Matmul");
  return true;
}

}  // namespace fused_rnn
