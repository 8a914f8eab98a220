// Calls of the fused_rnn ops through the dispatcher from C++ (the autograd kernels and the
// composite sequence ops call the others this way), and the question every such caller asks:
// does this call record a graph?
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <array>
#include <optional>
#include <tuple>
#include <utility>

namespace fused_rnn {
namespace op_calls {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// The ops (csrc/ops.cpp): name and signature. A call through the dispatcher goes through every
// dispatch key; in call_below_autograd, at::AutoDispatchBelowADInplaceOrView skips the Autograd one.
#define FUSED_RNN_OP(Op, op_name, ...)                         \
  struct Op {                                                   \
    static constexpr const char* name = "fused_rnn::" op_name; \
    using Signature = __VA_ARGS__;                              \
  };
FUSED_RNN_OP(ElmanForward, "elman_forward",
             std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                        const OptTensor&, const OptTensor&, const OptTensor&, bool,
                                        bool, c10::string_view))
FUSED_RNN_OP(ElmanBackward, "elman_backward",
             std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                        const Tensor&, const Tensor&,
                                                        const OptTensor&, const OptTensor&, bool,
                                                        bool, c10::string_view))
FUSED_RNN_OP(LstmForward, "lstm_forward",
             std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
                 const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                 const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, bool, bool,
                 c10::string_view))
FUSED_RNN_OP(LstmBackward, "lstm_backward",
             std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
                 const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                 const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                 const OptTensor&, const OptTensor&, const OptTensor&, bool, c10::string_view))
FUSED_RNN_OP(GruForward, "gru_forward",
             std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                        const OptTensor&, const OptTensor&,
                                                        const OptTensor&, bool, bool, bool,
                                                        c10::string_view))
FUSED_RNN_OP(GruBackward, "gru_backward",
             std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                        const Tensor&, const Tensor&, const Tensor&,
                                                        const Tensor&, const OptTensor&,
                                                        const OptTensor&, bool, bool,
                                                        c10::string_view))
// The differentiable backward ops (second derivatives; fused_rnn/_double_backward.py).
FUSED_RNN_OP(ElmanBackwardDifferentiable, "elman_backward_differentiable",
             std::tuple<Tensor, Tensor, Tensor, Tensor>(const OptTensor&, const OptTensor&,
                                                        const Tensor&, const Tensor&, const Tensor&,
                                                        const Tensor&, const OptTensor&,
                                                        const OptTensor&, const OptTensor&, bool,
                                                        bool, std::array<bool, 4>))
FUSED_RNN_OP(LstmBackwardDifferentiable, "lstm_backward_differentiable",
             std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
                 const OptTensor&, const OptTensor&, const OptTensor&, const Tensor&, const Tensor&,
                 const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                 const OptTensor&, const OptTensor&, const OptTensor&, bool, std::array<bool, 7>))
FUSED_RNN_OP(GruBackwardDifferentiable, "gru_backward_differentiable",
             std::tuple<Tensor, Tensor, Tensor, Tensor>(const OptTensor&, const OptTensor&,
                                                        const Tensor&, const Tensor&, const Tensor&,
                                                        const Tensor&, const OptTensor&,
                                                        const OptTensor&, const OptTensor&, bool,
                                                        bool, std::array<bool, 4>))
FUSED_RNN_OP(Linear, "linear", Tensor(const Tensor&, const Tensor&, const OptTensor&))
FUSED_RNN_OP(ColumnSums, "column_sums", Tensor(const Tensor&))
#undef FUSED_RNN_OP

// The op's handle, looked up once.
template <class Op>
const c10::TypedOperatorHandle<typename Op::Signature>& handle() {
  static const auto typed = c10::Dispatcher::singleton()
                                .findSchemaOrThrow(Op::name, "")
                                .template typed<typename Op::Signature>();
  return typed;
}

template <class Op, class... Args>
auto call(Args&&... args) {
  return handle<Op>().call(std::forward<Args>(args)...);
}

// The same call without the Autograd key: straight to the device kernel.
template <class Op, class... Args>
auto call_below_autograd(Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView below;
  return call<Op>(std::forward<Args>(args)...);
}

inline bool requires_grad(const Tensor& t) { return t.defined() && t.requires_grad(); }
inline bool requires_grad(const OptTensor& t) { return t.has_value() && requires_grad(*t); }

// Whether a call with these differentiable inputs records a graph.
template <class... Ts>
bool needs_graph(const Ts&... inputs) {
  return at::GradMode::is_enabled() && (requires_grad(inputs) || ...);
}

}  // namespace op_calls
}  // namespace fused_rnn
