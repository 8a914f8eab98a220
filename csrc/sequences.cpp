// The sequence ops: one layer and direction from its input x [T, B, I], as the input projection
// (fused_rnn::linear over all T·B rows at once) followed by the forward op, in one call from
// Python. A cell called once per token paid ~7 us more for the two calls and the glue between
// them in Python. Registered as CompositeImplicitAutograd: autograd, torch.compile and dispatch
// modes see the two ops it calls, so this file holds no derivative and no fake kernel.
#include <torch/library.h>

#include "fused_rnn/check_message.h"
#include "op_calls.h"

namespace fused_rnn {
namespace {

using namespace op_calls;  // NOLINT: the op structs and call helpers

// x [T, B, I] -> x · w_ihᵀ + b_ih [T, B, G·H]. Sizes stay symbolic (SymInt): under
// torch.compile / torch.export a plain int size would specialise the graph to one T and B.
Tensor project(const Tensor& x, const Tensor& w_ih, const OptTensor& b_ih) {
  TORCH_CHECK(x.dim() == 3 && w_ih.dim() == 2,
              message("fused_rnn: x must be [T, B, I] and w_ih [G*H, I], got a ",
                      static_cast<int64_t>(x.dim()), "-D x and a ",
                      static_cast<int64_t>(w_ih.dim()), "-D w_ih"));
  TORCH_SYM_CHECK(x.sym_size(2).sym_eq(w_ih.sym_size(1)),
                  "fused_rnn: x's input size (its last dimension) must equal w_ih's columns");
  const c10::SymInt T = x.sym_size(0), B = x.sym_size(1);
  return call<Linear>(x.reshape_symint({T * B, x.sym_size(2)}), w_ih, b_ih)
      .view_symint({T, B, w_ih.sym_size(0)});
}

std::tuple<Tensor, Tensor> elman_sequence(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                                          const Tensor& w_hh, const OptTensor& b_ih,
                                          const OptTensor& b_hh, const OptTensor& lengths,
                                          const OptTensor& state_mask, bool reverse, bool relu,
                                          c10::string_view algo) {
  return call<ElmanForward>(project(x, w_ih, b_ih), h0, w_hh, b_hh, lengths, state_mask, reverse,
                            relu, algo);
}

std::tuple<Tensor, Tensor, Tensor> lstm_sequence(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_ch, const OptTensor& w_hr,
    const OptTensor& lengths, const OptTensor& state_mask, bool reverse, c10::string_view algo) {
  // The forward op saves activations for backward only when a gradient will be asked for.
  const bool training = needs_graph(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr);
  auto [y, h_n, c_n, gates, c_all] =
      call<LstmForward>(project(x, w_ih, b_ih), h0, c0, w_hh, b_hh, w_ch, w_hr, lengths,
                        state_mask, reverse, training, algo);
  return {y, h_n, c_n};
}

std::tuple<Tensor, Tensor> gru_sequence(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                                        const Tensor& w_hh, const OptTensor& b_ih,
                                        const OptTensor& b_hh, const OptTensor& lengths,
                                        const OptTensor& state_mask, bool reverse,
                                        bool reset_after, c10::string_view algo) {
  const bool training = needs_graph(x, h0, w_ih, w_hh, b_ih, b_hh);
  auto [y, h_n, gates, hh_n] = call<GruForward>(project(x, w_ih, b_ih), h0, w_hh, b_hh, lengths,
                                                state_mask, reverse, reset_after, training, algo);
  return {y, h_n};
}

}  // namespace
}  // namespace fused_rnn

TORCH_LIBRARY_IMPL(fused_rnn, CompositeImplicitAutograd, m) {
  m.impl("elman_sequence", &fused_rnn::elman_sequence);
  m.impl("lstm_sequence", &fused_rnn::lstm_sequence);
  m.impl("gru_sequence", &fused_rnn::gru_sequence);
}
