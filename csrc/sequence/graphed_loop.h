// The stepwise CUDA loops replayed from CUDA graphs, captured once per shape and W_hh.
//
// Why: the eager half-type stepwise loop is host-bound (two launches and a cuBLASLt call a step);
// replayed from graphs the same loop is GPU-bound (the measurements: README "CUDA graphs" and
// docs/persistent.md).
//
// ON BY DEFAULT for float16 and bfloat16 on CUDA; FUSED_RNN_STEPWISE_GRAPHS=0 turns it off.
// float32 too with FUSED_RNN_STEPWISE_GRAPHS=all (opt-in: not yet run on a GPU). Its eager
// GEMM is ATen's, whose workspace inside a capture would be the capture stream's, shared by
// every graph captured there; its captured loops multiply with cuBLAS through a workspace of
// the replay stream's instead (cuda/step_gemm_cublas.h), as the half types' cuBLASLt products
// do (cuda/step_gemm_cublaslt.h). float64 keeps the eager loop.
//
// How: a graph's launches have fixed arguments, so what changes between calls goes through
// device memory. A captured loop owns the buffers its GEMMs read and write (forward: the state h
// [B, P] and hh [B, N]; backward: dh [B, P] and d_pre [T, B, N]) and a buffer of T step structs,
// which its step kernels read (launch_cuda_from_device). A call writes its structs, pointed at
// its own inputs and outputs and at the loop's buffers, copies the state in,
// replays, and copies the state (backward: and d_pre) out, all on its stream. W_hh is read where
// the capture found it: the key holds its address, and at replay that address holds the calling
// op's W_hh.
//
// What the cache holds (its buffers stay allocated between calls; a backward's d_pre is as
// large as the saved gates), per step type and device: at most kMaxCapturedLoops loops and
// 1/kCapturedMemoryShare of the device's memory. A loop unused for kColdCalls calls of its
// step type may be replaced; while none is, a new key runs the eager loop (or, where `auto`
// decides and the persistent kernel beats the eager loop, that kernel: graphed_loop_will_replay).
// So a model with more keys than fit (sequence lengths that vary from batch to batch make a key
// each) replays what fits and runs the rest without graphs, instead of capturing on every call.
//
// What keeps a capture from failing or taking in foreign work (a failed capture would leave
// torch's allocator and RNG in capture mode for the process):
//   - a key is captured on its second call (its first runs the eager loop, or under `auto`
//     possibly the persistent kernel: graphed_loop_will_replay); the products' handles, plans
//     and workspaces are made, each product run once and the replayed step kernel loaded
//     before the capture, so nothing is initialised inside it;
//   - only loops whose every product is capturable (StepGemm::capturable: cuBLASLt's, or
//     float32's cuBLAS product with a workspace of ours; never ATen's GEMM, whose workspace
//     would be the capture stream's) and whose steps have work; ATen's cuBLAS handle, which
//     float32's product runs on, gets its workspace for the capture stream before the capture;
//   - captures run on a stream of ours per device, never handed to anyone else (a pool stream
//     may be a user's torch.cuda.Stream), one capture at a time in the process;
//   - an exception during the capture ends the capture before it propagates.
#pragma once

#ifdef FUSED_RNN_WITH_CUDA
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <ATen/cuda/Exceptions.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/accumulate.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "../cuda/step_gemm_cublaslt.h"
#include "common.h"
#include "fused_rnn/cell_steps.h"
#include "fused_rnn/launch.h"
#include "gemm.h"

namespace fused_rnn {

// Whether stepwise loops of `type` may run from graphs: the half types' unless
// FUSED_RNN_STEPWISE_GRAPHS=0, float32's with FUSED_RNN_STEPWISE_GRAPHS=all; none with
// FUSED_RNN_STEP_GEMM=aten (ATen's products are never captured). Read per call, so that a loop
// captured before a switch is not replayed after it.
inline bool stepwise_graphs_cover(at::ScalarType type) {
  if (step_gemm_aten_requested()) return false;
  const char* value = std::getenv("FUSED_RNN_STEPWISE_GRAPHS");
  if (value != nullptr && std::strcmp(value, "0") == 0) return false;
  if (type == at::kHalf || type == at::kBFloat16) return true;
  return type == at::kFloat && value != nullptr && std::strcmp(value, "all") == 0;
}

// A step struct pointed at a captured loop's buffers. Forward (every forward step has h and hh):
// the state it updates and the hh it reads.
template <class Step, typename T>
void point_forward_at_loop(Step& step, T* h, T* hh) {
  step.h = h;
  step.hh = hh;
}
// Backward: the dh it updates and its row of d_pre, what the GEMM multiplies (named per cell).
template <typename T>
T*& d_pre_of(ElmanBackwardStep<T>& step) { return step.d_a; }
template <typename T>
T*& d_pre_of(LstmBackwardStep<T>& step) { return step.d_gates; }
template <typename T>
T*& d_pre_of(GruBackwardStep<T>& step) { return step.d_hh; }

// What a captured loop's launches depend on, besides the step structs of the call.
struct CapturedLoopKey {
  int device;
  cudaStream_t stream;    // the stream it replays on (its buffers are ordered on it)
  int64_t T, B, P, H, N;  // steps, batch, state width, step columns, product columns
  bool reverse;           // backward: which d_pre row each step's GEMM reads
  const void* w;          // W_hh [N, P], row stride w_stride
  int64_t w_stride;
  bool tf32;              // float32: TF32 products (float32_products_in_tf32), baked in
  bool operator==(const CapturedLoopKey& o) const {
    return device == o.device && stream == o.stream && T == o.T && B == o.B && P == o.P &&
           H == o.H && N == o.N && reverse == o.reverse && w == o.w && w_stride == o.w_stride &&
           tf32 == o.tf32;
  }
};

// An event recorded after a captured loop's work on its stream, created at the first record on
// the current device (the op's, under its device guard); destroyed with the loop.
class DoneEvent {
 public:
  DoneEvent() = default;
  DoneEvent(const DoneEvent&) = delete;
  DoneEvent& operator=(const DoneEvent&) = delete;
  ~DoneEvent() {
    if (event_ != nullptr) (void)cudaEventDestroy(event_);  // no throwing from a destructor
  }
  void record(cudaStream_t stream) {
    if (event_ == nullptr) C10_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
    C10_CUDA_CHECK(cudaEventRecord(event_, stream));
  }
  void synchronize() const {
    if (event_ != nullptr) C10_CUDA_CHECK(cudaEventSynchronize(event_));
  }

 private:
  cudaEvent_t event_ = nullptr;
};

struct CapturedLoop {
  CapturedLoopKey key;
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  Tensor state;    // [B, P] forward h, backward dh
  Tensor product;  // forward hh [B, N]; backward d_pre [T, B, N]
  Tensor steps;    // [T * sizeof(Step)] bytes: the replaying call's step structs, in loop order
  uint64_t last_use = 0;  // the cache's call count at its last replay (or capture)
  // Recorded on key.stream after each call's replay and copies: what freeing the loop waits
  // for (an event, not the stream, which may be a caller's stream destroyed since).
  DoneEvent done;

  int64_t bytes() const { return state.nbytes() + product.nbytes() + steps.nbytes(); }

  // One call: its step structs (loop order) to the device, its state in, the replay, the state
  // out, on the current stream (the key's).
  template <class Step>
  void replay(const std::vector<Step>& call_steps, const Tensor& call_state) {
    steps.copy_(pinned_copy(call_steps), /*non_blocking=*/true);
    state.copy_(call_state);
    graph->replay();
    call_state.copy_(state);
  }
};

// The cache's bounds, per step type and device (see the top of this file). A model cycles
// through one key per layer and direction (and sequence length): a 4-layer bidirectional LSTM
// has 8 forward and 8 backward keys.
constexpr size_t kMaxCapturedLoops = 16;
constexpr int64_t kCapturedMemoryShare = 64;  // at most 1/64 of the device's memory
constexpr uint64_t kColdCalls = 2 * kMaxCapturedLoops;

// The stream this file captures on, one per device, created once and never destroyed (a stream
// from torch's pool may also be a user's, whose launches during our capture would be captured).
inline c10::cuda::CUDAStream capture_stream(c10::DeviceIndex device) {
  static std::mutex mutex;
  static auto* streams = new std::map<c10::DeviceIndex, cudaStream_t>();
  const std::lock_guard<std::mutex> lock(mutex);
  auto found = streams->find(device);
  if (found == streams->end()) {
    const c10::cuda::CUDAGuard on_device(device);
    cudaStream_t stream = nullptr;
    C10_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    found = streams->emplace(device, stream).first;
  }
  return c10::cuda::getStreamFromExternal(found->second, device);
}

// One capture at a time in the process (the forward and backward caches of every step type
// share the capture streams).
inline std::mutex& capture_mutex() {
  static auto* mutex = new std::mutex();
  return *mutex;
}

// What frees each step type's captured loops (release_captured_loops), registered as each
// cache is created.
inline std::mutex& captured_loop_releasers_mutex() {
  static auto* mutex = new std::mutex();
  return *mutex;
}
inline std::vector<std::function<int64_t()>>& captured_loop_releasers() {
  static auto* releasers = new std::vector<std::function<int64_t()>>();
  return *releasers;
}

// The captured loops of one step type. Never destroyed (like the cuBLAS handles): at exit the
// CUDA allocator their graphs would return memory to may be gone.
template <class Step>
struct CapturedLoops {
  std::mutex mutex;  // held from lookup to the end of a call's enqueued work
  std::vector<std::unique_ptr<CapturedLoop>> loops;
  std::vector<CapturedLoopKey> seen_once;  // keys met once and not captured yet (bounded)
  uint64_t calls = 0;  // find_or_capture's calls and will_replay's "no"s: what last_use counts

  static CapturedLoops& instance() {
    static auto* loops = [] {
      auto* created = new CapturedLoops();
      const std::lock_guard<std::mutex> lock(captured_loop_releasers_mutex());
      captured_loop_releasers().push_back([created] { return created->release(); });
      return created;
    }();
    return *loops;
  }

  // Frees every loop (after the replays queued on its stream) and forgets the keys met once;
  // returns the bytes of the loops' buffers.
  int64_t release() {
    const std::lock_guard<std::mutex> lock(mutex);
    int64_t bytes = 0;
    for (const auto& loop : loops) {
      loop->done.synchronize();
      bytes += loop->bytes();
    }
    loops.clear();
    seen_once.clear();
    return bytes;
  }

  // The loop for `key`, or nullptr where the caller is to run its eager loop: on the key's
  // first call, where the cache has no room (make_room), and where prepare(loop, gemm) says a
  // product is not capturable. prepare also runs each product once on the loop's buffers
  // (whatever they hold: every replay writes them before it reads them), outside the capture:
  // CUDA loads a kernel at its first launch, which a capture must not contain, and the eager
  // first call ran ATen's GEMM, not float32's captured one. Else captured by
  // capture_steps(loop, steps, gemm) on the key's second call: gemm is made on the replay
  // stream (so that the products' workspace is that stream's), the launches are captured on
  // capture_stream (graphs cannot capture the default stream).
  template <class Prepare, class Capture>
  CapturedLoop* find_or_capture(const CapturedLoopKey& key, const Tensor& state, const Tensor& w,
                                bool transposed, const std::vector<int64_t>& product_sizes,
                                const Prepare& prepare, const Capture& capture_steps) {
    ++calls;
    if (CapturedLoop* loop = held(key)) return touch(loop);
    if (!seen_before(key)) return nullptr;
    if (!make_room(key.device, loop_bytes(key, product_sizes, state), /*evict=*/true)) {
      return nullptr;
    }
    auto loop = std::make_unique<CapturedLoop>();
    loop->key = key;
    loop->state = at::empty({key.B, key.P}, state.options());
    loop->product = at::empty(product_sizes, state.options());
    loop->steps = at::empty({key.T * static_cast<int64_t>(sizeof(Step))},
                            state.options().dtype(at::kByte));
    const StepGemm gemm(w, transposed, key.T * key.B, /*for_capture=*/true);
    if (!prepare(*loop, gemm)) return nullptr;
    load_cuda_from_device_kernel<Step>();
    loop->graph = std::make_unique<at::cuda::CUDAGraph>();
    {
      const std::lock_guard<std::mutex> one_capture(capture_mutex());
      const c10::cuda::CUDAStreamGuard side(capture_stream(state.device().index()));
      // ATen's cuBLAS handle makes its workspace for a stream at the handle's first use there;
      // made inside the capture it would come from the graph's pool. float32's captured product
      // runs on that handle (cuda/step_gemm_cublas.h): make it now, outside.
      if constexpr (std::is_same_v<typename Step::scalar_type, float>) {
        (void)at::cuda::getCurrentCUDABlasHandle();
      }
      loop->graph->capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
      try {
        capture_steps(*loop, static_cast<const Step*>(loop->steps.data_ptr()), gemm);
      } catch (...) {
        try {
          loop->graph->capture_end();
        } catch (...) {
          // The capture's own error is the one to report.
        }
        throw;
      }
      loop->graph->capture_end();
    }
    loops.push_back(std::move(loop));
    return touch(loops.back().get());
  }

  // What `auto` asks before it sends a call to the stepwise loop (persistent_loop.h): whether
  // this call would run from a graph, the key's loop being held or about to be captured (the
  // key met before and room for it: make_room, replacing nothing now). A key's first call
  // answers no and is remembered, so that its second call captures: the persistent kernel is
  // faster than the eager loop that call would otherwise run (find_or_capture's `prepare` warms
  // what the capture needs). A call answered no still counts as a call of this step type:
  // else, once a model's keys change, the loops of the old keys would never turn cold and
  // would keep the new keys out for good.
  bool will_replay(const CapturedLoopKey& key, const std::vector<int64_t>& product_sizes,
                   const Tensor& state) {
    const std::lock_guard<std::mutex> lock(mutex);
    if (held(key) != nullptr) return true;
    const bool seen = std::find(seen_once.begin(), seen_once.end(), key) != seen_once.end();
    if (seen && make_room(key.device, loop_bytes(key, product_sizes, state), /*evict=*/false)) {
      return true;
    }
    if (!seen) remember(key);
    ++calls;
    return false;
  }

  // The loop of `key`, or nullptr.
  CapturedLoop* held(const CapturedLoopKey& key) const {
    for (const auto& loop : loops) {
      if (loop->key == key) return loop.get();
    }
    return nullptr;
  }

  // The bytes of a loop's buffers: state [B, P], product, and T step structs.
  static int64_t loop_bytes(const CapturedLoopKey& key, const std::vector<int64_t>& product_sizes,
                            const Tensor& state) {
    return (key.B * key.P + c10::multiply_integers(product_sizes)) * state.element_size() +
           key.T * static_cast<int64_t>(sizeof(Step));
  }

  // Whether a loop of `bytes` fits among this cache's loops on `device` (kMaxCapturedLoops of
  // them, 1/kCapturedMemoryShare of the device's memory), after replacing loops unused for
  // kColdCalls calls, least recently used first (only when `evict`: else it only says whether
  // it could). A loop in use stays: a model with more keys than fit then runs some eager (or,
  // under auto, persistent), rather than capturing and replacing on every call.
  bool make_room(int device, int64_t bytes, bool evict) {
    const int64_t limit = static_cast<int64_t>(
        at::cuda::getDeviceProperties(device)->totalGlobalMem / kCapturedMemoryShare);
    if (bytes > limit) return false;
    std::vector<CapturedLoop*> on_device;  // this device's loops, least recently used first
    int64_t held = 0;
    for (const auto& loop : loops) {
      if (loop->key.device != device) continue;
      on_device.push_back(loop.get());
      held += loop->bytes();
    }
    std::sort(on_device.begin(), on_device.end(),
              [](const CapturedLoop* a, const CapturedLoop* b) { return a->last_use < b->last_use; });
    size_t replaced = 0;  // on_device[0, replaced) make the room
    while (on_device.size() - replaced >= kMaxCapturedLoops || held + bytes > limit) {
      if (replaced == on_device.size() || calls - on_device[replaced]->last_use < kColdCalls) {
        return false;
      }
      held -= on_device[replaced]->bytes();
      ++replaced;
    }
    if (!evict) return true;
    for (size_t i = 0; i < replaced; ++i) {
      // A replay may still run: its graph's memory returns to the allocator when it is destroyed.
      on_device[i]->done.synchronize();
      loops.erase(std::find_if(loops.begin(), loops.end(),
                               [&](const auto& loop) { return loop.get() == on_device[i]; }));
    }
    return true;
  }

  // Whether `key` was met before (and forgets it then); else remembers it.
  bool seen_before(const CapturedLoopKey& key) {
    const auto found = std::find(seen_once.begin(), seen_once.end(), key);
    if (found != seen_once.end()) {
      seen_once.erase(found);
      return true;
    }
    remember(key);
    return false;
  }

  // Adds `key` to the keys met once, forgetting the oldest beyond 2 * kMaxCapturedLoops.
  void remember(const CapturedLoopKey& key) {
    if (seen_once.size() >= 2 * kMaxCapturedLoops) seen_once.erase(seen_once.begin());
    seen_once.push_back(key);
  }

  CapturedLoop* touch(CapturedLoop* loop) {
    loop->last_use = calls;
    return loop;
  }
};

// fused_rnn.release_cuda_graphs(): frees the captured loops of every step type, their buffers
// and graphs; returns the bytes of the buffers. Later calls capture again (on a key's second
// call).
inline int64_t release_captured_loops() {
  std::vector<std::function<int64_t()>> releasers;
  {
    const std::lock_guard<std::mutex> lock(captured_loop_releasers_mutex());
    releasers = captured_loop_releasers();
  }
  int64_t bytes = 0;
  for (const auto& release : releasers) bytes += release();
  return bytes;
}

// The types whose loops may be captured (stepwise_graphs_cover says which are, per call).
template <typename T>
constexpr bool kGraphedType = std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16> ||
                              std::is_same_v<T, float>;

// Whether a stepwise loop of T steps on `state` [B, P], H columns a step, may run from a
// graph: unless stepwise_graphs_cover() leaves its type out or something rules it out: not
// CUDA, state dropout (its masked copy of the state is made per step), fewer than 2 steps,
// an empty state or step (a launch of no blocks is an error), or a capture already running on
// this stream (the caller's own graph). (Whether it then does: CapturedLoops::find_or_capture.)
inline bool use_graphed_loop(int64_t T, const Tensor& state, int64_t H,
                             const StateDropout& dropout) {
  if (!state.is_cuda() || dropout.active() || T < 2 || state.size(0) == 0 || state.size(1) == 0 ||
      H == 0 || !stepwise_graphs_cover(state.scalar_type())) {
    return false;
  }
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream().stream(), &status));
  return status == cudaStreamCaptureStatusNone;
}

// A captured loop's key and the sizes of its product buffer, for a call on the current stream.
struct LoopShape {
  CapturedLoopKey key;
  std::vector<int64_t> product_sizes;
};
// float32: whether ATen's cuBLAS handle multiplies in TF32 now, the math mode it sets from
// torch's flags (and its guards) on every use, and the one a capture of float32's products
// bakes in (cuda/step_gemm_cublas.h).
inline bool float32_products_in_tf32() {
  cublasMath_t mode = CUBLAS_DEFAULT_MATH;
  TORCH_CUDABLAS_CHECK(cublasGetMathMode(at::cuda::getCurrentCUDABlasHandle(), &mode));
  return (mode & CUBLAS_TF32_TENSOR_OP_MATH) != 0;
}
inline CapturedLoopKey captured_loop_key(int64_t T, const Tensor& state, int64_t H, bool reverse,
                                         const Tensor& w) {
  return {static_cast<int>(state.device().index()), c10::cuda::getCurrentCUDAStream().stream(),
          T, state.size(0), state.size(1), H, w.size(0), reverse, w.data_ptr(), w.stride(0),
          state.scalar_type() == at::kFloat && float32_products_in_tf32()};
}
// Forward: hh [B, N]. Loop order does not depend on `reverse` here: step s reads the struct at
// s, whichever time it is for. So both directions share a captured loop.
inline LoopShape forward_loop_shape(int64_t T, const Tensor& h, int64_t H, const Tensor& w) {
  return {captured_loop_key(T, h, H, /*reverse=*/false, w), {h.size(0), w.size(0)}};
}
// Backward: d_pre [T, B, N]; the GEMM of loop position i reads d_pre row t(i), which depends on
// `reverse`.
inline LoopShape backward_loop_shape(int64_t T, bool reverse, const Tensor& dh, int64_t H,
                                     const Tensor& w) {
  return {captured_loop_key(T, dh, H, reverse, w), {T, dh.size(0), w.size(0)}};
}

// Whether this call's stepwise loop (of `Step`s, `shape`) would run from a graph:
// use_graphed_loop, and CapturedLoops::will_replay (which remembers a key's first call, so that
// its second captures). For `auto`.
template <class Step>
bool graphed_loop_will_replay(int64_t T, const Tensor& state, int64_t H,
                              const StateDropout& dropout, const LoopShape& shape) {
  if constexpr (!kGraphedType<typename Step::scalar_type>) {
    return false;
  } else {
    return use_graphed_loop(T, state, H, dropout) &&
           CapturedLoops<Step>::instance().will_replay(shape.key, shape.product_sizes, state);
  }
}

// forward_loop's stepwise CUDA loop (hh = h · W_hhᵀ, then step_at(t)) from a graph; returns
// whether it ran (use_graphed_loop). h [B, P] (h_0 in, h_T out); w [N, P]; a step writes H
// columns a row.
template <class StepAt>
bool graphed_forward(int64_t T, bool reverse, const Tensor& h, const Tensor& w, int64_t H,
                     const StateDropout& dropout, const StepAt& step_at) {
  using Step = decltype(step_at(int64_t{0}));
  using scalar_t = typename Step::scalar_type;
  // float64 must not instantiate what follows (load_cuda_from_device_kernel is not built
  // for it).
  if constexpr (!kGraphedType<scalar_t>) {
    return false;
  } else {
    if (!use_graphed_loop(T, h, H, dropout)) return false;
    const int64_t B = h.size(0);
    const LoopShape shape = forward_loop_shape(T, h, H, w);
    const CapturedLoopKey& key = shape.key;
    CapturedLoops<Step>& cache = CapturedLoops<Step>::instance();
    const std::lock_guard<std::mutex> lock(cache.mutex);
    CapturedLoop* loop = cache.find_or_capture(
        key, h, w, /*transposed=*/true, shape.product_sizes,
        [&](const CapturedLoop& captured, const StepGemm& gemm) {
          if (!gemm.capturable(captured.product, captured.state, /*accumulate=*/false)) {
            return false;
          }
          gemm.capture(captured.product, captured.state, /*accumulate=*/false);
          return true;
        },
        [&](const CapturedLoop& captured, const Step* steps, const StepGemm& gemm) {
          for (int64_t s = 0; s < T; ++s) {
            gemm.capture(captured.product, captured.state, /*accumulate=*/false);
            launch_cuda_from_device(steps + s, B, H);
          }
        });
    if (loop == nullptr) return false;
    std::vector<Step> steps;
    steps.reserve(T);
    for (int64_t s = 0; s < T; ++s) {
      Step step = step_at(time_at(s, T, reverse));
      point_forward_at_loop(step, loop->state.template data_ptr<scalar_t>(),
                            loop->product.template data_ptr<scalar_t>());
      steps.push_back(step);
    }
    loop->replay(steps, h);
    loop->done.record(key.stream);
    return true;
  }
}

// backward_loop's stepwise CUDA loop (step_at(t), then dh += d_pre[t] · W_hh, for t from the
// last step back) from a graph; returns whether it ran (use_graphed_loop). dh [B, P] (in: d h_T,
// out: d h_0); d_pre [T, B, N], written by the steps; w [N, P]; a step writes H columns a row.
template <class StepAt>
bool graphed_backward(int64_t T, bool reverse, const Tensor& dh, const Tensor& d_pre,
                      const Tensor& w, int64_t H, const StateDropout& dropout,
                      const StepAt& step_at) {
  using Step = decltype(step_at(int64_t{0}));
  using scalar_t = typename Step::scalar_type;
  // float64 must not instantiate what follows (load_cuda_from_device_kernel is not built
  // for it).
  if constexpr (!kGraphedType<scalar_t>) {
    return false;
  } else {
    if (!use_graphed_loop(T, dh, H, dropout)) return false;
    const int64_t B = dh.size(0), N = w.size(0);
    const LoopShape shape = backward_loop_shape(T, reverse, dh, H, w);
    const CapturedLoopKey& key = shape.key;
    auto t_of = [&](int64_t i) { return time_at(T - 1 - i, T, reverse); };
    CapturedLoops<Step>& cache = CapturedLoops<Step>::instance();
    const std::lock_guard<std::mutex> lock(cache.mutex);
    CapturedLoop* loop = cache.find_or_capture(
        key, dh, w, /*transposed=*/false, shape.product_sizes,
        [&](const CapturedLoop& captured, const StepGemm& gemm) {
          for (int64_t t = 0; t < T; ++t) {  // each row of d_pre has its own alignment
            const Tensor row = captured.product.select(0, t);
            if (!gemm.capturable(captured.state, row, /*accumulate=*/true)) return false;
            gemm.capture(captured.state, row, /*accumulate=*/true);
          }
          return true;
        },
        [&](const CapturedLoop& captured, const Step* steps, const StepGemm& gemm) {
          for (int64_t i = 0; i < T; ++i) {
            launch_cuda_from_device(steps + i, B, H);
            gemm.capture(captured.state, captured.product.select(0, t_of(i)), /*accumulate=*/true);
          }
        });
    if (loop == nullptr) return false;
    std::vector<Step> steps;
    steps.reserve(T);
    for (int64_t i = 0; i < T; ++i) {
      const int64_t t = t_of(i);
      Step step = step_at(t);
      step.dh = loop->state.template data_ptr<scalar_t>();
      d_pre_of(step) = loop->product.template data_ptr<scalar_t>() + t * B * N;
      steps.push_back(step);
    }
    loop->replay(steps, dh);
    d_pre.copy_(loop->product);
    loop->done.record(key.stream);
    return true;
  }
}

}  // namespace fused_rnn
#endif  // FUSED_RNN_WITH_CUDA
