// How the recurrent weights are packed for the CPU's fused recurrence (recurrence.h).
#include "recurrence.h"

#include <vector>

namespace fused_rnn {
namespace cpu {

int64_t units_per_panel(int64_t gates, bool forward) {
  return forward && gates > 1 ? kChunk : kChunk * kMaxChunksPerPanel;
}

PackedMatrix pack_for_forward(const float* w_hh, int64_t gates, int64_t H, int64_t P) {
  // Output column g*H + j of hh = h · W_hhᵀ is row g*H + j of W_hh: B(k, n) = w_hh[n * P + k].
  std::vector<int64_t> chunk_cols;
  const int64_t units = units_per_panel(gates, /*forward=*/true);
  for (int64_t first = 0; first < H; first += units) {
    for (int64_t g = 0; g < gates; ++g) {
      for (int64_t j = first; j < std::min(first + units, H); j += kChunk) {
        chunk_cols.push_back(g * H + j);
      }
    }
  }
  const int64_t per_panel = gates > 1 ? gates : kMaxChunksPerPanel;
  return PackedMatrix(w_hh, /*stride_k=*/1, /*stride_n=*/P, /*K=*/P, chunk_cols, per_panel);
}

PackedMatrix pack_for_backward(const float* w_hh, int64_t gates, int64_t H, int64_t P) {
  // dh = d_pre · W_hh: B(k, n) = w_hh[k * P + n] for k in [0, gates*H), n in [0, P).
  std::vector<int64_t> chunk_cols;
  for (int64_t j = 0; j < P; j += kChunk) chunk_cols.push_back(j);
  return PackedMatrix(w_hh, /*stride_k=*/P, /*stride_n=*/1, /*K=*/gates * H, chunk_cols,
                      kMaxChunksPerPanel);
}

}  // namespace cpu
}  // namespace fused_rnn
