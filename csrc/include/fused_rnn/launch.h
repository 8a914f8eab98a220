// Runs one step's element function over a (rows, cols) grid on the tensors' device.
// CPU: at::parallel_for over rows; each row runs with SIMD vectors for float and double on CPUs
// with AVX-512 (csrc/cpu/steps_avx512.cpp) or AVX2 + FMA (steps_avx2.cpp), element by element
// otherwise. CUDA: one thread per
// element on the current stream (csrc/cuda/launch_cuda.cuh, instantiated per step in *.cu).
#pragma once

#include <ATen/Parallel.h>
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "fused_rnn/check_message.h"

namespace fused_rnn {

#if defined(__x86_64__) && defined(__GNUC__)
#define FUSED_RNN_CPU_AVX2 1
// Whether this CPU runs the AVX2 + FMA (AVX-512) kernels; checked once (csrc/cpu/cpu_features.cpp).
bool cpu_has_avx2();
bool cpu_has_avx512();
// Whether ATen's BLAS (MKL in x86 torch) runs its AVX-512 GEMM here: MKL picks its code by CPU
// vendor, AVX-512 on Intel CPUs only (AVX2 on AMD's).
bool aten_blas_runs_avx512();
// Rows [row_begin, row_end) x columns [col_begin, col_end) of a float or double step with AVX2
// vectors (csrc/cpu/steps_avx2.cpp).
template <class Step>
void run_block_avx2(const Step& step, int64_t row_begin, int64_t row_end, int64_t col_begin,
                    int64_t col_end);
// The same with AVX-512 vectors (csrc/cpu/steps_avx512.cpp).
template <class Step>
void run_block_avx512(const Step& step, int64_t row_begin, int64_t row_end, int64_t col_begin,
                      int64_t col_end);
#endif

// One block of a step on the calling thread: SIMD where it can, element by element otherwise.
template <class Step>
void run_cpu_block(const Step& step, int64_t row_begin, int64_t row_end, int64_t col_begin,
                   int64_t col_end) {
  using T = typename Step::scalar_type;
#ifdef FUSED_RNN_CPU_AVX2
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    if (cpu_has_avx512()) return run_block_avx512(step, row_begin, row_end, col_begin, col_end);
    if (cpu_has_avx2()) return run_block_avx2(step, row_begin, row_end, col_begin, col_end);
  }
#endif
  for (int64_t b = row_begin; b < row_end; ++b) {
    for (int64_t j = col_begin; j < col_end; ++j) step(b, j);
  }
}

template <class Step>
void launch_cpu(const Step& step, int64_t rows, int64_t cols) {
  // An element costs a few exp/tanh: split only when there are enough of them to pay for threads.
  const int64_t grain_rows = std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain_rows, [&](int64_t row_begin, int64_t row_end) {
    run_cpu_block(step, row_begin, row_end, 0, cols);
  });
}

#ifdef FUSED_RNN_WITH_CUDA
template <class Step>
void launch_cuda(const Step& step, int64_t rows, int64_t cols);
// The step's struct at `step` in device memory (for CUDA graphs: sequence/graphed_loop.h).
template <class Step>
void launch_cuda_from_device(const Step* step, int64_t rows, int64_t cols);
// Loads launch_cuda_from_device's kernel now (float, half types): a kernel first loaded while
// a stream is being captured (CUDA's lazy loading) could fail the capture.
template <class Step>
void load_cuda_from_device_kernel();
#endif

template <class Step>
void launch_step(const Step& step, int64_t rows, int64_t cols, const c10::Device& device) {
  if (rows * cols == 0) return;
  if (device.is_cpu()) return launch_cpu(step, rows, cols);
#ifdef FUSED_RNN_WITH_CUDA
  if (device.is_cuda()) return launch_cuda(step, rows, cols);
#endif
  TORCH_CHECK(false, message("fused_rnn: no kernels for device ", device, " in this build"));
}

}  // namespace fused_rnn
