// CPU kernels: the shared time loops with the at::parallel_for pointwise launcher; fp16 and bf16
// run them in float32 (half_as_float.h).
#include "../sequence/register.h"
#include "half_as_float.h"

namespace fused_rnn {
namespace {

using cpu::HalfAsFloat;
using cpu::NarrowResults;

// The input projection (and the weight gradients, which autograd runs through it too): bf16 stays
// with ATen, whose oneDNN product multiplies bf16 natively (AVX512-BF16, AMX); fp16 runs our float32
// product on widened values, since few CPUs multiply fp16 natively and ATen's fallback is several
// times slower (benchmarks/results/cpu_amd_epyc_20261208/).
at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b) {
  if (x.scalar_type() != at::kHalf) return fused_rnn::linear(x, w, b);
  return fused_rnn::linear(x.to(at::kFloat), w.to(at::kFloat), cpu::widen(b)).to(at::kHalf);
}

void register_cpu_ops(torch::Library& m) {
  m.impl("elman_forward", &HalfAsFloat<&elman_forward, NarrowResults<>>::call);
  m.impl("elman_backward", &HalfAsFloat<&elman_backward, NarrowResults<>>::call);
  m.impl("lstm_forward", &HalfAsFloat<&lstm_forward, NarrowResults</*c_all=*/4>>::call);
  m.impl("lstm_backward", &HalfAsFloat<&lstm_backward, NarrowResults<>>::call);
  m.impl("gru_forward", &HalfAsFloat<&gru_forward, NarrowResults<>>::call);
  m.impl("gru_backward", &HalfAsFloat<&gru_backward, NarrowResults<>>::call);
  m.impl("linear", &linear_cpu);
  m.impl("column_sums", &column_sums);
}

}  // namespace
}  // namespace fused_rnn

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) { fused_rnn::register_cpu_ops(m); }
