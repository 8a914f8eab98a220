// The persistent CUDA recurrence (issue 6): one cooperative kernel runs the whole time loop of a
// sequence. The hidden units are split over the blocks; each block copies the W_hh rows (forward)
// or columns (backward) of its units into shared memory once and keeps them there for every
// step. Per step it reads h_{t-1} (backward: d_pre_t) from L2, multiplies, runs the cell's
// pointwise step (cell_steps.h, the same code as every other path) on its units, and meets the
// other blocks at one grid barrier.
//
//   forward, step s:  hh[:, own rows] = h_s · W_hh[own rows]ᵀ;  __syncthreads;
//                     h_{s+1}[:, own] = h_s[:, own];  steps[s](b, j) for j own;  grid.sync
//   backward, step i: steps[i](b, j) for j own (writes d_pre_t[:, own gate columns], dh[:, own]);
//                     grid.sync;  dh[:, own] += d_pre_t · W_hh[:, own];  __syncthreads
// The forward state ping-pongs between two buffers (step s reads state[s % 2] and writes
// state[(s+1) % 2]) so that no block overwrites an h another block is still reading; copying the
// own units first keeps the state of masked rows and gives GRU's step its h_{t-1}. The backward
// needs no second barrier: a block's GEMM writes exactly the dh columns its own pointwise reads.
//
// FP32 is multiplied with exact FFMA (no TF32), half types in float; products accumulate in the
// compute type and hh is rounded to the storage type, as the stepwise path's cuBLAS GEMM does.
// Half types run on tensor cores where their plan fits (mma.sync, W and h kept in the storage
// type, float sums; FUSED_RNN_PERSISTENT_MMA=0 keeps FFMA; csrc/cuda/persistent_products.cuh).
//
// This header is shared by the host code (sequence/recurrent_loop.h) and the kernels
// (csrc/cuda/persistent.cuh).
#pragma once

#include <cstdint>
#include <type_traits>

#include "fused_rnn/cell_steps.h"

namespace fused_rnn {

// Which recurrence algorithm runs a sequence: the ops' `algo` argument.
//   stepwise:   one recurrent GEMM and one pointwise launch per step (any shape, any device).
//   persistent: CUDA: the cooperative kernel above; CPU: the packed, threaded recurrence
//               (csrc/cpu/recurrence.h). Raises where it cannot run.
//   auto:       persistent where it can run and is expected to be faster, else stepwise.
enum class Algo { kAuto, kStepwise, kPersistent };

// The storage types the persistent kernels can multiply on tensor cores (experimental).
template <typename T>
constexpr bool kHasTensorCoreProduct =
    std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;

constexpr int kPersistentThreads = 256;  // threads per block (one block per SM: up to 255 registers each)
constexpr int kTileRows = 4;             // W_hh rows per thread tile of the dot products
constexpr int kTileBatch = 4;            // batch rows per thread tile

// Hidden units per block: the units are spread over at most one block per multiprocessor.
inline int64_t persistent_units_per_block(int64_t H, int64_t multiprocessors) {
  return (H + multiprocessors - 1) / multiprocessors;
}

// How the persistent kernel splits one sequence; blocks == 0 when it cannot run here (W_hh's
// slice does not fit in shared memory, or the blocks cannot all be resident at once).
struct PersistentPlan {
  int64_t blocks = 0;        // one per `units` hidden units
  int64_t units = 0;         // hidden units per block (the last block may have fewer)
  int64_t batch_chunk = 0;   // rows of h (backward: d_pre) staged in shared memory at a time
  int64_t shared_bytes = 0;  // dynamic shared memory per block
  bool cluster = false;      // forward only: the blocks form one thread-block cluster (below)
  bool tensor_cores = false; // fp16/bf16: the products run on tensor cores
};

// EXPERIMENTAL (its results matched the grid kernel's on a GPU, but that process aborted at
// exit, not yet understood; docs/persistent.md): the forward as ONE thread-block cluster of up to
// kMaxClusterBlocks blocks (sm_90). The state never leaves the chip: each block keeps its units'
// h in shared memory, reads the other units' h from the other blocks' shared memory (distributed
// shared memory), keeps hh in shared memory, and meets the others at a cluster barrier (0.2 us
// measured on an H200, against 1 us for grid.sync). Used only where
// FUSED_RNN_PERSISTENT_CLUSTER=1 and everything (W slice, all of B) fits in one block's shared
// memory (=require: raise where it does not); tests/test_persistent.py and tools/gpu_check.sh
// run it that way.
constexpr int kMaxClusterBlocks = 16;

template <class Step>
struct PersistentForwardArgs {
  using scalar_t = typename Step::scalar_type;
  const Step* steps;      // [T] on the device, in loop order; steps[s].h == state[(s + 1) % 2]
  const scalar_t* w_hh;   // [gates*H, H]
  scalar_t* state[2];     // [B, H] each; state[0] holds h_0
  scalar_t* hh;           // [B, gates*H] W_hh h, read by the steps
  int64_t T, B, H, gates;
};

template <class Step>
struct PersistentBackwardArgs {
  using scalar_t = typename Step::scalar_type;
  const Step* steps;      // [T] on the device, in loop order (time T-1 first unless reverse)
  const scalar_t* w_hh;   // [gates*H, H]
  const scalar_t* d_pre;  // [T, B, gates*H] written by the steps, read by the GEMM
  scalar_t* dh;           // [B, H] the steps' dh
  int64_t T, B, H, gates;
  bool reverse;
};

// The reset_before GRU (TF's GRUCell) needs W_hn (r ⊙ h_{t-1}) of every unit between its two
// products, so each of its steps is a pair of pointwise steps with a grid barrier between them
// (csrc/cuda/persistent_reset_before.cuh):
//   forward:  first = GruResetBeforeGatesStep (r, z, r ⊙ h), second = GruResetBeforeStateStep
//   backward: first = GruResetBeforeBackwardZnStep, second = GruResetBeforeBackwardRStep
template <class First, class Second>
struct StepPair {
  using scalar_type = typename First::scalar_type;
  First first;
  Second second;
};
template <typename scalar_t>
using ResetBeforeForwardPair =
    StepPair<GruResetBeforeGatesStep<scalar_t>, GruResetBeforeStateStep<scalar_t>>;
template <typename scalar_t>
using ResetBeforeBackwardPair =
    StepPair<GruResetBeforeBackwardZnStep<scalar_t>, GruResetBeforeBackwardRStep<scalar_t>>;

template <class Pair>
struct PersistentResetBeforeForwardArgs {
  using scalar_t = typename Pair::scalar_type;
  const Pair* steps;     // [T] on the device, in loop order; first.h == second.h == h
  const scalar_t* w_hh;  // [3H, H]
  scalar_t* h;           // [B, H] the state, h_0 in, h_T out (the second steps update it)
  scalar_t* hh_rz;       // [B, 2H] W_h{r,z} h, read by the first steps
  const scalar_t* rh;    // [B, H]  r ⊙ h, written by the first steps
  scalar_t* hh_n;        // [B, H]  W_hn (r ⊙ h), read by the second steps
  int64_t T, B, H;
};

template <class Pair>
struct PersistentResetBeforeBackwardArgs {
  using scalar_t = typename Pair::scalar_type;
  const Pair* steps;      // [T] on the device, in loop order (time T-1 first unless reverse)
  const scalar_t* w_hh;   // [3H, H]
  const scalar_t* d_x;    // [T, B, 3H] d x_proj, written by the steps (r by the second)
  scalar_t* d_rh;         // [B, H] d (r ⊙ h) = d a_n · W_hn, read by the second steps
  scalar_t* dh;           // [B, H] the steps' dh
  int64_t T, B, H;
  bool reverse;
};

#ifdef FUSED_RNN_WITH_CUDA
// Implemented in csrc/cuda/persistent.cuh, instantiated per step type in the cells' *.cu files.
// All run on the current device and stream. tensor_cores: plan the kernel that multiplies on
// tensor cores (blocks == 0 where it cannot run: a dtype other than fp16/bf16, a GPU before
// sm_80, a slice that does not fit); otherwise the FFMA kernel.
template <class Step>
PersistentPlan plan_persistent_forward(int64_t B, int64_t H, int64_t gates, bool tensor_cores);
template <class Step>
PersistentPlan plan_persistent_cluster_forward(int64_t B, int64_t H, int64_t gates);
template <class Step>
PersistentPlan plan_persistent_backward(int64_t B, int64_t H, int64_t gates, bool tensor_cores);
template <class Step>
void launch_persistent_forward(const PersistentForwardArgs<Step>& args, const PersistentPlan& plan);
template <class Step>
void launch_persistent_backward(const PersistentBackwardArgs<Step>& args,
                                const PersistentPlan& plan);
// The reset_before GRU's (csrc/cuda/persistent_reset_before.cuh): the same plans as the
// reset_after GRU's, with tensor_cores as above.
template <class Pair>
PersistentPlan plan_reset_before_forward(int64_t B, int64_t H, bool tensor_cores);
template <class Pair>
PersistentPlan plan_reset_before_backward(int64_t B, int64_t H, bool tensor_cores);
template <class Pair>
void launch_reset_before_forward(const PersistentResetBeforeForwardArgs<Pair>& args,
                                 const PersistentPlan& plan);
template <class Pair>
void launch_reset_before_backward(const PersistentResetBeforeBackwardArgs<Pair>& args,
                                  const PersistentPlan& plan);
#endif

}  // namespace fused_rnn
