// The stepwise CUDA forward loop replayed from a CUDA graph, captured once per shape and W_hh.
//
// Why: on an H200 the eager bf16 stepwise loop is host-bound. Replayed from a graph by the
// benchmark (torch.cuda.make_graphed_callables around the module) the same loop ran 2-3.7x
// cuDNN at mid, deepbench_1024, big_h and large_batch against 1.10-1.39x eager
// (benchmarks/results/h200_gpu_check_c3d4ece). This does it inside the op, for every caller.
//
// OPT-IN and NOT YET RUN ON A GPU: only with FUSED_RNN_STEPWISE_GRAPHS=1 (compiled for sm_80 and
// sm_90; tests/test_cuda_graphed_loop.py and tools/gpu_check.sh check it where there is a GPU).
// float16 and bfloat16 only: their GEMM is cuBLASLt with a workspace that outlives every graph
// (cuda/step_gemm_cublaslt.h), while ATen's GEMM (float32) would take its workspace for the
// capture stream from the graph's own pool, freed with the graph. Forward only; the backward loop
// stays eager (its GEMMs read d_pre[t], a per-call buffer).
//
// How: a graph's launches have fixed arguments, so what changes between calls goes through
// device memory. The captured loop owns the state h [B, P] and hh [B, N] that its GEMMs read and
// write, and a buffer of T step structs; each step kernel reads its struct from that buffer
// (launch_cuda_from_device). A call writes its structs (pointing at its own x_proj, outputs,
// saved gates and lengths, and at the loop's h and hh) into the buffer, copies h_0 in, replays,
// and copies h_T out, all on its stream. W_hh is read where the capture found it: the key holds
// its address, and at replay that address holds the calling op's W_hh.
#pragma once

#ifdef FUSED_RNN_WITH_CUDA
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "common.h"
#include "fused_rnn/launch.h"
#include "gemm.h"

namespace fused_rnn {

inline bool stepwise_graphs_requested() {
  const char* value = std::getenv("FUSED_RNN_STEPWISE_GRAPHS");
  return value != nullptr && std::strcmp(value, "1") == 0;
}

// What a captured loop's launches depend on, besides the step structs of the call.
struct CapturedLoopKey {
  int device;
  cudaStream_t stream;   // the stream it replays on (its buffers are ordered on it)
  int64_t T, B, P, H, N;  // steps, batch, state width, step columns, hh columns
  const void* w;          // W_hh [N, P], row stride w_stride
  int64_t w_stride;
  bool operator==(const CapturedLoopKey& o) const {
    return device == o.device && stream == o.stream && T == o.T && B == o.B && P == o.P &&
           H == o.H && N == o.N && w == o.w && w_stride == o.w_stride;
  }
};

struct CapturedLoop {
  CapturedLoopKey key;
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  Tensor h;             // [B, P] the state its GEMMs read and its steps update
  Tensor hh;            // [B, N] W_hh h
  Tensor steps;         // [T * sizeof(Step)] bytes: the replaying call's step structs
  uint64_t last_use = 0;
};

// Each captured loop holds its buffers and its graph's memory: at most this many per step type,
// the least recently used one replaced.
constexpr size_t kMaxCapturedLoops = 8;

// The captured loops of one step type. Never destroyed (like the cuBLAS handles): at exit the
// CUDA allocator their graphs would return memory to may be gone.
template <class Step>
struct CapturedLoops {
  std::mutex mutex;  // held from lookup to the end of a call's enqueued work
  std::vector<std::unique_ptr<CapturedLoop>> loops;
  uint64_t uses = 0;

  static CapturedLoops& instance() {
    static auto* loops = new CapturedLoops();
    return *loops;
  }

  CapturedLoop* find(const CapturedLoopKey& key) {
    for (const auto& loop : loops) {
      if (loop->key == key) return loop.get();
    }
    return nullptr;
  }

  // Captures gemm + step for s = 0 .. T-1 on a side stream (graphs cannot capture the default
  // stream); replays then run on key.stream, the current stream here.
  CapturedLoop* capture(const CapturedLoopKey& key, const Tensor& h, const Tensor& w) {
    if (loops.size() >= kMaxCapturedLoops) evict_least_recent();
    auto loop = std::make_unique<CapturedLoop>();
    loop->key = key;
    loop->h = at::empty({key.B, key.P}, h.options());
    loop->hh = at::empty({key.B, key.N}, h.options());
    loop->steps = at::empty({key.T * static_cast<int64_t>(sizeof(Step))},
                            h.options().dtype(at::kByte));
    // Made on the replay stream, so that cuBLASLt's workspace is that stream's.
    const StepGemm recurrent(w, /*transposed=*/true, key.T * key.B);
    const Step* steps = static_cast<const Step*>(loop->steps.data_ptr());
    loop->graph = std::make_unique<at::cuda::CUDAGraph>();
    {
      const c10::cuda::CUDAStreamGuard side(c10::cuda::getStreamFromPool());
      loop->graph->capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
      for (int64_t s = 0; s < key.T; ++s) {
        recurrent(loop->hh, loop->h, /*accumulate=*/false);
        launch_cuda_from_device(steps + s, key.B, key.H);
      }
      loop->graph->capture_end();
    }
    loops.push_back(std::move(loop));
    return loops.back().get();
  }

  void evict_least_recent() {
    auto oldest = loops.begin();
    for (auto it = loops.begin(); it != loops.end(); ++it) {
      if ((*it)->last_use < (*oldest)->last_use) oldest = it;
    }
    // A replay may still run: its graph's memory returns to the allocator when it is destroyed.
    C10_CUDA_CHECK(cudaStreamSynchronize((*oldest)->key.stream));
    loops.erase(oldest);
  }
};

// The stepwise forward loop of recurrent_loop.h (hh = h · W_hhᵀ, then step_at(t), for each step)
// replayed from a captured graph, where FUSED_RNN_STEPWISE_GRAPHS=1 asks for it and nothing
// rules it out: not CUDA, not a half type, state dropout (its masked copy of h is made per
// step), fewer than 2 steps, or a capture already running on this stream (the caller's own
// graph). Returns whether it ran. h [B, P] (h_0 in, h_T out); w [N, P]; the step writes H columns a row.
template <class StepAt>
bool graphed_forward(int64_t T, bool reverse, const Tensor& h, const Tensor& w, int64_t H,
                     const StateDropout& dropout, const StepAt& step_at) {
  using Step = decltype(step_at(int64_t{0}));
  using scalar_t = typename Step::scalar_type;
  static_assert(std::is_trivially_copyable_v<Step>, "a step must be a plain struct");
  constexpr bool half = std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>;
  if (!half || !h.is_cuda() || !stepwise_graphs_requested() || dropout.active() || T < 2 ||
      h.size(0) == 0) {
    return false;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  if (status != cudaStreamCaptureStatusNone) return false;

  const CapturedLoopKey key{static_cast<int>(h.device().index()), stream, T, h.size(0), h.size(1),
                            H, w.size(0), w.data_ptr(), w.stride(0)};
  CapturedLoops<Step>& cache = CapturedLoops<Step>::instance();
  const std::lock_guard<std::mutex> lock(cache.mutex);
  CapturedLoop* loop = cache.find(key);
  if (loop == nullptr) loop = cache.capture(key, h, w);
  loop->last_use = ++cache.uses;

  // This call's structs, pointed at the loop's state and hh, into the loop's buffer (from
  // pinned memory: the caching host allocator keeps it alive until the copy has run).
  std::vector<Step> steps;
  steps.reserve(T);
  for (int64_t s = 0; s < T; ++s) {
    Step step = step_at(time_at(s, T, reverse));
    step.h = loop->h.template data_ptr<scalar_t>();
    step.hh = loop->hh.template data_ptr<scalar_t>();
    steps.push_back(step);
  }
  const int64_t bytes = T * static_cast<int64_t>(sizeof(Step));
  Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), steps.data(), bytes);
  loop->steps.copy_(host, /*non_blocking=*/true);
  loop->h.copy_(h);
  loop->graph->replay();
  h.copy_(loop->h);
  return true;
}

}  // namespace fused_rnn
#endif  // FUSED_RNN_WITH_CUDA
