// Runs one step's element function over a (rows, cols) grid on the tensors' device.
// CPU: at::parallel_for over the flattened grid. CUDA: one thread per element on the current
// stream (definitions in csrc/cuda/launch_cuda.cuh, instantiated per step type in csrc/cuda/*.cu).
#pragma once

#include <ATen/Parallel.h>
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace fused_rnn {

template <class Step>
void launch_cpu(const Step& step, int64_t rows, int64_t cols) {
  // An element costs a few exp/tanh: split only when there are enough of them to pay for threads.
  constexpr int64_t kGrain = 8192;
  at::parallel_for(0, rows * cols, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) step(idx / cols, idx % cols);
  });
}

#ifdef FUSED_RNN_WITH_CUDA
template <class Step>
void launch_cuda(const Step& step, int64_t rows, int64_t cols);
#endif

template <class Step>
void launch_step(const Step& step, int64_t rows, int64_t cols, const c10::Device& device) {
  if (rows * cols == 0) return;
  if (device.is_cpu()) return launch_cpu(step, rows, cols);
#ifdef FUSED_RNN_WITH_CUDA
  if (device.is_cuda()) return launch_cuda(step, rows, cols);
#endif
  TORCH_CHECK(false, "fused_rnn: no kernels for device ", device, " in this build");
}

}  // namespace fused_rnn
