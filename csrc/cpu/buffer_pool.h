// Reused host memory for the sequence buffers (x_proj, y, saved gates, their gradients).
//
// Why: these are tens of megabytes each, and glibc hands such blocks back to the kernel when
// they are freed, so every training step page-faults them in again: measured on the 2-core CI
// machine, LSTM `mid` training spent ~90 of ~310 ms in page faults. Blocks freed here are kept
// (up to a cap) and given to the next request of a similar size, as a CUDA caching allocator
// does. The tensors are ordinary CPU tensors, except that their storage cannot be resized.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace fused_rnn {
namespace cpu {

// at::empty(sizes, options) for a CPU tensor; blocks of at least kMinPooledBytes come from the pool.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// Frees every block the pool holds (fused_rnn.release_cpu_buffers()); returns the bytes freed.
int64_t release_pooled_buffers();

// Bytes the pool holds, not in use.
int64_t pooled_bytes();

constexpr int64_t kMinPooledBytes = int64_t{1} << 20;

}  // namespace cpu
}  // namespace fused_rnn
