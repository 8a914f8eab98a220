// The sizes that fix the packed GEMM's layout and blocking (packed_gemm.h). Constants only, so
// that the AVX-512 kernel file can include it without any inline code.
#pragma once

#include <cstdint>

namespace fused_rnn {
namespace cpu {

constexpr int64_t kChunk = 16;  // columns per chunk (floats per AVX-512 vector)
constexpr int64_t kMaxChunksPerPanel = 4;
// Rows of A per register tile: 6 rows x 4 vectors = 24 accumulators of the 32 zmm registers.
constexpr int64_t kTileRows = 6;
// K is walked in blocks of this many rows of a panel, so that the panel's slice (up to
// 128 x 64 floats = 32 KiB) stays in L1 while the row tiles of A stream past it.
constexpr int64_t kBlockK = 128;
// cpu::gemm's blocks of C: kGroupRows rows x kGroupPanels panels (96 x 1024 floats, 384 KiB),
// small enough to stay in L2 while all of K passes.
constexpr int64_t kGroupRows = 16 * kTileRows;
constexpr int64_t kGroupPanels = 16;

}  // namespace cpu
}  // namespace fused_rnn
