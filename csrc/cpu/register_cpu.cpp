// CPU kernels: the shared time loops with the at::parallel_for pointwise launcher; fp16 and bf16
// run them in float32 (half_as_float.h).
#include "../sequence/register.h"
#include "half_as_float.h"

namespace fused_rnn {
namespace {

using cpu::HalfAsFloat;
using cpu::NarrowResults;

void register_cpu_ops(torch::Library& m) {
  m.impl("elman_forward", &HalfAsFloat<&elman_forward, NarrowResults<>>::call);
  m.impl("elman_backward", &HalfAsFloat<&elman_backward, NarrowResults<>>::call);
  m.impl("lstm_forward", &HalfAsFloat<&lstm_forward, NarrowResults</*c_all=*/4>>::call);
  m.impl("lstm_backward", &HalfAsFloat<&lstm_backward, NarrowResults<>>::call);
  m.impl("gru_forward", &HalfAsFloat<&gru_forward, NarrowResults<>>::call);
  m.impl("gru_backward", &HalfAsFloat<&gru_backward, NarrowResults<>>::call);
  m.impl("linear", &linear);  // half types: ATen's (oneDNN's) product, already fast
  m.impl("column_sums", &column_sums);
}

}  // namespace
}  // namespace fused_rnn

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) { fused_rnn::register_cpu_ops(m); }
