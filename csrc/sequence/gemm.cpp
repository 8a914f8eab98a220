#include "gemm.h"

#include <c10/util/Exception.h>

#include "common.h"

namespace fused_rnn {
namespace {

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_INTERNAL_ASSERT(t.dim() == 2 && (t.size(1) <= 1 || t.stride(1) == 1), "fused_rnn: GEMM ",
                        name, " must be a row-major matrix, got sizes ", shape_string(t.sizes()),
                        " strides ", shape_string(t.strides()));
}

void gemm(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool b_transposed,
          bool accumulate) {
  check_rows(out, "out");
  check_rows(a, "a");
  check_rows(b, "b");
  if (out.numel() == 0) return;
  const at::Tensor rhs = b_transposed ? b.t() : b;
  at::Tensor result = out;
  if (accumulate) {
    result.addmm_(a, rhs);
  } else {
    at::mm_out(result, a, rhs);
  }
}

}  // namespace

void gemm_abt(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  gemm(out, a, b, /*b_transposed=*/true, accumulate);
}

void gemm_ab(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  gemm(out, a, b, /*b_transposed=*/false, accumulate);
}

}  // namespace fused_rnn
