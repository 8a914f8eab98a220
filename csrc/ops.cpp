// The fused_rnn operator library: one forward and one backward op per cell family, each running
// a whole sequence of one layer and one direction. Shapes and semantics: sequence/sequence_ops.h.
// Implementations are registered per dispatch key in cpu/register_cpu.cpp and
// cuda/register_cuda.cpp, autograd in autograd.cpp, fake (meta) kernels in fused_rnn/_ops.py.
// `algo` picks the recurrence algorithm: "auto", "stepwise" or "persistent"
// (fused_rnn/persistent.h).
#include <torch/library.h>

TORCH_LIBRARY(fused_rnn, m) {
  m.def(
      "elman_forward(Tensor x_proj, Tensor h0, Tensor w_hh, Tensor? b_hh, Tensor? lengths, "
      "Tensor? state_mask, bool reverse, bool relu, str algo=\"auto\") -> (Tensor y, Tensor h_n)");
  m.def(
      "elman_backward(Tensor grad_y, Tensor grad_h_n, Tensor y, Tensor h0, Tensor w_hh, "
      "Tensor? lengths, Tensor? state_mask, bool reverse, bool relu, str algo=\"auto\") "
      "-> (Tensor grad_x_proj, Tensor grad_h0, Tensor grad_w_hh, Tensor grad_b_hh)");
  m.def(
      "lstm_forward(Tensor x_proj, Tensor h0, Tensor c0, Tensor w_hh, Tensor? b_hh, Tensor? w_ch, "
      "Tensor? w_hr, Tensor? lengths, Tensor? state_mask, bool reverse, bool training, "
      "str algo=\"auto\") "
      "-> (Tensor y, Tensor h_n, Tensor c_n, Tensor gates, Tensor c_all)");
  m.def(
      "lstm_backward(Tensor grad_y, Tensor grad_h_n, Tensor grad_c_n, Tensor y, Tensor gates, "
      "Tensor c_all, Tensor h0, Tensor c0, Tensor w_hh, Tensor? w_ch, Tensor? w_hr, "
      "Tensor? lengths, Tensor? state_mask, bool reverse, str algo=\"auto\") "
      "-> (Tensor grad_x_proj, Tensor grad_h0, Tensor grad_c0, "
      "Tensor grad_w_hh, Tensor grad_b_hh, Tensor grad_w_ch, Tensor grad_w_hr)");
  m.def(
      "gru_forward(Tensor x_proj, Tensor h0, Tensor w_hh, Tensor? b_hh, Tensor? lengths, "
      "Tensor? state_mask, bool reverse, bool reset_after, bool training, str algo=\"auto\") "
      "-> (Tensor y, Tensor h_n, Tensor gates, Tensor hh_n)");
  m.def(
      "gru_backward(Tensor grad_y, Tensor grad_h_n, Tensor y, Tensor gates, Tensor hh_n, "
      "Tensor h0, Tensor w_hh, Tensor? lengths, Tensor? state_mask, bool reverse, "
      "bool reset_after, str algo=\"auto\") "
      "-> (Tensor grad_x_proj, Tensor grad_h0, Tensor grad_w_hh, Tensor grad_b_hh)");
  // The differentiable backward ops, what the forward ops' autograd calls for a backward with
  // create_graph=True (a second derivative): the reference recurrence rerun from the inputs and
  // its vector-Jacobian product taken with a graph. CompositeImplicitAutograd, implemented in
  // Python (fused_rnn/_double_backward.py). Only x_proj's autograd history is used, not its
  // values: the activations the forward op saved (y for Elman, gates) stand in for them.
  // output_mask: which gradients to compute (the others come back empty).
  m.def(
      "elman_backward_differentiable(Tensor? grad_y, Tensor? grad_h_n, Tensor x_proj, Tensor y, "
      "Tensor h0, Tensor w_hh, Tensor? b_hh, Tensor? lengths, Tensor? state_mask, bool reverse, "
      "bool relu, bool[4] output_mask) "
      "-> (Tensor grad_x_proj, Tensor grad_h0, Tensor grad_w_hh, Tensor grad_b_hh)");
  m.def(
      "lstm_backward_differentiable(Tensor? grad_y, Tensor? grad_h_n, Tensor? grad_c_n, "
      "Tensor x_proj, Tensor gates, Tensor h0, Tensor c0, Tensor w_hh, Tensor? b_hh, "
      "Tensor? w_ch, Tensor? w_hr, Tensor? lengths, Tensor? state_mask, bool reverse, "
      "bool[7] output_mask) "
      "-> (Tensor grad_x_proj, Tensor grad_h0, Tensor grad_c0, "
      "Tensor grad_w_hh, Tensor grad_b_hh, Tensor grad_w_ch, Tensor grad_w_hr)");
  m.def(
      "gru_backward_differentiable(Tensor? grad_y, Tensor? grad_h_n, Tensor x_proj, "
      "Tensor gates, Tensor h0, Tensor w_hh, Tensor? b_hh, Tensor? lengths, Tensor? state_mask, "
      "bool reverse, bool reset_after, bool[4] output_mask) "
      "-> (Tensor grad_x_proj, Tensor grad_h0, Tensor grad_w_hh, Tensor grad_b_hh)");
  // A whole layer-direction from its input x [T, B, I]: the input projection (linear), then the
  // forward op (sequences.cpp). One call from Python instead of two; autograd goes through the
  // two ops, which save what backward needs when a gradient is required.
  m.def(
      "elman_sequence(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? lengths, Tensor? state_mask, bool reverse, bool relu, str algo=\"auto\") "
      "-> (Tensor y, Tensor h_n)");
  m.def(
      "lstm_sequence(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? w_ch, Tensor? w_hr, Tensor? lengths, Tensor? state_mask, "
      "bool reverse, str algo=\"auto\") -> (Tensor y, Tensor h_n, Tensor c_n)");
  m.def(
      "gru_sequence(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? lengths, Tensor? state_mask, bool reverse, bool reset_after, "
      "str algo=\"auto\") -> (Tensor y, Tensor h_n)");
  // x [M, K] · wᵀ (+ b): the input projection of all steps at once (sequence/gemm.h).
  m.def("linear(Tensor x, Tensor w, Tensor? b) -> Tensor");
  // Σ of d [..., N] over every dimension but the last (bias gradients), with no reduction
  // temporary (sequence/common.h).
  m.def("column_sums(Tensor d) -> Tensor");
}
