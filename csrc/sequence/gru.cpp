// GRU time loops. reset_after (torch/cuDNN): per step one GEMM and one fused step.
// reset_before (TF GRUCell): n needs W_hn (r h), so per step two GEMMs and two fused steps (or,
// with algo="persistent" on CUDA, one kernel with two grid barriers a step).
#include <ATen/Dispatch.h>
#include <c10/core/DeviceGuard.h>

#include "fused_rnn/cell_steps.h"
#include "fused_rnn/launch.h"
#include "gemm.h"
#include "recurrent_loop.h"
#include "sequence_ops.h"

namespace fused_rnn {

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward(const Tensor& x_proj_in, const Tensor& h0,
                                                       const Tensor& w_hh, const OptTensor& b_hh,
                                                       const OptTensor& lengths,
                                                       const OptTensor& state_mask, bool reverse,
                                                       bool reset_after, bool training,
                                                       c10::string_view algo_name) {
  const c10::OptionalDeviceGuard guard(at::device_of(x_proj_in));
  const Algo algo = parse_algo(algo_name);
  const int64_t H = check_sequence_args(x_proj_in, h0, w_hh, b_hh, lengths, 3, c10::nullopt);
  const Tensor x_proj = x_proj_in.contiguous();  // [T, B, 3H]
  const int64_t T = x_proj.size(0), B = x_proj.size(1);
  const auto opts = x_proj.options();
  const auto device = x_proj.device();
  const Tensor w = w_hh.contiguous();    // [3H, H]
  Tensor bias;                           // keeps b_hh's contiguous copy alive
  Tensor h = h0.contiguous().clone();    // [B, H] state
  StateDropout dropout(state_mask, h);
  Tensor y = sequence_buffer({T, B, H}, opts);  // [T, B, H]
  // reset_before always needs r, z within the step, so it keeps gates even in inference.
  const bool keep_gates = training || !reset_after;
  Tensor gates =  // [T, B, 3H] (inference: [1, B, 3H])
      keep_gates ? sequence_buffer({training ? T : 1, B, 3 * H}, opts) : absent(x_proj);
  Tensor hh_n_all =  // [T, B, H]
      training && reset_after ? sequence_buffer({T, B, H}, opts) : absent(x_proj);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_proj.scalar_type(), "gru_forward", [&] {
    const scalar_t* b_hh_data = optional_data<scalar_t>(b_hh, bias);
    auto x_at = [&](int64_t t) { return x_proj.data_ptr<scalar_t>() + t * B * 3 * H; };
    auto gates_at = [&](int64_t t) {
      return keep_gates ? gates.data_ptr<scalar_t>() + (training ? t : 0) * B * 3 * H : nullptr;
    };
    if (reset_after) {
      Tensor hh = at::empty({B, 3 * H}, opts);        // [B, 3H] W_hh h
      GruForwardStep<scalar_t> step;
      step.H = H;
      step.hh = hh.data_ptr<scalar_t>();
      step.b_hh = b_hh_data;
      step.h = h.data_ptr<scalar_t>();
      forward_loop(T, reverse, 3, h, w, hh, dropout, algo, [&](int64_t t) {
        GruForwardStep<scalar_t> at_t = step;
        at_t.mask = {lengths_ptr(lengths), t};
        at_t.x_proj = x_at(t);
        at_t.y = y.data_ptr<scalar_t>() + t * B * H;
        at_t.gates = gates_at(t);
        at_t.hh_n = training ? hh_n_all.data_ptr<scalar_t>() + t * B * H : nullptr;
        return at_t;
      });
      return;
    }
    [[maybe_unused]] const bool persistent = use_persistent_reset_before(algo, h, H, dropout);
    const Tensor w_rz = w.narrow(0, 0, 2 * H);  // [2H, H]
    const Tensor w_n = w.narrow(0, 2 * H, H);   // [H, H]
    Tensor hh_rz = at::empty({B, 2 * H}, opts);  // [B, 2H] W_h{r,z} h
    Tensor rh = at::empty({B, H}, opts);         // [B, H]  r h
    Tensor hh_n = at::empty({B, H}, opts);       // [B, H]  W_hn (r h)
    GruResetBeforeGatesStep<scalar_t> gates_step;
    gates_step.H = H;
    gates_step.hh_rz = hh_rz.data_ptr<scalar_t>();
    gates_step.b_hh = b_hh_data;
    // r multiplies the state as the GEMMs see it (dropped, with state dropout).
    gates_step.h = dropout.gemm_input(h).data_ptr<scalar_t>();
    gates_step.rh = rh.data_ptr<scalar_t>();
    GruResetBeforeStateStep<scalar_t> state_step;
    state_step.H = H;
    state_step.hh_n = hh_n.data_ptr<scalar_t>();
    state_step.b_hh = b_hh_data;
    state_step.h = h.data_ptr<scalar_t>();
    auto set_time = [&](auto& step, int64_t t) {
      step.mask = {lengths_ptr(lengths), t};
      step.x_proj = x_at(t);
      step.gates = gates_at(t);
    };
#ifdef FUSED_RNN_WITH_CUDA
    if (persistent && persistent_reset_before_forward(
                          algo, T, reverse, h, w, hh_rz, rh, hh_n, [&](int64_t t) {
                            ResetBeforeForwardPair<scalar_t> pair{gates_step, state_step};
                            set_time(pair.first, t);
                            set_time(pair.second, t);
                            pair.second.y = y.data_ptr<scalar_t>() + t * B * H;
                            return pair;
                          })) {
      return;
    }
#endif
    const StepGemm rz_product(w_rz, /*transposed=*/true, T * B);
    const StepGemm n_product(w_n, /*transposed=*/true, T * B);
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = time_at(s, T, reverse);
      rz_product(hh_rz, dropout.gemm_input(h), /*accumulate=*/false);
      set_time(gates_step, t);
      set_time(state_step, t);
      launch_step(gates_step, B, H, device);
      n_product(hh_n, rh, /*accumulate=*/false);
      state_step.y = y.data_ptr<scalar_t>() + t * B * H;
      launch_step(state_step, B, H, device);
    }
  });
  if (!training) gates = absent(x_proj);
  return {y, h, gates, hh_n_all};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_y_in, const Tensor& grad_h_n, const Tensor& y_in, const Tensor& gates_in,
    const Tensor& hh_n_in, const Tensor& h0, const Tensor& w_hh, const OptTensor& lengths,
    const OptTensor& state_mask, bool reverse, bool reset_after, c10::string_view algo_name) {
  const c10::OptionalDeviceGuard guard(at::device_of(gates_in));
  const Algo algo = parse_algo(algo_name);
  const int64_t H = check_sequence_args(gates_in, h0, w_hh, c10::nullopt, lengths, 3, c10::nullopt);
  const int64_t T = gates_in.size(0), B = gates_in.size(1);
  check_like(y_in, "y", {T, B, H}, gates_in);
  check_like(grad_y_in, "grad_y", {T, B, H}, gates_in);
  check_like(grad_h_n, "grad_h_n", {B, H}, gates_in);
  if (reset_after) check_like(hh_n_in, "hh_n", {T, B, H}, gates_in);
  const auto opts = gates_in.options();
  const auto device = gates_in.device();
  const StepInput grad_y = step_input(grad_y_in);  // [T, B, H] (or one step broadcast over T)
  const Tensor gates = gates_in.contiguous();    // [T, B, 3H] r, z, n
  const Tensor y = y_in.contiguous();            // [T, B, H]
  const Tensor h0_c = h0.contiguous();           // [B, H]
  // h_{t-1}: reset_after reads it in place, y at the step before (h0 at the first), as backward
  // reads c_{t-1} from c_all; only a reverse sequence with lengths (a shorter one starts from h0
  // where y is 0) and reset_before (which multiplies whole sequences by it) rebuild it.
  const bool rebuild_prev = !reset_after || (reverse && lengths.has_value());
  const Tensor h_prev =  // [T, B, H] or undefined
      rebuild_prev ? previous_states(y, h0_c, lengths, reverse).contiguous() : Tensor();
  const Tensor w = w_hh.contiguous();            // [3H, H]
  Tensor dh = grad_h_n.contiguous().clone();     // [B, H] carried to the previous step
  StateDropout dropout(state_mask, dh);
  Tensor d_x = sequence_buffer({T, B, 3 * H}, opts);  // [T, B, 3H] d x_proj
  Tensor grad_w_hh, grad_b_hh;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(), "gru_backward", [&] {
    auto at_t = [&](const Tensor& buf, int64_t t, int64_t width) {
      return buf.data_ptr<scalar_t>() + t * B * width;
    };
    auto h_prev_at = [&](int64_t t) -> const scalar_t* {
      if (rebuild_prev) return at_t(h_prev, t, H);
      return t == first_step(T, reverse) ? h0_c.data_ptr<scalar_t>()
                                         : at_t(y, previous_step(t, reverse), H);
    };
    if (reset_after) {
      const Tensor hh_n = hh_n_in.contiguous();    // [T, B, H]
      Tensor d_hh = sequence_buffer({T, B, 3 * H}, opts);  // [T, B, 3H] d (W_hh h + b_hh)
      GruBackwardStep<scalar_t> step;
      step.H = H;
      step.dh = dh.data_ptr<scalar_t>();
      backward_loop(T, reverse, 3, dh, d_hh, w, dropout, algo, [&](int64_t t) {
        GruBackwardStep<scalar_t> step_t = step;
        step_t.mask = {lengths_ptr(lengths), t};
        step_t.grad_y = grad_y.at<scalar_t>(t);
        step_t.gates = at_t(gates, t, 3 * H);
        step_t.hh_n = at_t(hh_n, t, H);
        step_t.h_prev = h_prev_at(t);
        step_t.d_x = at_t(d_x, t, 3 * H);
        step_t.d_hh = at_t(d_hh, t, 3 * H);
        return step_t;
      });
      grad_w_hh = recurrent_weight_gradient(d_hh, y, h0_c, lengths, reverse, dropout);
      grad_b_hh = column_sums(d_hh);
      return;
    }
    [[maybe_unused]] const bool persistent = use_persistent_reset_before(algo, dh, H, dropout);
    const Tensor w_rz = w.narrow(0, 0, 2 * H);  // [2H, H]
    const Tensor w_n = w.narrow(0, 2 * H, H);   // [H, H]
    Tensor d_rh = at::empty({B, H}, opts);         // [B, H] d (r h)
    // The state as the GEMMs and r saw it (h ⊙ mask with state dropout), and its gradient
    // (which is dh itself without dropout).
    const Tensor hd_prev = dropout.apply(h_prev).contiguous();  // [T, B, H]
    Tensor d_hd = dropout.active() ? at::empty_like(dh) : dh;   // [B, H]
    GruResetBeforeBackwardZnStep<scalar_t> zn_step;
    zn_step.H = H;
    zn_step.dh = dh.data_ptr<scalar_t>();
    GruResetBeforeBackwardRStep<scalar_t> r_step;
    r_step.H = H;
    r_step.d_rh = d_rh.data_ptr<scalar_t>();
    r_step.dh = d_hd.data_ptr<scalar_t>();
    auto set_time = [&](int64_t t) {
      zn_step.mask = r_step.mask = {lengths_ptr(lengths), t};
      zn_step.grad_y = grad_y.at<scalar_t>(t);
      zn_step.gates = r_step.gates = at_t(gates, t, 3 * H);
      zn_step.h_prev = at_t(h_prev, t, H);
      r_step.h_prev = at_t(hd_prev, t, H);
      zn_step.d_x = r_step.d_x = at_t(d_x, t, 3 * H);
    };
    // The weight gradients after the loop: W_h{r,z} saw h_{t-1} (⊙ mask); W_hn saw r h_{t-1}
    // (⊙ mask).
    auto weight_gradients = [&] {
      const Tensor rh_all = gates.narrow(2, 0, H) * hd_prev;  // [T, B, H]
      grad_w_hh = at::cat({weight_gradient(d_x.narrow(2, 0, 2 * H).reshape({T * B, 2 * H}), hd_prev.view({T * B, H})),
                           weight_gradient(d_x.narrow(2, 2 * H, H).reshape({T * B, H}), rh_all.view({T * B, H}))},
                          0);
      grad_b_hh = column_sums(d_x);
    };
#ifdef FUSED_RNN_WITH_CUDA
    if (persistent && persistent_reset_before_backward(algo, T, reverse, dh, d_x, w, d_rh,
                                                       [&](int64_t t) {
                                                         set_time(t);
                                                         return ResetBeforeBackwardPair<scalar_t>{
                                                             zn_step, r_step};
                                                       })) {
      weight_gradients();
      return;
    }
#endif
    // d (r h) = d_n · W_hn and dh += d_{r,z} · W_h{r,z}: products with the weights themselves.
    const StepGemm rz_product(w_rz, /*transposed=*/false, T * B);
    const StepGemm n_product(w_n, /*transposed=*/false, T * B);
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = time_at(s, T, reverse);
      set_time(t);
      launch_step(zn_step, B, H, device);
      const Tensor d_x_t = d_x.select(0, t);  // [B, 3H]
      n_product(d_rh, d_x_t.narrow(1, 2 * H, H), /*accumulate=*/false);
      if (dropout.active()) d_hd.zero_();
      launch_step(r_step, B, H, device);
      rz_product(d_hd, d_x_t.narrow(1, 0, 2 * H), /*accumulate=*/true);
      dropout.add_masked(dh, d_hd);
    }
    weight_gradients();
  });
  return {d_x, dh, grad_w_hh, grad_b_hh};
}

}  // namespace fused_rnn
