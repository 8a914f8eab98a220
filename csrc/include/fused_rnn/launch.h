// Runs one step's element function over a (rows, cols) grid on the tensors' device.
// CPU: at::parallel_for over rows; each row runs with SIMD vectors (csrc/cpu/steps_avx2.cpp) for
// float and double on CPUs with AVX2 + FMA, element by element otherwise. CUDA: one thread per
// element on the current stream (csrc/cuda/launch_cuda.cuh, instantiated per step in *.cu).
#pragma once

#include <ATen/Parallel.h>
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace fused_rnn {

#if defined(__x86_64__) && defined(__GNUC__)
#define FUSED_RNN_CPU_AVX2 1
// Whether this CPU runs the AVX2 + FMA kernels (checked once; csrc/cpu/cpu_features.cpp).
bool cpu_has_avx2();
// Rows [row_begin, row_end) of a float or double step with AVX2 vectors (csrc/cpu/steps_avx2.cpp).
template <class Step>
void run_rows_avx2(const Step& step, int64_t row_begin, int64_t row_end, int64_t cols);
#endif

template <class Step>
void launch_cpu(const Step& step, int64_t rows, int64_t cols) {
  using T = typename Step::scalar_type;
  // An element costs a few exp/tanh: split only when there are enough of them to pay for threads.
  const int64_t grain_rows = std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain_rows, [&](int64_t row_begin, int64_t row_end) {
#ifdef FUSED_RNN_CPU_AVX2
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      if (cpu_has_avx2()) return run_rows_avx2(step, row_begin, row_end, cols);
    }
#endif
    for (int64_t b = row_begin; b < row_end; ++b) {
      for (int64_t j = 0; j < cols; ++j) step(b, j);
    }
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
