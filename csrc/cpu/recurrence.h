// The CPU's fused recurrence: a whole sequence in one parallel region. Each thread owns a fixed
// share of the work for every step, either a range of W_hh's panels (packed_gemm.h), so a fixed
// set of hidden units of every row, or, for a W_hh small enough, a range of rows (batch entries)
// with all units. It multiplies its share, runs the pointwise step for it (both while the data
// is in its cache), and, when it owns panels, meets the other threads at a spin barrier once a
// step (owners of rows need none), instead of forking a thread team for every GEMM and every
// pointwise pass.
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
  return H % kChunk == 0 && cpu_has_packed_gemm();
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

// How many threads run_recurrence may use.
inline int64_t recurrence_threads() {
#if AT_PARALLEL_OPENMP
  return at::get_num_threads();
#else
  // Other backends may run the chunks one after another, which the barrier would deadlock.
  return 1;
#endif
}

// The packed W_hh up to which the workers split a sequence's rows instead of its panels. Rows
// (batch entries) are independent sequences, so workers that own whole rows never wait for each
// other, while workers that own panels (hidden units) need every other's units of h each step
// and meet at a barrier; but each row worker reads all of W every step. Measured on the 2-core
// AMD EPYC (1 MiB L2 a core, 32 MiB L3), 2 threads, rows against panels, inference / training:
// LSTM T=1000 B=8 H=128 (W 256 KiB) 6.41 / 19.6 ms against 6.91 / 20.8, GRU 4.36 against
// 4.95, H=192 (576 KiB) 8.1 / 23.9 against 9.1 / 28.3, H=256 B=16 (1 MiB) 11.1 / 34.5 against
// 12.2 / 37.5; mid (4 MiB) and deepbench (16 MiB) even; big_h (64 MiB) 315 against 272.
constexpr int64_t kRowSplitMaxPackedBytes = 2 * 1024 * 1024;
// Fewest rows per worker in a row split: fewer rows make short register tiles.
constexpr int64_t kRowSplitMinRows = 4;

// One worker's share of a recurrence: rows [b0, b1) of the panels [p0, p1).
struct Share {
  int64_t p0, p1, b0, b1;
};

// How run_recurrence divides `rows` rows times `panels` panels of a packed W_hh of
// `packed_bytes` between its workers.
struct RecurrenceSplit {
  int64_t workers;
  bool by_rows;  // else by panels
};
inline RecurrenceSplit recurrence_split(int64_t rows, int64_t panels, int64_t packed_bytes) {
  const int64_t threads = recurrence_threads();
  const int64_t panel_workers = std::max<int64_t>(1, std::min(threads, panels));
  const int64_t row_workers = std::min(threads, rows / kRowSplitMinRows);
  // Rows only where they keep as many threads busy as panels would.
  if (packed_bytes <= kRowSplitMaxPackedBytes && row_workers >= panel_workers) {
    return {row_workers, true};
  }
  return {panel_workers, false};
}

// Runs steps s = 0 .. steps-1 of a recurrence split as recurrence_split says, each as
// phase_a(s, share), barrier, phase_b(s, share), where `share` is the calling worker's (the same
// for every step). A row split needs no barrier. There is no barrier after phase_b: one worker's
// phase_b(s) may overlap another's phase_a(s + 1), so phase_a(s + 1) must neither write what any
// phase_b(s) reads nor read what another worker's phase_b(s) writes.
// The phases must not throw: a thread that left would leave the others waiting.
template <class PhaseA, class PhaseB>
void run_recurrence(int64_t steps, int64_t rows, int64_t panels, const RecurrenceSplit& split,
                    const PhaseA& phase_a, const PhaseB& phase_b) {
  const int64_t workers = split.workers;
  SpinBarrier barrier(split.by_rows ? 1 : workers);
  // With OpenMP every chunk of this range runs on its own thread, all at once; a thread given
  // several workers' chunks (or the caller alone, inside another parallel region) does their
  // share together and counts for all of them at the barrier.
  at::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
    const Share share = split.by_rows
                            ? Share{0, panels, w0 * rows / workers, w1 * rows / workers}
                            : Share{w0 * panels / workers, w1 * panels / workers, 0, rows};
    const int64_t weight = split.by_rows ? 1 : w1 - w0;
    for (int64_t s = 0; s < steps; ++s) {
      phase_a(s, share);
      barrier.arrive_and_wait(weight);
      phase_b(s, share);
    }
  });
}

// One phase a step: phase(s, share), barrier. A worker's phase(s + 1) may start as soon as every
// worker has finished phase(s).
template <class Phase>
void run_recurrence(int64_t steps, int64_t rows, int64_t panels, const RecurrenceSplit& split,
                    const Phase& phase) {
  run_recurrence(steps, rows, panels, split, phase, [](int64_t, const Share&) {});
}

}  // namespace cpu
}  // namespace fused_rnn
