// Host side of the persistent recurrence (fused_rnn/persistent.h): which algorithm a sequence
// runs with, and the CUDA launch — the per-step structs copied to the device once, one
// cooperative kernel for the whole loop.
#pragma once

#include <ATen/ATen.h>
#ifdef FUSED_RNN_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../cpu/recurrence.h"
#include "common.h"
#include "fused_rnn/persistent.h"

namespace fused_rnn {

#ifdef FUSED_RNN_WITH_CUDA
// Kernel variants chosen by an environment variable: "1" runs them wherever they fit, "0" never
// (the grid kernel with FFMA runs instead), "require" raises where they do not fit, so that a
// check of a variant (the smoke test, the sanitizers) cannot pass on another kernel unnoticed;
// unset means `unset`. Read on every call: tests switch them with monkeypatch.
//   FUSED_RNN_PERSISTENT_CLUSTER  the one-cluster forward (fused_rnn/persistent.h); experimental,
//                                 off unless asked for
//   FUSED_RNN_PERSISTENT_MMA      tensor cores for float16/bfloat16 (cuda/persistent_products.cuh);
//                                 on by default
enum class Experiment { kNo, kWhereItFits, kRequired };
inline Experiment experiment_requested(const char* variable, Experiment unset = Experiment::kNo) {
  const char* value = std::getenv(variable);
  if (value == nullptr) return unset;
  if (std::strcmp(value, "1") == 0) return Experiment::kWhereItFits;
  if (std::strcmp(value, "require") == 0) return Experiment::kRequired;
  return Experiment::kNo;
}

// Whether the persistent kernels multiply on tensor cores: half types, unless
// FUSED_RNN_PERSISTENT_MMA=0 (plan_grid below falls back to FFMA where their plan does not fit).
inline bool persistent_uses_tensor_cores(const Tensor& state) {
  return is_half_type(state) && experiment_requested("FUSED_RNN_PERSISTENT_MMA", Experiment::kWhereItFits) !=
                     Experiment::kNo;
}

// Where `auto` takes the persistent CUDA kernel (if its plan then fits): while the multiply-adds
// one block does per step, B * gates * units * H, stay at most these. Past them, one block's
// products from shared memory lose to the stepwise path's GEMM despite that path's two launches
// a step; against the stepwise loop replayed from graphs (the half types' default) the tensor
// cores' limit is lower, since replay removes most of that path's launch cost. The runs behind
// each limit: docs/persistent.md ("Choosing" and the measured sections).
constexpr int64_t kAutoPersistentMaxWork = 400 * 1000;
constexpr int64_t kAutoPersistentMaxWorkTensorCores = 1800 * 1000;
constexpr int64_t kAutoPersistentMaxWorkAgainstGraphs = 200 * 1000;

// `stepwise_graphed()`: whether this call's stepwise loop would run from a graph
// (graphed_loop_will_replay), asked only where the answer matters (tensor cores, work between
// the two limits). Where it would not (a key's first call; a graph cache full of loops in use:
// more keys in rotation than it holds, such as many sequence lengths), the eager loop's limit
// applies.
template <class StepwiseGraphed>
bool auto_picks_persistent_on_cuda(const Tensor& state, int64_t H, int64_t gates,
                                   const StepwiseGraphed& stepwise_graphed) {
  int multiprocessors = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount,
                                        state.device().index()));
  const int64_t work = state.size(0) * gates * persistent_units_per_block(H, multiprocessors) * H;
  if (!persistent_uses_tensor_cores(state)) return work <= kAutoPersistentMaxWork;
  if (work <= kAutoPersistentMaxWorkAgainstGraphs) return true;
  return work <= kAutoPersistentMaxWorkTensorCores && !stepwise_graphed();
}
#endif

// Why the persistent algorithm cannot run a sequence with state [B, P], hidden size H and
// `dropout`, or nullptr when it can (CUDA: as far as these go; the kernel's plan then checks
// that W_hh's slices fit in shared memory).
inline const char* persistent_unavailable(const Tensor& state, int64_t H,
                                          const StateDropout& dropout) {
  if (dropout.active()) return "recurrent-state dropout";
  if (state.size(1) != H) return "an LSTM projection (proj_size)";
  if (state.is_cuda()) return nullptr;
  if (!state.is_cpu()) return "this device";
  if (state.scalar_type() != at::kFloat) return "a dtype other than float32 on the CPU";
  if (!cpu::recurrence_supported(H)) {
    return "a CPU without AVX2 + FMA or a hidden_size that is not a multiple of 16";
  }
  return nullptr;
}

// Raises when algo='persistent' asks for what the persistent algorithm cannot do (`reason`).
inline void require_not_persistent(Algo algo, const char* reason) {
  TORCH_CHECK_VALUE(algo != Algo::kPersistent,
                    message("fused_rnn: algo='persistent' cannot run ", reason,
                            "; use algo='auto' or 'stepwise'"));
}

// Whether the reset_before GRU runs as one persistent kernel (two products and two grid
// barriers a step): only on CUDA, and only where algo='persistent' asks for it; `auto` keeps
// the stepwise loop until the kernel has been measured. Raises for algo='persistent' where it
// cannot run.
inline bool use_persistent_reset_before(Algo algo, const Tensor& state, int64_t H,
                                        const StateDropout& dropout) {
  if (algo != Algo::kPersistent) return false;
  if (!state.is_cuda()) require_not_persistent(algo, "the reset_before GRU off CUDA");
  if (const char* reason = persistent_unavailable(state, H, dropout)) {
    require_not_persistent(algo, reason);
  }
  return true;
}

#ifdef FUSED_RNN_WITH_CUDA
// Whether the persistent kernel may run now; raises for algo='persistent' when not. Checked
// before planning (which calls the CUDA runtime): under graph capture the steps' host-to-device
// copy would be replayed from a pinned buffer that is reused meanwhile.
inline bool persistent_allowed_now(Algo algo) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(), &capture));
  if (capture == cudaStreamCaptureStatusNone) return true;
  require_not_persistent(algo, "inside CUDA graph capture");
  return false;
}

// The grid kernel's plan from plan_for(tensor_cores): on tensor cores for float16/bfloat16
// unless FUSED_RNN_PERSISTENT_MMA=0 (several times faster than FFMA: docs/persistent.md), else
// with FFMA.
template <typename scalar_t, class PlanFor>
PersistentPlan plan_grid(const PlanFor& plan_for, int64_t B, int64_t H) {
  const Experiment mma = experiment_requested("FUSED_RNN_PERSISTENT_MMA", Experiment::kWhereItFits);
  if (kHasTensorCoreProduct<scalar_t> && mma != Experiment::kNo) {
    const PersistentPlan plan = plan_for(true);
    if (plan.blocks > 0) return plan;
    TORCH_CHECK(mma != Experiment::kRequired,
                message("fused_rnn: FUSED_RNN_PERSISTENT_MMA=require, but the tensor-core kernel "
                        "does not run B=", B, ", H=", H, " on this GPU"));
  }
  return plan_for(false);
}

// Whether `plan` can run; raises for algo='persistent' when not.
inline bool plan_fits(Algo algo, const PersistentPlan& plan) {
  if (plan.blocks > 0) return true;
  require_not_persistent(algo, "this shape on this GPU (W_hh's slices do not fit in shared "
                               "memory with every block resident)");
  return false;
}

// The T steps' structs (plain pointers and sizes), step_of(s) for loop index s = 0 .. T-1, in
// device memory, copied on the current stream from pinned memory (the caching host allocator
// keeps that alive until the copy has run).
template <class StepOf>
Tensor steps_on_device(int64_t T, const StepOf& step_of, const c10::Device& device) {
  std::vector<decltype(step_of(int64_t{0}))> steps;
  steps.reserve(T);
  for (int64_t s = 0; s < T; ++s) steps.push_back(step_of(s));
  return pinned_copy(steps).to(device, /*non_blocking=*/true);
}

// The forward loop as one persistent kernel. Returns whether it ran; when it cannot run here it
// does nothing (algo='persistent': raises). h [B, H] the state (h_0 in, h_T out);
// w [gates*H, H]; hh [B, gates*H].
template <class StepAt>
bool persistent_forward(Algo algo, int64_t T, bool reverse, int64_t gates, const Tensor& h,
                        const Tensor& w, const Tensor& hh, const StepAt& step_at) {
  using Step = decltype(step_at(int64_t{0}));
  using scalar_t = typename Step::scalar_type;
  const int64_t B = h.size(0), H = h.size(1);
  if (B == 0 || T == 0) return true;  // nothing to compute (the kernels read steps[0])
  if (!persistent_allowed_now(algo)) return false;
  PersistentPlan plan;
  const Experiment cluster = experiment_requested("FUSED_RNN_PERSISTENT_CLUSTER");
  if (cluster != Experiment::kNo) plan = plan_persistent_cluster_forward<Step>(B, H, gates);
  TORCH_CHECK(plan.blocks > 0 || cluster != Experiment::kRequired,
              message("fused_rnn: FUSED_RNN_PERSISTENT_CLUSTER=require, but the cluster forward "
                      "does not run B=", B, ", H=", H, ", gates=", gates, " on this GPU"));
  if (plan.blocks == 0) {
    plan = plan_grid<scalar_t>(
        [&](bool tensor_cores) { return plan_persistent_forward<Step>(B, H, gates, tensor_cores); },
        B, H);
  }
  if (!plan_fits(algo, plan)) return false;
  const Tensor other = at::empty_like(h);  // [B, H] the state of every other step
  scalar_t* state[2] = {h.data_ptr<scalar_t>(), other.data_ptr<scalar_t>()};
  const Tensor steps_device = steps_on_device(T, [&](int64_t s) {
    Step step = step_at(time_at(s, T, reverse));
    step.h = state[(s + 1) % 2];
    return step;
  }, h.device());
  PersistentForwardArgs<Step> args;
  args.steps = static_cast<const Step*>(steps_device.data_ptr());
  args.w_hh = w.data_ptr<scalar_t>();
  args.state[0] = state[0];
  args.state[1] = state[1];
  args.hh = hh.data_ptr<scalar_t>();
  args.T = T;
  args.B = B;
  args.H = H;
  args.gates = gates;
  launch_persistent_forward(args, plan);
  // The grid kernel left h_T in the second buffer after an odd number of steps; the cluster
  // kernel writes it to h itself.
  if (!plan.cluster && T % 2 == 1) h.copy_(other);
  return true;
}

// The backward loop as one persistent kernel; returns as persistent_forward. dh [B, H];
// d_pre [T, B, gates*H] (what the steps write and W_hh multiplies); w [gates*H, H].
template <class StepAt>
bool persistent_backward(Algo algo, int64_t T, bool reverse, int64_t gates, const Tensor& dh,
                         const Tensor& d_pre, const Tensor& w, const StepAt& step_at) {
  using Step = decltype(step_at(int64_t{0}));
  using scalar_t = typename Step::scalar_type;
  const int64_t B = dh.size(0), H = dh.size(1);
  if (B == 0 || T == 0) return true;
  if (!persistent_allowed_now(algo)) return false;
  const PersistentPlan plan = plan_grid<scalar_t>(
      [&](bool tensor_cores) { return plan_persistent_backward<Step>(B, H, gates, tensor_cores); },
      B, H);
  if (!plan_fits(algo, plan)) return false;
  const Tensor steps_device = steps_on_device(
      T, [&](int64_t i) { return step_at(time_at(T - 1 - i, T, reverse)); }, dh.device());
  PersistentBackwardArgs<Step> args;
  args.steps = static_cast<const Step*>(steps_device.data_ptr());
  args.w_hh = w.data_ptr<scalar_t>();
  args.d_pre = d_pre.data_ptr<scalar_t>();
  args.dh = dh.data_ptr<scalar_t>();
  args.T = T;
  args.B = B;
  args.H = H;
  args.gates = gates;
  args.reverse = reverse;
  launch_persistent_backward(args, plan);
  return true;
}

// The reset_before GRU's forward as one persistent kernel; returns as persistent_forward.
// h [B, H] the state (h_0 in, h_T out); w [3H, H]; hh_rz [B, 2H], rh [B, H], hh_n [B, H] the
// buffers between its phases, which the pairs from pair_at(t) already point at (and at h).
template <class PairAt>
bool persistent_reset_before_forward(Algo algo, int64_t T, bool reverse, const Tensor& h,
                                     const Tensor& w, const Tensor& hh_rz, const Tensor& rh,
                                     const Tensor& hh_n, const PairAt& pair_at) {
  using Pair = decltype(pair_at(int64_t{0}));
  using scalar_t = typename Pair::scalar_type;
  const int64_t B = h.size(0), H = h.size(1);
  if (B == 0 || T == 0) return true;
  if (!persistent_allowed_now(algo)) return false;
  const PersistentPlan plan = plan_grid<scalar_t>(
      [&](bool tensor_cores) { return plan_reset_before_forward<Pair>(B, H, tensor_cores); }, B, H);
  if (!plan_fits(algo, plan)) return false;
  const Tensor steps_device = steps_on_device(
      T, [&](int64_t s) { return pair_at(time_at(s, T, reverse)); }, h.device());
  PersistentResetBeforeForwardArgs<Pair> args;
  args.steps = static_cast<const Pair*>(steps_device.data_ptr());
  args.w_hh = w.data_ptr<scalar_t>();
  args.h = h.data_ptr<scalar_t>();
  args.hh_rz = hh_rz.data_ptr<scalar_t>();
  args.rh = rh.data_ptr<scalar_t>();
  args.hh_n = hh_n.data_ptr<scalar_t>();
  args.T = T;
  args.B = B;
  args.H = H;
  launch_reset_before_forward(args, plan);
  return true;
}

// The reset_before GRU's backward as one persistent kernel; returns as persistent_forward.
// dh [B, H]; d_x [T, B, 3H] (what the steps write and W multiplies); w [3H, H]; d_rh [B, H]
// the buffer between the phases, which the pairs from pair_at(t) already point at (and at dh).
template <class PairAt>
bool persistent_reset_before_backward(Algo algo, int64_t T, bool reverse, const Tensor& dh,
                                      const Tensor& d_x, const Tensor& w, const Tensor& d_rh,
                                      const PairAt& pair_at) {
  using Pair = decltype(pair_at(int64_t{0}));
  using scalar_t = typename Pair::scalar_type;
  const int64_t B = dh.size(0), H = dh.size(1);
  if (B == 0 || T == 0) return true;
  if (!persistent_allowed_now(algo)) return false;
  const PersistentPlan plan = plan_grid<scalar_t>(
      [&](bool tensor_cores) { return plan_reset_before_backward<Pair>(B, H, tensor_cores); }, B, H);
  if (!plan_fits(algo, plan)) return false;
  const Tensor steps_device = steps_on_device(
      T, [&](int64_t i) { return pair_at(time_at(T - 1 - i, T, reverse)); }, dh.device());
  PersistentResetBeforeBackwardArgs<Pair> args;
  args.steps = static_cast<const Pair*>(steps_device.data_ptr());
  args.w_hh = w.data_ptr<scalar_t>();
  args.d_x = d_x.data_ptr<scalar_t>();
  args.d_rh = d_rh.data_ptr<scalar_t>();
  args.dh = dh.data_ptr<scalar_t>();
  args.T = T;
  args.B = B;
  args.H = H;
  args.reverse = reverse;
  launch_reset_before_backward(args, plan);
  return true;
}
#endif

}  // namespace fused_rnn
