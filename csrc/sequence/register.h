// Registers the device-agnostic sequence implementations under one dispatch key.
#pragma once

#include <torch/library.h>

#include "common.h"
#include "gemm.h"
#include "sequence_ops.h"

namespace fused_rnn {

inline void register_sequence_ops(torch::Library& m) {
  m.impl("elman_forward", &elman_forward);
  m.impl("elman_backward", &elman_backward);
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
  m.impl("gru_forward", &gru_forward);
  m.impl("gru_backward", &gru_backward);
  m.impl("linear", &linear);
  m.impl("column_sums", &column_sums);
}

}  // namespace fused_rnn
