// Shared pieces of the time loops: argument checks, the recurrent GEMM, and the reconstruction
// of the previous-state sequence that backward needs for the weight gradients.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "fused_rnn/check_message.h"
#include "fused_rnn/persistent.h"

namespace fused_rnn {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

// The ops' `algo` argument: "auto", "stepwise" or "persistent"; anything else raises.
Algo parse_algo(c10::string_view name);

// The time index processed at loop step s (forward: s; reverse: T-1-s).
inline int64_t time_at(int64_t s, int64_t steps, bool reverse) {
  return reverse ? steps - 1 - s : s;
}

// Pointer to lengths' data, or nullptr when every sequence has length T.
inline const int64_t* lengths_ptr(const OptTensor& lengths) {
  return lengths.has_value() ? lengths->data_ptr<int64_t>() : nullptr;
}

// Checks the common arguments of a sequence op and returns the hidden size H:
//   x_proj [T, B, gates*H], h0 [B, P], w_hh [gates*H, P], b_hh [gates*H] (optional),
//   lengths [B] int64 on x_proj's device (optional). `state_size` is P (H without projection).
int64_t check_sequence_args(const Tensor& x_proj, const Tensor& h0, const Tensor& w_hh,
                            const OptTensor& b_hh, const OptTensor& lengths, int64_t gates,
                            c10::optional<int64_t> state_size);

// Checks that `tensor` (named `name`) has exactly `shape`, x_proj's dtype and device.
void check_like(const Tensor& tensor, const char* name, const std::vector<int64_t>& shape,
                const Tensor& x_proj);

// The state each step started from, [T, B, X], given the per-step states or outputs `states`
// [T, B, X] (outputs are 0 where masked) and the initial state [B, X]:
//   forward: prev[t] = states[t-1] (initial at t = 0);
//   reverse: prev[t] = states[t+1], or initial where t+1 >= lengths[b] (or t = T-1).
Tensor previous_states(const Tensor& states, const Tensor& initial, const OptTensor& lengths,
                       bool reverse);

// The step that starts from the initial state (forward: 0, reverse: T-1) and, for every other
// step t, the step whose state it starts from: t-1 (reverse: t+1). Per-row boundaries from
// lengths aside, the previous-state sequence is [initial, states[0 : T-1]] in forward order.
inline int64_t first_step(int64_t T, bool reverse) { return reverse ? T - 1 : 0; }
inline int64_t previous_step(int64_t t, bool reverse) { return reverse ? t + 1 : t - 1; }
// Of a sequence [T, ...], T >= 1: every step but the first, and (aligned with those) the steps
// they start from (both empty when T == 1).
inline Tensor later_steps(const Tensor& sequence, bool reverse) {
  return sequence.narrow(0, reverse ? 0 : 1, sequence.size(0) - 1);
}
inline Tensor their_previous_steps(const Tensor& sequence, bool reverse) {
  return sequence.narrow(0, reverse ? 1 : 0, sequence.size(0) - 1);
}

// Σ of `d_pre` [..., N] over every dimension but the last -> [N] in d_pre's dtype, accumulated
// in its op-math type (float for half types): the bias and peephole gradients. Not one at::sum
// over all T·B rows: CUDA's reduction splits that many rows per output across blocks and stages
// their partial sums in a temporary of 4 · N · blocks · 128 bytes, which for LSTM `mid` (N = 2048,
// 100 blocks) is 100 MiB, twice the saved gates; passes of at most kColumnSumRows rows per
// output never split.
Tensor column_sums(const Tensor& d_pre);
constexpr int64_t kColumnSumRows = 256;

// A sequence [T, B, X] that a loop reads one step at a time (backward's grad_y): `data` itself
// when contiguous; when it is broadcast over time (stride 0 in T, as the gradient of y.sum(),
// one value expanded to y's shape) one [B, X] step that every t reads instead of T copies of
// it; otherwise a contiguous copy.
struct StepInput {
  Tensor data;
  int64_t step_numel;  // elements between steps: B·X, or 0 when every step reads the same rows
  template <typename scalar_t>
  const scalar_t* at(int64_t t) const {
    return data.data_ptr<scalar_t>() + t * step_numel;
  }
};
StepInput step_input(const Tensor& sequence);

class StateDropout;
class StepGemm;

// The recurrent weight's gradient Σ_t d_pre[t]ᵀ · prev[t] -> [N, P], with prev =
// previous_states(states, initial, lengths, reverse) (⊙ the dropout mask), without building prev
// unless there is dropout: d_pre is 0 at masked rows, so only valid steps count, and there prev
// is the shifted `states` except at a reverse sequence's first step (where it is `initial`).
// d_pre [T, B, N]; states [T, B, P] contiguous (0 where masked); initial [B, P].
Tensor recurrent_weight_gradient(const Tensor& d_pre, const Tensor& states, const Tensor& initial,
                                 const OptTensor& lengths, bool reverse,
                                 const StateDropout& dropout);

// The data of an optional tensor made contiguous (kept alive by `holder`), or nullptr.
template <typename scalar_t>
const scalar_t* optional_data(const OptTensor& tensor, Tensor& holder) {
  if (!tensor.has_value()) return nullptr;
  holder = tensor->contiguous();
  return holder.data_ptr<scalar_t>();
}

// Recurrent-state dropout (variational): the recurrent GEMMs read h ⊙ mask instead of h, with
// one mask [B, P] (0 or 1/(1-p)) for the whole sequence; the state itself is not dropped.
// Without a mask every method is the identity, so the loops read the same either way.
class StateDropout {
 public:
  StateDropout(const OptTensor& mask, const Tensor& state);  // state: [B, P], for shape and dtype
  bool active() const { return mask_.defined(); }
  // Forward: the GEMM's input for state h [B, P] (h itself when inactive).
  const Tensor& gemm_input(const Tensor& h);
  // Backward: dh [B, P] += (d_pre [B, N] · w [N, P]) ⊙ mask (w as a StepGemm, not transposed).
  void backprop(Tensor& dh, const Tensor& d_pre, const StepGemm& w);
  // Backward: dh [B, P] += grad [B, P] ⊙ mask, grad being the gradient w.r.t. the GEMMs' input
  // (nothing to do when inactive: then callers accumulate into dh directly).
  void add_masked(Tensor& dh, const Tensor& grad) const;
  // Backward, weight gradients: states [T, B, P] ⊙ mask.
  Tensor apply(const Tensor& states) const;

 private:
  Tensor mask_;     // [B, P] or undefined
  Tensor dropped_;  // [B, P] h ⊙ mask
  Tensor grad_;     // [B, P] d_pre · w, before the mask
};

// The bytes of `items` (plain structs: the steps a CUDA kernel reads from device memory) in
// pinned host memory, for an asynchronous copy to the device; the caching host allocator keeps
// the buffer alive until that copy has run.
template <class Item>
Tensor pinned_copy(const std::vector<Item>& items) {
  static_assert(std::is_trivially_copyable_v<Item>, "a step must be a plain struct");
  const int64_t bytes = static_cast<int64_t>(items.size() * sizeof(Item));
  Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), items.data(), bytes);
  return host;
}

// A sequence-sized buffer (at::empty; on the CPU, large ones are reused: cpu/buffer_pool.h).
Tensor sequence_buffer(at::IntArrayRef sizes, const at::TensorOptions& options);

// Empty placeholder returned for outputs that do not apply (inference, no peepholes, ...).
inline Tensor absent(const Tensor& like) { return at::empty({0}, like.options()); }

// float16 or bfloat16: the types with tensor-core products and cuBLASLt step GEMMs.
inline bool is_half_type(const Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

}  // namespace fused_rnn
