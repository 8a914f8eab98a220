// Autograd of the fused_rnn ops, in C++, registered for the Autograd key of every device.
//
// Each forward op's node saves what its backward op needs and calls that op. The backward ops
// themselves have no derivative: a backward run with create_graph=True (grad mode on inside it)
// calls a differentiable backward op instead (second derivatives, below). Why C++: the
// same registration through torch.library's Python API cost ~30 us a call in Python (argument
// binding, the wrapper, a Python backward), which a cell called once per token paid on every step,
// forward and backward. A call that needs no graph (grad mode off, or no input requiring a
// gradient) goes straight to the device kernel.
#include <torch/autograd.h>
#include <torch/csrc/autograd/variable.h>  // impl::set_gradient_edge
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>

#include "op_calls.h"

namespace fused_rnn {
namespace {

using namespace op_calls;  // NOLINT: the op structs and call helpers
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

Tensor or_undefined(const OptTensor& t) { return t.value_or(Tensor()); }
OptTensor optional(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }
// The gradient of an output the loss did not use arrives undefined (materialize_grads off).
Tensor or_zeros(const Tensor& grad, const Tensor& like) {
  return grad.defined() ? grad : at::zeros_like(like);
}

void require_training(AutogradContext* ctx, const char* op_name) {
  TORCH_CHECK(ctx->saved_data["training"].toBool(), "fused_rnn: ", op_name,
              " ran with training=False, so it saved no activations for backward");
}

// ---------------------------------------------------------------------------- second derivatives
// A backward whose graph is recorded (create_graph=True) goes to a differentiable backward op
// (ops.cpp), implemented in Python as the reference recurrence rerun from the saved inputs, which
// keep their autograd history. x_proj, the largest activation, is not saved (a first-order
// backward never reads it): the op gets a tensor on its autograd edge, and the saved activations
// stand in for its values.
bool backward_needs_graph() { return at::GradMode::is_enabled(); }

// Loaded from C++ alone (torch.ops.load_library), the library has no Python implementation.
template <class Op>
void require_python_implementation() {
  TORCH_CHECK(handle<Op>().hasKernelForDispatchKey(c10::DispatchKey::CompositeImplicitAutograd),
              "fused_rnn: a second derivative (a backward run with create_graph=True) needs the "
              "Python package: ", Op::name, " is implemented in fused_rnn/_double_backward.py, "
              "registered by `import fused_rnn`");
}

// Zeros shaped like x_proj that carry x_proj's autograd edge: gradients into them go where
// x_proj's would. `y` is a saved output: unpacked, its grad_fn is this Function's node, whose
// first input is x_proj.
Tensor on_x_proj_edge(const Tensor& y, const Tensor& like_x_proj) {
  Tensor link = at::zeros_like(like_x_proj, at::MemoryFormat::Contiguous);
  TORCH_INTERNAL_ASSERT(y.grad_fn(), "a saved output without its node");
  const torch::autograd::Edge& edge = y.grad_fn()->next_edge(0);
  if (edge.is_valid()) torch::autograd::impl::set_gradient_edge(link, edge);
  return link;
}

// Which of the first N (differentiable) inputs need a gradient. needs_input_grad counts edges,
// and an absent optional input has none.
template <size_t N>
std::array<bool, N> needed_input_grads(AutogradContext* ctx, const std::array<Tensor, N>& inputs) {
  std::array<bool, N> mask{};
  size_t edge = 0;
  for (size_t i = 0; i < N; ++i) {
    if (inputs[i].defined()) mask[i] = ctx->needs_input_grad(edge++);
  }
  return mask;
}

// ------------------------------------------------------------------------------------ forward ops
struct ElmanFunction : torch::autograd::Function<ElmanFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x_proj, const Tensor& h0,
                               const Tensor& w_hh, const OptTensor& b_hh, const OptTensor& lengths,
                               const OptTensor& state_mask, bool reverse, bool relu,
                               c10::string_view algo) {
    auto [y, h_n] = call_below_autograd<ElmanForward>(x_proj, h0, w_hh, b_hh, lengths, state_mask,
                                                      reverse, relu, algo);
    ctx->set_materialize_grads(false);
    // b_hh, an input, costs no memory; only a second derivative reads it.
    ctx->save_for_backward({y, h0, w_hh, or_undefined(lengths), or_undefined(state_mask),
                            or_undefined(b_hh)});
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["has_bias"] = b_hh.has_value();
    ctx->saved_data["algo"] = std::string(algo);
    return {y, h_n};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &y = saved[0], &h0 = saved[1], &w_hh = saved[2];
    const Tensor none;
    if (backward_needs_graph()) {
      require_python_implementation<ElmanBackwardDifferentiable>();
      const Tensor x_proj = on_x_proj_edge(y, y);
      const auto mask = needed_input_grads<4>(ctx, {x_proj, h0, w_hh, saved[5]});
      auto [gx, gh0, gw, gb] = call<ElmanBackwardDifferentiable>(
          optional(grads[0]), optional(grads[1]), x_proj, y, h0, w_hh, optional(saved[5]),
          optional(saved[3]), optional(saved[4]),
          ctx->saved_data["reverse"].toBool(), ctx->saved_data["relu"].toBool(), mask);
      return {mask[0] ? gx : none, mask[1] ? gh0 : none, mask[2] ? gw : none,
              mask[3] ? gb : none, none, none, none, none, none};
    }
    auto [gx, gh0, gw, gb] = call<ElmanBackward>(
        or_zeros(grads[0], y), or_zeros(grads[1], h0), y, h0, w_hh, optional(saved[3]),
        optional(saved[4]), ctx->saved_data["reverse"].toBool(), ctx->saved_data["relu"].toBool(),
        ctx->saved_data["algo"].toStringRef());
    return {gx, gh0, gw, ctx->saved_data["has_bias"].toBool() ? gb : none,
            none, none, none, none, none};
  }
};

struct LstmFunction : torch::autograd::Function<LstmFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x_proj, const Tensor& h0,
                               const Tensor& c0, const Tensor& w_hh, const OptTensor& b_hh,
                               const OptTensor& w_ch, const OptTensor& w_hr,
                               const OptTensor& lengths, const OptTensor& state_mask, bool reverse,
                               bool training, c10::string_view algo) {
    auto [y, h_n, c_n, gates, c_all] = call_below_autograd<LstmForward>(
        x_proj, h0, c0, w_hh, b_hh, w_ch, w_hr, lengths, state_mask, reverse, training, algo);
    // gates and c_all only carry activations to backward.
    ctx->mark_non_differentiable({gates, c_all});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({y, gates, c_all, h0, c0, w_hh, or_undefined(w_ch), or_undefined(w_hr),
                            or_undefined(lengths), or_undefined(state_mask), or_undefined(b_hh)});
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["training"] = training;
    ctx->saved_data["has_bias"] = b_hh.has_value();
    ctx->saved_data["algo"] = std::string(algo);
    return {y, h_n, c_n, gates, c_all};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    require_training(ctx, "lstm_forward");
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &y = saved[0], &h0 = saved[3], &c0 = saved[4];
    const OptTensor w_ch = optional(saved[6]), w_hr = optional(saved[7]);
    const Tensor none;
    if (backward_needs_graph()) {
      require_python_implementation<LstmBackwardDifferentiable>();
      const Tensor x_proj = on_x_proj_edge(y, saved[1]);
      const auto mask = needed_input_grads<7>(
          ctx, {x_proj, h0, c0, saved[5], saved[10], saved[6], saved[7]});
      auto [gx, gh0, gc0, gw, gb, gw_ch, gw_hr] = call<LstmBackwardDifferentiable>(
          optional(grads[0]), optional(grads[1]), optional(grads[2]), x_proj, saved[1], h0, c0,
          saved[5], optional(saved[10]), w_ch, w_hr, optional(saved[8]),
          optional(saved[9]), ctx->saved_data["reverse"].toBool(), mask);
      return {mask[0] ? gx : none,    mask[1] ? gh0 : none,   mask[2] ? gc0 : none,
              mask[3] ? gw : none,    mask[4] ? gb : none,    mask[5] ? gw_ch : none,
              mask[6] ? gw_hr : none, none, none, none, none, none};
    }
    auto [gx, gh0, gc0, gw, gb, gw_ch, gw_hr] = call<LstmBackward>(
        or_zeros(grads[0], y), or_zeros(grads[1], h0), or_zeros(grads[2], c0), y, saved[1],
        saved[2], h0, c0, saved[5], w_ch, w_hr, optional(saved[8]), optional(saved[9]),
        ctx->saved_data["reverse"].toBool(), ctx->saved_data["algo"].toStringRef());
    return {gx, gh0, gc0, gw, ctx->saved_data["has_bias"].toBool() ? gb : none,
            w_ch ? gw_ch : none, w_hr ? gw_hr : none, none, none, none, none, none};
  }
};

struct GruFunction : torch::autograd::Function<GruFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x_proj, const Tensor& h0,
                               const Tensor& w_hh, const OptTensor& b_hh, const OptTensor& lengths,
                               const OptTensor& state_mask, bool reverse, bool reset_after,
                               bool training, c10::string_view algo) {
    auto [y, h_n, gates, hh_n] = call_below_autograd<GruForward>(
        x_proj, h0, w_hh, b_hh, lengths, state_mask, reverse, reset_after, training, algo);
    ctx->mark_non_differentiable({gates, hh_n});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({y, gates, hh_n, h0, w_hh, or_undefined(lengths),
                            or_undefined(state_mask), or_undefined(b_hh)});
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["reset_after"] = reset_after;
    ctx->saved_data["training"] = training;
    ctx->saved_data["has_bias"] = b_hh.has_value();
    ctx->saved_data["algo"] = std::string(algo);
    return {y, h_n, gates, hh_n};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    require_training(ctx, "gru_forward");
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &y = saved[0], &h0 = saved[3];
    const Tensor none;
    if (backward_needs_graph()) {
      require_python_implementation<GruBackwardDifferentiable>();
      const Tensor x_proj = on_x_proj_edge(y, saved[1]);
      const auto mask = needed_input_grads<4>(ctx, {x_proj, h0, saved[4], saved[7]});
      auto [gx, gh0, gw, gb] = call<GruBackwardDifferentiable>(
          optional(grads[0]), optional(grads[1]), x_proj, saved[1], h0, saved[4],
          optional(saved[7]), optional(saved[5]), optional(saved[6]),
          ctx->saved_data["reverse"].toBool(), ctx->saved_data["reset_after"].toBool(), mask);
      return {mask[0] ? gx : none, mask[1] ? gh0 : none, mask[2] ? gw : none,
              mask[3] ? gb : none, none, none, none, none, none, none};
    }
    auto [gx, gh0, gw, gb] = call<GruBackward>(
        or_zeros(grads[0], y), or_zeros(grads[1], h0), y, saved[1], saved[2], h0, saved[4],
        optional(saved[5]), optional(saved[6]), ctx->saved_data["reverse"].toBool(),
        ctx->saved_data["reset_after"].toBool(), ctx->saved_data["algo"].toStringRef());
    return {gx, gh0, gw, ctx->saved_data["has_bias"].toBool() ? gb : none,
            none, none, none, none, none, none};
  }
};

// Both gradients are linear() again, d x = g · w and d w = gᵀ · x, and the bias's is column_sums:
// all differentiable, so a double backward through the input projection works.
struct LinearFunction : torch::autograd::Function<LinearFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& w,
                               const OptTensor& b) {
    ctx->save_for_backward({x, w});
    ctx->saved_data["has_bias"] = b.has_value();
    return {call_below_autograd<Linear>(x, w, b)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &w = saved[1], &grad = grads[0];
    Tensor grad_x, grad_w, grad_b;
    if (ctx->needs_input_grad(0)) grad_x = call<Linear>(grad, w.t(), std::nullopt);
    if (ctx->needs_input_grad(1)) grad_w = call<Linear>(grad.t(), x.t(), std::nullopt);
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) {
      grad_b = call<ColumnSums>(grad);
    }
    return {grad_x, grad_w, grad_b};
  }
};

// The sum over every leading dimension: each summed element gets its column's gradient (reached
// by the double backward of a bias).
struct ColumnSumsFunction : torch::autograd::Function<ColumnSumsFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& d) {
    ctx->saved_data["sizes"] = d.sizes();
    return {call_below_autograd<ColumnSums>(d)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {grads[0].expand(ctx->saved_data["sizes"].toIntVector())};
  }
};

// ----------------------------------------------------------------------------------- the kernels
template <class Tuple, size_t... I>
Tuple as_tuple(const variable_list& outputs, std::index_sequence<I...>) {
  return Tuple(outputs[I]...);
}
template <class Tuple>
Tuple as_tuple(const variable_list& outputs) {
  return as_tuple<Tuple>(outputs, std::make_index_sequence<std::tuple_size_v<Tuple>>());
}

std::tuple<Tensor, Tensor> elman_forward(const Tensor& x_proj, const Tensor& h0, const Tensor& w_hh,
                                         const OptTensor& b_hh, const OptTensor& lengths,
                                         const OptTensor& state_mask, bool reverse, bool relu,
                                         c10::string_view algo) {
  if (!needs_graph(x_proj, h0, w_hh, b_hh)) {
    return call_below_autograd<ElmanForward>(x_proj, h0, w_hh, b_hh, lengths, state_mask, reverse,
                                             relu, algo);
  }
  return as_tuple<std::tuple<Tensor, Tensor>>(ElmanFunction::apply(
      x_proj, h0, w_hh, b_hh, lengths, state_mask, reverse, relu, algo));
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& x_proj, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
    const OptTensor& b_hh, const OptTensor& w_ch, const OptTensor& w_hr, const OptTensor& lengths,
    const OptTensor& state_mask, bool reverse, bool training, c10::string_view algo) {
  if (!needs_graph(x_proj, h0, c0, w_hh, b_hh, w_ch, w_hr)) {
    return call_below_autograd<LstmForward>(x_proj, h0, c0, w_hh, b_hh, w_ch, w_hr, lengths,
                                            state_mask, reverse, training, algo);
  }
  return as_tuple<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>>(LstmFunction::apply(
      x_proj, h0, c0, w_hh, b_hh, w_ch, w_hr, lengths, state_mask, reverse, training, algo));
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward(const Tensor& x_proj, const Tensor& h0,
                                                       const Tensor& w_hh, const OptTensor& b_hh,
                                                       const OptTensor& lengths,
                                                       const OptTensor& state_mask, bool reverse,
                                                       bool reset_after, bool training,
                                                       c10::string_view algo) {
  if (!needs_graph(x_proj, h0, w_hh, b_hh)) {
    return call_below_autograd<GruForward>(x_proj, h0, w_hh, b_hh, lengths, state_mask, reverse,
                                           reset_after, training, algo);
  }
  return as_tuple<std::tuple<Tensor, Tensor, Tensor, Tensor>>(GruFunction::apply(
      x_proj, h0, w_hh, b_hh, lengths, state_mask, reverse, reset_after, training, algo));
}

Tensor linear(const Tensor& x, const Tensor& w, const OptTensor& b) {
  if (!needs_graph(x, w, b)) return call_below_autograd<Linear>(x, w, b);
  return LinearFunction::apply(x, w, b)[0];
}

Tensor column_sums(const Tensor& d) {
  if (!needs_graph(d)) return call_below_autograd<ColumnSums>(d);
  return ColumnSumsFunction::apply(d)[0];
}

// A backward op called directly where a graph is recorded gets a node that raises if that graph
// is differentiated: autograd's fallback would return zeros with only a warning. (The forward
// ops' own backward never gets here with a graph: it takes the differentiable ops.)
template <class Op>
struct NoSecondDerivative : torch::autograd::Function<NoSecondDerivative<Op>> {
  template <class... Args>
  static variable_list forward(AutogradContext*, const Args&... args) {
    return std::apply([](const auto&... t) { return variable_list{t...}; },
                      call_below_autograd<Op>(args...));
  }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false,
                "fused_rnn: the backward ops have no derivative; differentiate the forward ops "
                "(their backward with create_graph=True is differentiable)");
  }
};

template <class Op, class... Args>
auto backward_op(bool graph, const Args&... args) {
  using Tuple = typename c10::guts::infer_function_traits_t<typename Op::Signature>::return_type;
  if (!graph) return call_below_autograd<Op>(args...);
  return as_tuple<Tuple>(NoSecondDerivative<Op>::apply(args...));
}

std::tuple<Tensor, Tensor, Tensor, Tensor> elman_backward(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& y, const Tensor& h0,
    const Tensor& w_hh, const OptTensor& lengths, const OptTensor& state_mask, bool reverse,
    bool relu, c10::string_view algo) {
  return backward_op<ElmanBackward>(needs_graph(grad_y, grad_h_n, y, h0, w_hh), grad_y, grad_h_n,
                                    y, h0, w_hh, lengths, state_mask, reverse, relu, algo);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& y,
    const Tensor& gates, const Tensor& c_all, const Tensor& h0, const Tensor& c0,
    const Tensor& w_hh, const OptTensor& w_ch, const OptTensor& w_hr, const OptTensor& lengths,
    const OptTensor& state_mask, bool reverse, c10::string_view algo) {
  return backward_op<LstmBackward>(
      needs_graph(grad_y, grad_h_n, grad_c_n, y, gates, c_all, h0, c0, w_hh, w_ch, w_hr), grad_y,
      grad_h_n, grad_c_n, y, gates, c_all, h0, c0, w_hh, w_ch, w_hr, lengths, state_mask, reverse,
      algo);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& y, const Tensor& gates,
    const Tensor& hh_n, const Tensor& h0, const Tensor& w_hh, const OptTensor& lengths,
    const OptTensor& state_mask, bool reverse, bool reset_after, c10::string_view algo) {
  return backward_op<GruBackward>(needs_graph(grad_y, grad_h_n, y, gates, hh_n, h0, w_hh), grad_y,
                                  grad_h_n, y, gates, hh_n, h0, w_hh, lengths, state_mask, reverse,
                                  reset_after, algo);
}

}  // namespace
}  // namespace fused_rnn

TORCH_LIBRARY_IMPL(fused_rnn, Autograd, m) {
  m.impl("elman_forward", &fused_rnn::elman_forward);
  m.impl("elman_backward", &fused_rnn::elman_backward);
  m.impl("lstm_forward", &fused_rnn::lstm_forward);
  m.impl("lstm_backward", &fused_rnn::lstm_backward);
  m.impl("gru_forward", &fused_rnn::gru_forward);
  m.impl("gru_backward", &fused_rnn::gru_backward);
  m.impl("linear", &fused_rnn::linear);
  m.impl("column_sums", &fused_rnn::column_sums);
}
