// LSTM / peephole LSTM time loop: per step one GEMM (W_hh h) and one fused pointwise step
// (biases, gates, state update); with a projection (proj_size) also h = W_hr m and a masking step.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/core/DeviceGuard.h>

#include "fused_rnn/cell_steps.h"
#include "fused_rnn/launch.h"
#include "gemm.h"
#include "recurrent_loop.h"
#include "sequence_ops.h"

namespace fused_rnn {
namespace {

// Checks the LSTM-only arguments and returns P (the state size: proj_size or H).
int64_t check_lstm_args(const Tensor& x_proj, const Tensor& c0, const OptTensor& w_ch,
                        const OptTensor& w_hr) {
  TORCH_CHECK(x_proj.dim() == 3 && x_proj.size(2) % 4 == 0,
              message("fused_rnn: x_proj must be 3-D [T, B, 4*H], got shape ", x_proj.sizes()));
  const int64_t B = x_proj.size(1), H = x_proj.size(2) / 4;
  check_like(c0, "c0", {B, H}, x_proj);
  if (w_ch.has_value()) check_like(*w_ch, "w_ch", {3 * H}, x_proj);
  if (!w_hr.has_value()) return H;
  TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(1) == H,
              message("fused_rnn: w_hr must have shape [proj_size, ", H, "], got ", w_hr->sizes()));
  check_like(*w_hr, "w_hr", {w_hr->size(0), H}, x_proj);
  return w_hr->size(0);
}

at::ScalarType cell_state_type(const Tensor& x) {
  return at::toOpMathType(x.scalar_type());  // float for half and bfloat16
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& x_proj_in, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
    const OptTensor& b_hh, const OptTensor& w_ch_in, const OptTensor& w_hr, const OptTensor& lengths,
    const OptTensor& state_mask, bool reverse, bool training, c10::string_view algo_name) {
  const c10::OptionalDeviceGuard guard(at::device_of(x_proj_in));
  const Algo algo = parse_algo(algo_name);
  const int64_t P = check_lstm_args(x_proj_in, c0, w_ch_in, w_hr);
  const int64_t H = check_sequence_args(x_proj_in, h0, w_hh, b_hh, lengths, 4, P);
  const Tensor x_proj = x_proj_in.contiguous();  // [T, B, 4H]
  const int64_t T = x_proj.size(0), B = x_proj.size(1);
  const auto opts = x_proj.options();
  const auto c_opts = opts.dtype(cell_state_type(x_proj));
  const Tensor w = w_hh.contiguous();                                   // [4H, P]
  Tensor bias, peepholes;                        // keep b_hh's and w_ch's contiguous copies alive
  Tensor h = h0.contiguous().clone();                                   // [B, P] state
  Tensor c = c0.to(c_opts.dtype()).contiguous().clone();               // [B, H] cell state
  Tensor hh = at::empty({B, 4 * H}, opts);                        // [B, 4H] W_hh h
  StateDropout dropout(state_mask, h);
  Tensor y = sequence_buffer({T, B, P}, opts);                    // [T, B, P]
  Tensor gates = training ? sequence_buffer({T, B, 4 * H}, opts) : absent(x_proj);  // [T, B, 4H]
  Tensor c_all = training ? sequence_buffer({T, B, H}, c_opts) : absent(c);         // [T, B, H]
  const bool project = w_hr.has_value();
  Tensor m = project ? at::empty({B, H}, opts) : Tensor();      // [B, H] o tanh(c)
  Tensor h_new = project ? at::empty({B, P}, opts) : Tensor();  // [B, P] W_hr m
  const Tensor w_proj = project ? w_hr->contiguous() : Tensor();  // [P, H]

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_proj.scalar_type(), "lstm_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    LstmForwardStep<scalar_t> step;
    step.H = H;
    step.hh = hh.data_ptr<scalar_t>();
    step.b_hh = optional_data<scalar_t>(b_hh, bias);
    step.w_ch = optional_data<scalar_t>(w_ch_in, peepholes);
    step.c = c.data_ptr<acc_t>();
    step.h = project ? nullptr : h.data_ptr<scalar_t>();
    step.m = project ? m.data_ptr<scalar_t>() : nullptr;
    MaskedStateStep<scalar_t> mask_step;
    mask_step.P = P;
    mask_step.h = h.data_ptr<scalar_t>();
    mask_step.h_new = project ? h_new.data_ptr<scalar_t>() : nullptr;
    auto step_at = [&](int64_t t) {
      LstmForwardStep<scalar_t> at_t = step;
      at_t.mask = {lengths_ptr(lengths), t};
      at_t.x_proj = x_proj.data_ptr<scalar_t>() + t * B * 4 * H;
      at_t.y = project ? nullptr : y.data_ptr<scalar_t>() + t * B * P;
      at_t.gates = training ? gates.data_ptr<scalar_t>() + t * B * 4 * H : nullptr;
      at_t.c_saved = training ? c_all.data_ptr<acc_t>() + t * B * H : nullptr;
      return at_t;
    };
    if (!project) return forward_loop(T, reverse, 4, h, w, hh, dropout, algo, step_at);
    require_not_persistent(algo, "an LSTM projection (proj_size)");
    // With a projection each step is: hh = W_hh h, the cell step (writes m), h = W_hr m, mask.
    const StepGemm recurrent(w, /*transposed=*/true, T * B);
    const StepGemm projection(w_proj, /*transposed=*/true, T * B);
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = time_at(s, T, reverse);
      recurrent(hh, dropout.gemm_input(h), /*accumulate=*/false);
      launch_step(step_at(t), B, H, x_proj.device());
      projection(h_new, m, /*accumulate=*/false);
      mask_step.mask = {lengths_ptr(lengths), t};
      mask_step.y = y.data_ptr<scalar_t>() + t * B * P;
      launch_step(mask_step, B, P, x_proj.device());
    }
  });
  return {y, h, c.to(x_proj.scalar_type()), gates, c_all};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_y_in, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& y_in,
    const Tensor& gates_in, const Tensor& c_all_in, const Tensor& h0, const Tensor& c0,
    const Tensor& w_hh, const OptTensor& w_ch_in, const OptTensor& w_hr, const OptTensor& lengths,
    const OptTensor& state_mask, bool reverse, c10::string_view algo_name) {
  const c10::OptionalDeviceGuard guard(at::device_of(gates_in));
  const Algo algo = parse_algo(algo_name);
  const int64_t P = check_lstm_args(gates_in, c0, w_ch_in, w_hr);
  const int64_t H = check_sequence_args(gates_in, h0, w_hh, c10::nullopt, lengths, 4, P);
  const int64_t T = gates_in.size(0), B = gates_in.size(1);
  check_like(y_in, "y", {T, B, P}, gates_in);
  check_like(grad_y_in, "grad_y", {T, B, P}, gates_in);
  check_like(grad_h_n, "grad_h_n", {B, P}, gates_in);
  check_like(grad_c_n, "grad_c_n", {B, H}, gates_in);
  const auto opts = gates_in.options();
  const auto c_type = cell_state_type(gates_in);
  TORCH_CHECK(c_all_in.sizes() == at::IntArrayRef({T, B, H}) && c_all_in.scalar_type() == c_type,
              message("fused_rnn: c_all must be [", T, ", ", B, ", ", H, "] of dtype ", c_type));
  const Tensor y = y_in.contiguous();            // [T, B, P]
  const StepInput grad_y = step_input(grad_y_in);  // [T, B, P] (or one step broadcast over T)
  const Tensor gates = gates_in.contiguous();      // [T, B, 4H]
  const Tensor c_all = c_all_in.contiguous();    // [T, B, H] acc type
  const Tensor w = w_hh.contiguous();            // [4H, P]
  Tensor peepholes;  // keeps w_ch's contiguous copy alive
  // c_{t-1}: c_all holds the state after every step, masked rows included (they carry it), so
  // step t starts from c_all[previous_step(t)], the first step from c0.
  const Tensor c0_acc = c0.to(c_type).contiguous();  // [B, H]
  Tensor dh = grad_h_n.contiguous().clone();             // [B, P] carried to the previous step
  Tensor dc = grad_c_n.to(c_type).contiguous().clone();  // [B, H] carried to the previous step
  Tensor d_gates = sequence_buffer({T, B, 4 * H}, opts);  // [T, B, 4H] d pre-activations
  StateDropout dropout(state_mask, dh);
  const bool project = w_hr.has_value();
  // [T, B, P] d h_t on valid rows
  Tensor dh_valid = project ? sequence_buffer({T, B, P}, opts) : Tensor();
  Tensor dm = project ? at::empty({B, H}, opts) : Tensor();           // [B, H] d m_t
  const Tensor w_hr_c = project ? w_hr->contiguous() : Tensor();       // [P, H]

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(), "lstm_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    LstmBackwardStep<scalar_t> step;
    step.H = H;
    step.carry_h = !project;
    step.w_ch = optional_data<scalar_t>(w_ch_in, peepholes);
    step.dh = project ? dm.data_ptr<scalar_t>() : dh.data_ptr<scalar_t>();
    step.dc = dc.data_ptr<acc_t>();
    ProjectionCarryStep<scalar_t> carry_step;
    carry_step.P = P;
    carry_step.carry = dh.data_ptr<scalar_t>();
    auto step_at = [&](int64_t t) {
      LstmBackwardStep<scalar_t> at_t = step;
      at_t.mask = {lengths_ptr(lengths), t};
      at_t.grad_y = project ? nullptr : grad_y.at<scalar_t>(t);
      at_t.gates = gates.data_ptr<scalar_t>() + t * B * 4 * H;
      at_t.c_t = c_all.data_ptr<acc_t>() + t * B * H;
      at_t.c_prev = t == first_step(T, reverse)
                        ? c0_acc.data_ptr<acc_t>()
                        : c_all.data_ptr<acc_t>() + previous_step(t, reverse) * B * H;
      at_t.d_gates = d_gates.data_ptr<scalar_t>() + t * B * 4 * H;
      return at_t;
    };
    if (!project) return backward_loop(T, reverse, 4, dh, d_gates, w, dropout, algo, step_at);
    require_not_persistent(algo, "an LSTM projection (proj_size)");
    // With a projection, d m_t = W_hrᵀ (d h_t on valid rows) comes first.
    const StepGemm recurrent(w, /*transposed=*/false, T * B);
    const StepGemm projection(w_hr_c, /*transposed=*/false, T * B);
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = time_at(s, T, reverse);
      carry_step.mask = {lengths_ptr(lengths), t};
      carry_step.grad_y = grad_y.at<scalar_t>(t);
      carry_step.dh_valid = dh_valid.data_ptr<scalar_t>() + t * B * P;
      launch_step(carry_step, B, P, gates.device());
      projection(dm, dh_valid.select(0, t), /*accumulate=*/false);
      launch_step(step_at(t), B, H, gates.device());
      dropout.backprop(dh, d_gates.select(0, t), recurrent);
    }
  });

  const Tensor grad_w_hh = recurrent_weight_gradient(d_gates, y, h0, lengths, reverse, dropout);
  const Tensor grad_b_hh = column_sums(d_gates);
  Tensor grad_w_ch = absent(gates);
  if (w_ch_in.has_value()) {
    // Peepholes see c_{t-1} (gates i, f) and c_t (gate o): Σ over steps and rows of d a ⊙ c.
    auto d_gate = [&](int64_t gate) { return d_gates.narrow(2, gate * H, H).to(c_type); };
    auto sum_times_previous_c = [&](int64_t gate) {
      const Tensor d = d_gate(gate);  // [T, B, H]
      Tensor sum = (d.select(0, first_step(T, reverse)) * c0_acc).sum(0);
      if (T > 1) {
        sum += column_sums(later_steps(d, reverse) * their_previous_steps(c_all, reverse));
      }
      return sum;
    };
    grad_w_ch = at::cat({sum_times_previous_c(0), sum_times_previous_c(1),
                         column_sums(d_gate(3) * c_all)},
                        0)
                    .to(gates.scalar_type());
  }
  Tensor grad_w_hr = absent(gates);
  if (project) {
    const Tensor m_all = (gates.narrow(2, 3 * H, H).to(c_type) * c_all.tanh()).to(gates.scalar_type());
    grad_w_hr = weight_gradient(dh_valid.view({T * B, P}), m_all.view({T * B, H}));
  }
  return {d_gates, dh, dc.to(gates.scalar_type()), grad_w_hh, grad_b_hh, grad_w_ch, grad_w_hr};
}

}  // namespace fused_rnn
