// CUDA launcher for the pointwise steps of fused_rnn/cell_steps.h: one thread per (row, column)
// element, on the current stream, checked after every launch.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>

#include "fused_rnn/launch.h"

namespace fused_rnn {

// 32-bit index arithmetic: a step covers B * max(H, P) elements, far below 2^31.
template <class Step>
__global__ void step_kernel(const Step step, int32_t count, int32_t cols) {
  for (int32_t idx = blockIdx.x * blockDim.x + threadIdx.x; idx < count;
       idx += gridDim.x * blockDim.x) {
    step(idx / cols, idx % cols);
  }
}

template <class Step>
void launch_cuda(const Step& step, int64_t rows, int64_t cols) {
  const int64_t count = rows * cols;
  TORCH_CHECK(count < (int64_t{1} << 31), message("fused_rnn: B * hidden_size = ", count,
                                                  " is too large for one step (limit 2^31)"));
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>((count + kThreads - 1) / kThreads, 1 << 16);
  step_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      step, static_cast<int32_t>(count), static_cast<int32_t>(cols));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The same, with the step's struct read from device memory (`step`, one struct): a CUDA graph
// replays the launch unchanged while each call writes its own struct there
// (sequence/graphed_loop.h). Every thread reads the same struct: one broadcast load.
template <class Step>
__global__ void step_kernel_from_device(const Step* step, int32_t count, int32_t cols) {
  const Step own = *step;
  for (int32_t idx = blockIdx.x * blockDim.x + threadIdx.x; idx < count;
       idx += gridDim.x * blockDim.x) {
    own(idx / cols, idx % cols);
  }
}

template <class Step>
void launch_cuda_from_device(const Step* step, int64_t rows, int64_t cols) {
  const int64_t count = rows * cols;
  TORCH_CHECK(count < (int64_t{1} << 31), message("fused_rnn: B * hidden_size = ", count,
                                                  " is too large for one step (limit 2^31)"));
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>((count + kThreads - 1) / kThreads, 1 << 16);
  step_kernel_from_device<<<static_cast<unsigned>(blocks), kThreads, 0,
                            at::cuda::getCurrentCUDAStream()>>>(step, static_cast<int32_t>(count),
                                                                static_cast<int32_t>(cols));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class Step>
void load_cuda_from_device_kernel() {
  cudaFuncAttributes attributes;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, step_kernel_from_device<Step>));
}

}  // namespace fused_rnn

// Instantiates the launcher of one step template for every supported storage type.
#define FUSED_RNN_INSTANTIATE_CUDA_STEP(StepTemplate)                                          \
  template void fused_rnn::launch_cuda(const fused_rnn::StepTemplate<float>&, int64_t, int64_t); \
  template void fused_rnn::launch_cuda(const fused_rnn::StepTemplate<double>&, int64_t, int64_t); \
  template void fused_rnn::launch_cuda(const fused_rnn::StepTemplate<c10::Half>&, int64_t,       \
                                       int64_t);                                                 \
  template void fused_rnn::launch_cuda(const fused_rnn::StepTemplate<c10::BFloat16>&, int64_t,   \
                                       int64_t);

// The same for launch_cuda_from_device (the steps that sequence/graphed_loop.h replays).
#define FUSED_RNN_INSTANTIATE_CUDA_STEP_FROM_DEVICE(StepTemplate)                                  \
  template void fused_rnn::load_cuda_from_device_kernel<fused_rnn::StepTemplate<float>>();         \
  template void fused_rnn::load_cuda_from_device_kernel<fused_rnn::StepTemplate<c10::Half>>();     \
  template void fused_rnn::load_cuda_from_device_kernel<fused_rnn::StepTemplate<c10::BFloat16>>(); \
  template void fused_rnn::launch_cuda_from_device(const fused_rnn::StepTemplate<float>*, int64_t, \
                                                   int64_t);                                       \
  template void fused_rnn::launch_cuda_from_device(const fused_rnn::StepTemplate<double>*,         \
                                                   int64_t, int64_t);                              \
  template void fused_rnn::launch_cuda_from_device(const fused_rnn::StepTemplate<c10::Half>*,      \
                                                   int64_t, int64_t);                              \
  template void fused_rnn::launch_cuda_from_device(const fused_rnn::StepTemplate<c10::BFloat16>*,  \
                                                   int64_t, int64_t);
