// Elman RNN time loop: per step one GEMM (W_hh h) and one fused pointwise step (biases, tanh/relu).
#include <ATen/Dispatch.h>
#include <c10/core/DeviceGuard.h>

#include "fused_rnn/cell_steps.h"
#include "fused_rnn/launch.h"
#include "gemm.h"
#include "recurrent_loop.h"
#include "sequence_ops.h"

namespace fused_rnn {

std::tuple<Tensor, Tensor> elman_forward(const Tensor& x_proj_in, const Tensor& h0,
                                         const Tensor& w_hh, const OptTensor& b_hh,
                                         const OptTensor& lengths, const OptTensor& state_mask,
                                         bool reverse, bool relu, c10::string_view algo_name) {
  const c10::OptionalDeviceGuard guard(at::device_of(x_proj_in));
  const Algo algo = parse_algo(algo_name);
  const int64_t H = check_sequence_args(x_proj_in, h0, w_hh, b_hh, lengths, 1, c10::nullopt);
  const Tensor x_proj = x_proj_in.contiguous();  // [T, B, H]
  const int64_t T = x_proj.size(0), B = x_proj.size(1);
  const Tensor w = w_hh.contiguous();              // [H, H]
  Tensor h = h0.contiguous().clone();              // [B, H] state
  Tensor hh = at::empty({B, H}, x_proj.options());  // [B, H] W_hh h
  Tensor bias;                                     // keeps b_hh's contiguous copy alive
  StateDropout dropout(state_mask, h);
  Tensor y = sequence_buffer({T, B, H}, x_proj.options());  // [T, B, H]

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_proj.scalar_type(), "elman_forward", [&] {
    ElmanForwardStep<scalar_t> step;
    step.H = H;
    step.relu = relu;
    step.hh = hh.data_ptr<scalar_t>();
    step.b_hh = optional_data<scalar_t>(b_hh, bias);
    step.h = h.data_ptr<scalar_t>();
    forward_loop(T, reverse, 1, h, w, hh, dropout, algo, [&](int64_t t) {
      ElmanForwardStep<scalar_t> at_t = step;
      at_t.mask = {lengths_ptr(lengths), t};
      at_t.x_proj = x_proj.data_ptr<scalar_t>() + t * B * H;
      at_t.y = y.data_ptr<scalar_t>() + t * B * H;
      return at_t;
    });
  });
  return {y, h};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> elman_backward(
    const Tensor& grad_y_in, const Tensor& grad_h_n, const Tensor& y_in, const Tensor& h0,
    const Tensor& w_hh, const OptTensor& lengths, const OptTensor& state_mask, bool reverse,
    bool relu, c10::string_view algo_name) {
  const c10::OptionalDeviceGuard guard(at::device_of(y_in));
  const Algo algo = parse_algo(algo_name);
  const int64_t H = check_sequence_args(y_in, h0, w_hh, c10::nullopt, lengths, 1, c10::nullopt);
  const int64_t T = y_in.size(0), B = y_in.size(1);
  check_like(grad_y_in, "grad_y", y_in.sizes().vec(), y_in);
  check_like(grad_h_n, "grad_h_n", {B, H}, y_in);
  const Tensor y = y_in.contiguous();            // [T, B, H]
  const StepInput grad_y = step_input(grad_y_in);  // [T, B, H] (or one step broadcast over T)
  const Tensor w = w_hh.contiguous();            // [H, H]
  Tensor dh = grad_h_n.contiguous().clone();     // [B, H] gradient carried to the previous step
  Tensor d_a = sequence_buffer({T, B, H}, y.options());  // [T, B, H] d pre-activations
  StateDropout dropout(state_mask, dh);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "elman_backward", [&] {
    ElmanBackwardStep<scalar_t> step;
    step.H = H;
    step.relu = relu;
    step.dh = dh.data_ptr<scalar_t>();
    backward_loop(T, reverse, 1, dh, d_a, w, dropout, algo, [&](int64_t t) {
      ElmanBackwardStep<scalar_t> at_t = step;
      at_t.mask = {lengths_ptr(lengths), t};
      at_t.grad_y = grad_y.at<scalar_t>(t);
      at_t.y = y.data_ptr<scalar_t>() + t * B * H;
      at_t.d_a = d_a.data_ptr<scalar_t>() + t * B * H;
      return at_t;
    });
  });
  const Tensor grad_w_hh = recurrent_weight_gradient(d_a, y, h0, lengths, reverse, dropout);
  return {d_a, dh, grad_w_hh, column_sums(d_a)};
}

}  // namespace fused_rnn
