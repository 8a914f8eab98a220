// The CPU's fused recurrence: a whole sequence in one parallel region. Each thread owns a fixed
// range of W_hh's panels (packed_gemm.h) and so a fixed set of hidden units for every step: it
// multiplies its panels, runs the pointwise step for its units (both while the data is in its
// cache), and meets the other threads at a spin barrier once a step, instead of forking a
// thread team for every GEMM and every pointwise pass.
#pragma once

#include <ATen/Config.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "fused_rnn/launch.h"
#include "packed_gemm.h"

namespace fused_rnn {
namespace cpu {

// Whether the packed recurrence runs a float sequence with hidden size H here.
inline bool recurrence_supported(int64_t H) {
#ifdef FUSED_RNN_CPU_AVX2
  return H % kChunk == 0 && cpu_has_avx512();
#else
  return false;
#endif
}

// W_hh [gates*H, P] packed for the forward GEMM hh = h · W_hhᵀ. With gates > 1, panel p holds
// the columns of hidden units [16p, 16p + 16) of every gate; with one gate, 64 units.
PackedMatrix pack_for_forward(const float* w_hh, int64_t gates, int64_t H, int64_t P);
// W_hh [gates*H, P] packed for the backward GEMM dh += d_pre · W_hh: panel p = units [64p, 64p+64).
PackedMatrix pack_for_backward(const float* w_hh, int64_t gates, int64_t H, int64_t P);
// The hidden units whose columns a forward (or backward) panel holds.
int64_t units_per_panel(int64_t gates, bool forward);

// Threads meet here; each arrives with a weight (the number of workers it stands for) and the
// barrier opens when the weights add up to `parties`. Spins, then yields (an oversubscribed
// machine must not starve the thread everyone waits for).
class SpinBarrier {
 public:
  explicit SpinBarrier(int64_t parties) : parties_(parties) {}
  void arrive_and_wait(int64_t weight) {
    if (weight == parties_) return;
    const int64_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(weight, std::memory_order_acq_rel) + weight == parties_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
#if defined(__x86_64__)
      if (spins < 2048) {
        _mm_pause();
        continue;
      }
#endif
      std::this_thread::yield();
    }
  }

 private:
  const int64_t parties_;
  std::atomic<int64_t> arrived_{0};
  std::atomic<int64_t> generation_{0};
};

// Runs steps s = 0 .. steps-1, each as phase_a(s, p0, p1), barrier, phase_b(s, p0, p1), where
// [p0, p1) is the calling thread's panel range (the same for every step). There is no barrier
// after phase_b: one thread's phase_b(s) may overlap another's phase_a(s + 1), so phase_a(s + 1)
// must neither write what any phase_b(s) reads nor read what another thread's phase_b(s) writes.
// The phases must not throw: a thread that left would leave the others waiting.
// How many workers run_recurrence splits `panels` panels between.
inline int64_t recurrence_workers(int64_t panels) {
#if AT_PARALLEL_OPENMP
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), panels));
#else
  // Other backends may run the chunks one after another, which the barrier would deadlock.
  return 1;
#endif
}

template <class PhaseA, class PhaseB>
void run_recurrence(int64_t steps, int64_t panels, const PhaseA& phase_a, const PhaseB& phase_b) {
  const int64_t workers = recurrence_workers(panels);
  auto panel_of = [&](int64_t worker) { return worker * panels / workers; };
  SpinBarrier barrier(workers);
  // With OpenMP every chunk of this range runs on its own thread, all at once; a thread given
  // several workers' chunks (or the caller alone, inside another parallel region) does their
  // panels together and counts for all of them at the barrier.
  at::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
    const int64_t p0 = panel_of(w0), p1 = panel_of(w1), weight = w1 - w0;
    for (int64_t s = 0; s < steps; ++s) {
      phase_a(s, p0, p1);
      barrier.arrive_and_wait(weight);
      phase_b(s, p0, p1);
    }
  });
}

// One phase a step: phase(s, p0, p1), barrier. A thread's phase(s + 1) may start as soon as every
// thread has finished phase(s).
template <class Phase>
void run_recurrence(int64_t steps, int64_t panels, const Phase& phase) {
  run_recurrence(steps, panels, phase, [](int64_t, int64_t, int64_t) {});
}

}  // namespace cpu
}  // namespace fused_rnn
