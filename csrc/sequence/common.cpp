#include "common.h"

#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "../cpu/buffer_pool.h"
#include "gemm.h"

namespace fused_rnn {

Algo parse_algo(c10::string_view name) {
  if (name == "auto") return Algo::kAuto;
  if (name == "stepwise") return Algo::kStepwise;
  TORCH_CHECK_VALUE(name == "persistent",
                    message("fused_rnn: algo must be 'auto', 'stepwise' or 'persistent', got '",
                            std::string(name), "'"));
  return Algo::kPersistent;
}

void check_like(const Tensor& tensor, const char* name, const std::vector<int64_t>& shape,
                const Tensor& x_proj) {
  TORCH_CHECK(tensor.sizes().vec() == shape,
              message("fused_rnn: ", name, " must have shape ", shape, ", got ", tensor.sizes()));
  TORCH_CHECK(tensor.scalar_type() == x_proj.scalar_type(),
              message("fused_rnn: ", name, " has dtype ", tensor.scalar_type(),
                      " but the input has dtype ", x_proj.scalar_type()));
  TORCH_CHECK(tensor.device() == x_proj.device(),
              message("fused_rnn: ", name, " is on ", tensor.device(), " but the input is on ",
                      x_proj.device()));
}

int64_t check_sequence_args(const Tensor& x_proj, const Tensor& h0, const Tensor& w_hh,
                            const OptTensor& b_hh, const OptTensor& lengths, int64_t gates,
                            c10::optional<int64_t> state_size) {
  TORCH_CHECK(x_proj.dim() == 3, message("fused_rnn: x_proj must be 3-D [T, B, ", gates,
                                         "*H], got shape ", x_proj.sizes()));
  TORCH_CHECK(at::isFloatingType(x_proj.scalar_type()),
              message("fused_rnn: x_proj must be a floating-point tensor, got ",
                      x_proj.scalar_type()));
  TORCH_CHECK(x_proj.size(0) > 0, "fused_rnn: the sequence must have at least one time step");
  TORCH_CHECK(x_proj.size(2) % gates == 0,
              message("fused_rnn: x_proj's last dimension (", x_proj.size(2),
                      ") must be a multiple of ", gates, " (gates of this cell)"));
  const int64_t B = x_proj.size(1);
  const int64_t H = x_proj.size(2) / gates;
  const int64_t P = state_size.value_or(H);
  check_like(h0, "h0", {B, P}, x_proj);
  check_like(w_hh, "w_hh", {gates * H, P}, x_proj);
  if (b_hh.has_value()) check_like(*b_hh, "b_hh", {gates * H}, x_proj);
  if (lengths.has_value()) {
    const Tensor& len = *lengths;
    TORCH_CHECK(len.scalar_type() == at::kLong,
                message("fused_rnn: lengths must be int64, got ", len.scalar_type()));
    TORCH_CHECK(len.dim() == 1 && len.size(0) == B,
                message("fused_rnn: lengths must have shape [", B,
                        "] (one entry per sequence), got ", len.sizes()));
    TORCH_CHECK(len.device() == x_proj.device(),
                message("fused_rnn: lengths is on ", len.device(), " but the input is on ",
                        x_proj.device()));
    TORCH_CHECK(len.is_contiguous(), "fused_rnn: lengths must be contiguous");
    if (len.device().is_cpu() && B > 0) {
      // On the GPU this check would cost a host synchronisation; fused_rnn.functional checks
      // the values before moving lengths to the device.
      const auto bounds = at::aminmax(len);
      const int64_t low = std::get<0>(bounds).item<int64_t>();
      const int64_t high = std::get<1>(bounds).item<int64_t>();
      TORCH_CHECK(low >= 0 && high <= x_proj.size(0),
                  message("fused_rnn: lengths must lie in [0, T=", x_proj.size(0),
                          "], got values in [", low, ", ", high, "]"));
    }
  }
  return H;
}

namespace {
// FUSED_RNN_CPU_BUFFER_POOL=0 turns the CPU pool off: sequence buffers then come from
// at::empty like every other tensor, so torch's profiler (profile_memory) sees and accounts
// them, as the CUDA caching allocator's statistics do on the GPU (tests/test_backward_memory.py).
bool cpu_pool_enabled() {
  const char* value = std::getenv("FUSED_RNN_CPU_BUFFER_POOL");
  return value == nullptr || std::string(value) != "0";
}
}  // namespace

Tensor sequence_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return options.device().is_cpu() && cpu_pool_enabled() ? cpu::pooled_empty(sizes, options)
                                                         : at::empty(sizes, options);
}

Tensor column_sums(const Tensor& d_pre) {
  const int64_t N = d_pre.size(-1);
  const auto acc = at::toOpMathType(d_pre.scalar_type());
  if (N == 0 || (d_pre.is_cpu() && acc != d_pre.scalar_type())) {
    // The CPU reduction never stages partial sums, and it accumulates half types in float
    // anyway, whereas asking it for a float result would first copy all of d_pre to float.
    std::vector<int64_t> dims(d_pre.dim() - 1);
    for (int64_t d = 0; d + 1 < d_pre.dim(); ++d) dims[d] = d;
    return d_pre.sum(dims);
  }
  Tensor rows = d_pre.reshape({-1, N});  // [R, N] (a view: the callers' d_pre are contiguous)
  // Each pass sums groups of kColumnSumRows rows (and the leftover rows) into one row each.
  while (rows.size(0) > kColumnSumRows) {
    const int64_t R = rows.size(0), whole = R / kColumnSumRows * kColumnSumRows;
    Tensor sums = rows.narrow(0, 0, whole)
                      .reshape({whole / kColumnSumRows, kColumnSumRows, N})
                      .sum(1, /*keepdim=*/false, acc);
    if (whole < R) {
      sums = at::cat({sums, rows.narrow(0, whole, R - whole).sum(0, /*keepdim=*/true, acc)}, 0);
    }
    rows = sums;
  }
  return rows.sum(0, /*keepdim=*/false, acc).to(d_pre.scalar_type());
}

StepInput step_input(const Tensor& sequence) {
  const int64_t step_numel = sequence.numel() / std::max<int64_t>(sequence.size(0), 1);
  if (sequence.is_contiguous()) return {sequence, step_numel};
  if (sequence.stride(0) == 0) return {sequence.select(0, 0).contiguous(), 0};
  return {sequence.contiguous(), step_numel};
}

Tensor previous_states(const Tensor& states, const Tensor& initial, const OptTensor& lengths,
                       bool reverse) {
  const int64_t T = states.size(0);
  const Tensor first = initial.unsqueeze(0);
  Tensor prev = sequence_buffer(states.sizes(), states.options());  // [T, B, X]
  if (T == 0) return prev;
  // forward: [initial, states[0 : T-1]]; reverse: [states[1 : T], initial]
  prev.select(0, first_step(T, reverse)).copy_(initial);
  later_steps(prev, reverse).copy_(their_previous_steps(states, reverse));
  if (!reverse) return prev;
  if (lengths.has_value()) {
    // Sequence b starts (in reverse) at t = lengths[b]-1, from the initial state.
    const Tensor next_t = at::arange(1, T + 1, lengths->options()).unsqueeze(1);  // [T, 1]
    const Tensor starts_here = (next_t >= lengths->unsqueeze(0)).unsqueeze(2);  // [T, B, 1]
    prev = at::where(starts_here, first, prev);
  }
  return prev;
}

Tensor recurrent_weight_gradient(const Tensor& d_pre, const Tensor& states, const Tensor& initial,
                                 const OptTensor& lengths, bool reverse,
                                 const StateDropout& dropout) {
  const int64_t T = d_pre.size(0), B = d_pre.size(1), N = d_pre.size(2), P = states.size(2);
  const Tensor d_flat = d_pre.reshape({T * B, N});
  if (dropout.active()) {
    const Tensor prev = dropout.apply(previous_states(states, initial, lengths, reverse));
    return weight_gradient(d_flat, prev.reshape({T * B, P}));
  }
  const Tensor d_first = d_pre.select(0, first_step(T, reverse));  // [B, N], from `initial`
  if (T == 1) return weight_gradient(d_first, initial);
  const Tensor d_later = later_steps(d_pre, reverse).reshape({(T - 1) * B, N});
  const Tensor prev = their_previous_steps(states, reverse).reshape({(T - 1) * B, P});
  Tensor grad = weight_gradient(d_later, prev);  // [N, P]
  // The B-row corrections accumulate in place: a second [N, P] product would be a temporary.
  grad.addmm_(d_first.t(), initial);
  if (reverse && lengths.has_value()) {
    // A sequence of length L in [1, T) starts at t = L-1 from `initial`, where states[L] is 0.
    const Tensor start = (*lengths - 1).clamp(0, T - 1);                      // [B]
    const Tensor rows = start * B + at::arange(B, lengths->options());         // [B] in d_flat
    const Tensor shorter = ((*lengths >= 1) & (*lengths < T)).unsqueeze(1);   // [B, 1]
    const Tensor d_start = d_flat.index_select(0, rows) * shorter.to(d_pre.scalar_type());
    grad.addmm_(d_start.t(), initial);
  }
  return grad;
}

StateDropout::StateDropout(const OptTensor& mask, const Tensor& state) {
  if (!mask.has_value()) return;
  check_like(*mask, "state_mask", state.sizes().vec(), state);
  mask_ = mask->contiguous();
  dropped_ = at::empty_like(state);
  grad_ = at::empty_like(state);
}

const Tensor& StateDropout::gemm_input(const Tensor& h) {
  if (!active()) return h;
  at::mul_out(dropped_, h, mask_);
  return dropped_;
}

void StateDropout::backprop(Tensor& dh, const Tensor& d_pre, const StepGemm& w) {
  if (!active()) return w(dh, d_pre, /*accumulate=*/true);
  w(grad_, d_pre, /*accumulate=*/false);
  dh.addcmul_(grad_, mask_);
}

void StateDropout::add_masked(Tensor& dh, const Tensor& grad) const {
  if (active()) dh.addcmul_(grad, mask_);
}

Tensor StateDropout::apply(const Tensor& states) const {
  return active() ? states * mask_ : states;
}

}  // namespace fused_rnn
