// The time loop the cells share: per step the recurrent GEMM and the cell's fused pointwise
// step (cell_steps.h), forward and backward, by one of two algorithms (`algo`,
// fused_rnn/persistent.h):
//   persistent: on CUDA one cooperative kernel for the whole loop (persistent_loop.h); on a CPU
//               with AVX2 + FMA (float, sizes multiples of 16) the packed, threaded recurrence
//               (csrc/cpu/recurrence.h);
//   stepwise:   one GEMM (gemm.h StepGemm) and one launch_step per time step, for everything
//               else; on CUDA, for half types, both loops are replayed from CUDA graphs
//               (graphed_loop.h; FUSED_RNN_STEPWISE_GRAPHS=0 turns that off).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../cpu/recurrence.h"
#include "common.h"
#include "fused_rnn/launch.h"
#include "gemm.h"
#include "graphed_loop.h"
#include "persistent_loop.h"

namespace fused_rnn {

// Whether the persistent algorithm runs a sequence of T steps with state [B, P], hidden size H
// and `gates` gates; raises for algo='persistent' where it cannot. `auto` takes it on the CPU
// wherever it can run and the sequence has T·B >= kMinRowsToPack rows (it packs W_hh: a cell
// called once per token does better with ATen's GEMM), on CUDA for the shapes
// auto_picks_persistent_on_cuda names (the kernel's plan may still decline the shape), given
// stepwise_graphed(): whether the stepwise loop of this call would run from a graph.
template <class StepwiseGraphed>
bool use_persistent(Algo algo, int64_t T, const Tensor& state, int64_t H, int64_t gates,
                    const StateDropout& dropout, const StepwiseGraphed& stepwise_graphed) {
  if (algo == Algo::kStepwise) return false;
  if (const char* reason = persistent_unavailable(state, H, dropout)) {
    require_not_persistent(algo, reason);
    return false;
  }
  if (algo == Algo::kPersistent) return true;
  if (state.is_cpu()) return T * state.size(0) >= kMinRowsToPack;
#ifdef FUSED_RNN_WITH_CUDA
  return auto_picks_persistent_on_cuda(state, H, gates, stepwise_graphed);
#else
  (void)stepwise_graphed;
  return false;
#endif
}

// Forward over steps s = 0 .. T-1 (time t = time_at(s, T, reverse)):
//   hh = h · W_hhᵀ, then step_at(t) over [B, H], which updates h in place.
// h [B, P] state; w [gates*H, P]; hh [B, gates*H]; step_at(t) returns the step for time t, whose
// member `h` points at h (the packed recurrence redirects it) and `x_proj` at its [B, gates*H]
// input rows (which the packed recurrence prefetches a step ahead).
template <class StepAt>
void forward_loop(int64_t T, bool reverse, int64_t gates, const Tensor& h, const Tensor& w,
                  const Tensor& hh, StateDropout& dropout, Algo algo, const StepAt& step_at) {
  const int64_t B = h.size(0), P = h.size(1), H = w.size(0) / gates;
  using Step = decltype(step_at(int64_t{0}));
  const bool persistent = use_persistent(algo, T, h, H, gates, dropout, [&] {
#ifdef FUSED_RNN_WITH_CUDA
    return graphed_loop_will_replay<Step>(T, h, H, dropout, forward_loop_shape(T, h, H, w));
#else
    return false;
#endif
  });
#ifdef FUSED_RNN_WITH_CUDA
  if (persistent && h.is_cuda() && persistent_forward(algo, T, reverse, gates, h, w, hh, step_at)) {
    return;
  }
  // The stepwise loop from a captured CUDA graph (half types, by default; graphed_loop.h).
  if (graphed_forward(T, reverse, h, w, H, dropout, step_at)) return;
#endif
  if constexpr (std::is_same_v<typename Step::scalar_type, float>) {
    if (persistent && h.is_cpu()) {
      const cpu::PackedMatrix packed = cpu::pack_for_forward(w.data_ptr<float>(), gates, H, P);
      const int64_t units = cpu::units_per_panel(gates, /*forward=*/true);
      // The state alternates between h and a scratch copy: step s reads state[s % 2] (all of
      // it, in the GEMM) and writes its own units of state[(s + 1) % 2], so no thread overwrites
      // a state that another still multiplies, and one barrier a step suffices.
      const Tensor scratch = sequence_buffer({B, P}, h.options());
      float* const state[2] = {h.data_ptr<float>(), scratch.data_ptr<float>()};
      float* hh_data = hh.data_ptr<float>();
      // Prefetching the next step's x_proj into L1 pays while a thread's share of it fits there.
      // Measured on the 2-core AMD EPYC (48 KiB L1), LSTM recurrence: small_batch (32 KiB a
      // thread) 6.25 ms with it against 6.6 without; mid (256 KiB) 33.6 with it against 31.9
      // without: there the hardware prefetcher keeps up, and the burst of prefetches evicts
      // the GEMM's data.
      const cpu::RecurrenceSplit split = cpu::recurrence_split(B, packed.panels(), packed.bytes());
      const bool prefetch_x_proj = B * gates * H * int64_t{sizeof(float)} / split.workers <= 32 * 1024;
      cpu::run_recurrence(T, B, packed.panels(), split, [&](int64_t s, const cpu::Share& share) {
        const float* h_prev = state[s % 2];
        float* h_next = state[(s + 1) % 2];
        const int64_t j0 = share.p0 * units, j1 = std::min(share.p1 * units, H);
        const int64_t b0 = share.b0, b1 = share.b1;
        if (s + 1 < T && prefetch_x_proj) {
          // The next step's x_proj [B, gates*H] entries of this share, into cache while the
          // GEMM runs: the step would otherwise wait on memory for them.
          const float* x_next = step_at(time_at(s + 1, T, reverse)).x_proj;
          for (int64_t b = b0; b < b1; ++b) {
            for (int64_t g = 0; g < gates; ++g) {
              for (int64_t j = j0; j < j1; j += 16) {
                __builtin_prefetch(x_next + (b * gates + g) * H + j);
              }
            }
          }
        }
        cpu::packed_gemm(h_prev + b0 * P, P, 1, b1 - b0, packed, share.p0, share.p1,
                         hh_data + b0 * gates * H, gates * H, false);
        // The step updates its units in place: masked rows keep them, and GRU reads them.
        for (int64_t b = b0; b < b1; ++b) {
          std::copy(h_prev + b * P + j0, h_prev + b * P + j1, h_next + b * P + j0);
        }
        Step step = step_at(time_at(s, T, reverse));
        step.h = h_next;
        run_cpu_block(step, b0, b1, j0, j1);
      });
      if (T % 2 == 1) h.copy_(scratch);
      return;
    }
  }
  const StepGemm recurrent(w, /*transposed=*/true, T * B);
  for (int64_t s = 0; s < T; ++s) {
    recurrent(hh, dropout.gemm_input(h), /*accumulate=*/false);
    launch_step(step_at(time_at(s, T, reverse)), B, H, h.device());
  }
}

// Backward over steps s = T-1 .. 0: step_at(t) over [B, H], which writes d_pre[t] and leaves in
// dh the part of d h_{t-1} that bypasses W_hh; then dh += d_pre[t] · W_hh (through the dropout
// mask when there is one).
// dh [B, P]; d_pre [T, B, gates*H]; w [gates*H, P].
template <class StepAt>
void backward_loop(int64_t T, bool reverse, int64_t gates, const Tensor& dh, const Tensor& d_pre,
                   const Tensor& w, StateDropout& dropout, Algo algo, const StepAt& step_at) {
  const int64_t B = dh.size(0), P = dh.size(1), H = w.size(0) / gates;
  using Step = decltype(step_at(int64_t{0}));
  const bool persistent = use_persistent(algo, T, dh, H, gates, dropout, [&] {
#ifdef FUSED_RNN_WITH_CUDA
    return graphed_loop_will_replay<Step>(T, dh, H, dropout,
                                          backward_loop_shape(T, reverse, dh, H, w));
#else
    return false;
#endif
  });
#ifdef FUSED_RNN_WITH_CUDA
  if (persistent && dh.is_cuda() &&
      persistent_backward(algo, T, reverse, gates, dh, d_pre, w, step_at)) {
    return;
  }
  // The stepwise loop from a captured CUDA graph (half types, by default; graphed_loop.h).
  if (graphed_backward(T, reverse, dh, d_pre, w, H, dropout, step_at)) return;
#endif
  if constexpr (std::is_same_v<typename Step::scalar_type, float>) {
    if (persistent && dh.is_cpu()) {
      const cpu::PackedMatrix packed = cpu::pack_for_backward(w.data_ptr<float>(), gates, H, P);
      const int64_t units = cpu::units_per_panel(gates, /*forward=*/false);
      const float* d_pre_data = d_pre.data_ptr<float>();
      float* dh_data = dh.data_ptr<float>();
      auto t_of = [&](int64_t i) { return time_at(T - 1 - i, T, reverse); };
      // A backward panel holds dh's columns of the very units whose pointwise step the same
      // thread runs, so the GEMM of step i (which reads all of d_pre[t]) and the pointwise step
      // i + 1 of another thread (its own columns of dh and of d_pre[t']) touch nothing in common:
      // one barrier, between a step's pointwise pass and its GEMM, suffices.
      // A row split needs no barrier at all: every row is its own sequence.
      const cpu::RecurrenceSplit split = cpu::recurrence_split(B, packed.panels(), packed.bytes());
      cpu::run_recurrence(
          T, B, packed.panels(), split,
          [&](int64_t i, const cpu::Share& share) {
            run_cpu_block(step_at(t_of(i)), share.b0, share.b1, share.p0 * units,
                          std::min(share.p1 * units, H));
          },
          [&](int64_t i, const cpu::Share& share) {
            const float* d_pre_t = d_pre_data + (t_of(i) * B + share.b0) * gates * H;
            cpu::packed_gemm(d_pre_t, gates * H, 1, share.b1 - share.b0, packed, share.p0,
                             share.p1, dh_data + share.b0 * P, P, true);
          });
      return;
    }
  }
  Tensor dh_carry = dh;
  const StepGemm recurrent(w, /*transposed=*/false, T * B);
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = time_at(s, T, reverse);
    launch_step(step_at(t), B, H, dh.device());
    dropout.backprop(dh_carry, d_pre.select(0, t), recurrent);
  }
}

}  // namespace fused_rnn
