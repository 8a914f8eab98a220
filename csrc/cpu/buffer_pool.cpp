#include "buffer_pool.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>

#include "fused_rnn/check_message.h"

namespace fused_rnn {
namespace cpu {
namespace {

// Blocks are rounded up to this, so that buffers of nearly the same size share blocks.
constexpr int64_t kGranule = int64_t{1} << 16;
// Free blocks beyond this many bytes are returned to the system (largest first).
constexpr int64_t kMaxPooledBytes = int64_t{4} << 30;

class Pool {
 public:
  void* take(int64_t bytes) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      // The smallest free block that fits, if it wastes at most a quarter of itself.
      const auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first - bytes <= it->first / 4) {
        void* block = it->second;
        free_bytes_ -= it->first;
        size_of_[block] = it->first;
        free_.erase(it);
        return block;
      }
    }
    void* block = std::aligned_alloc(64, static_cast<size_t>(bytes));
    TORCH_CHECK(block != nullptr,
                message("fused_rnn: out of memory allocating ", bytes, " bytes"));
    const std::lock_guard<std::mutex> lock(mutex_);
    size_of_[block] = bytes;
    return block;
  }

  void give_back(void* block) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto it = size_of_.find(block);
    TORCH_INTERNAL_ASSERT(it != size_of_.end());
    free_.emplace(it->second, block);
    free_bytes_ += it->second;
    size_of_.erase(it);
    while (free_bytes_ > kMaxPooledBytes) {
      const auto largest = std::prev(free_.end());
      free_bytes_ -= largest->first;
      std::free(largest->second);
      free_.erase(largest);
    }
  }

  int64_t release() {
    const std::lock_guard<std::mutex> lock(mutex_);
    const int64_t released = free_bytes_;
    for (const auto& entry : free_) std::free(entry.second);
    free_.clear();
    free_bytes_ = 0;
    return released;
  }

  int64_t free_bytes() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return free_bytes_;
  }

 private:
  std::mutex mutex_;
  std::multimap<int64_t, void*> free_;  // bytes -> block, not in use
  std::map<void*, int64_t> size_of_;    // block in use -> bytes
  int64_t free_bytes_ = 0;
};

// Never destroyed: tensors from the pool may outlive static destruction at exit.
Pool& pool() {
  static Pool* instance = new Pool();
  return *instance;
}

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_INTERNAL_ASSERT(options.device().is_cpu());
  int64_t numel = 1;
  for (const int64_t size : sizes) numel *= size;
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(options.dtype().toScalarType()));
  if (bytes < kMinPooledBytes) return at::empty(sizes, options);
  const int64_t rounded = (bytes + kGranule - 1) / kGranule * kGranule;
  void* block = pool().take(rounded);
  return at::from_blob(block, sizes, [](void* data) { pool().give_back(data); }, options);
}

int64_t release_pooled_buffers() { return pool().release(); }

int64_t pooled_bytes() { return pool().free_bytes(); }

}  // namespace cpu
}  // namespace fused_rnn
