// The sizes that fix the packed GEMM's layout and blocking (packed_gemm.h), and the view of one
// panel that its kernel reads. Constants and plain data only, so that the kernel files (AVX-512,
// AVX2) can include it without any inline code.
#pragma once

#include <cstdint>

namespace fused_rnn {
namespace cpu {

constexpr int64_t kChunk = 16;  // columns per chunk (floats per AVX-512 vector, two AVX2 vectors)
constexpr int64_t kMaxChunksPerPanel = 4;
// Rows of A per register tile: 6 rows x 4 vectors = 24 accumulators of the 32 zmm registers.
constexpr int64_t kTileRows = 6;
// How a GEMM walks its operands: C in blocks of `rows` rows x `panels` panels, which stay in L2
// while all of K passes in blocks of `k` rows; within a block each register tile's accumulators
// stay in registers (the tile's start and end, loading and storing its C rows, is paid once per
// K block), and the panels' K block meets all of the group's row tiles.
struct Blocking {
  int64_t rows, panels, k;
};
// A read along its rows (input projection, d x, the recurrence): long K blocks, the panel's
// block (up to 1024 x 64 floats, 256 KiB) read from L2, whose bandwidth 6-row tiles do not
// exceed. Measured on the 2-core AMD EPYC (AVX-512), one thread, 265 GF/s FMA peak: K blocks of
// 128 ran at 200-240 GF/s, of 1024 at 250-258.
constexpr Blocking kRowMajorA{64 * kTileRows, 4, 1024};
// A read down its columns (a weight gradient's d_preᵀ, where K = T·B): each k of a tile would be
// another row of A, another page (TLB misses, no prefetch across pages: ~180 GF/s on one thread),
// so each thread first gathers the block's rows of A, k by k, into a buffer of its own (384 KiB)
// and the tiles read that like a row-major A. Measured on the 2-core AMD EPYC, dW = d_preᵀ · x at
// mid (K = 6400, 2048 x 512), both cores busy: 181 GF/s a thread read in place in blocks of
// 96 x 16 x 128, 212 gathered in blocks of 384 x 16 x 256.
constexpr Blocking kGatheredA{64 * kTileRows, 16, 256};
// The recurrence's GEMMs (packed_gemm: B rows of h times the thread's panels) read h along its
// rows.
constexpr int64_t kBlockK = kRowMajorA.k;

// One panel of B as the kernel reads it: row k of the panel (its `chunks` vectors of 16 columns,
// side by side) starts at data + k * ld. A packed panel has ld = chunks * 16; a row-major B is
// used in place, its panel p being columns [64p, 64p + 64) with ld = B's row stride.
struct Panel {
  const float* data;
  int64_t ld;
  int64_t chunks;                       // 1 .. kMaxChunksPerPanel
  int64_t first_col[kMaxChunksPerPanel];  // the output column of each chunk's first lane
};

}  // namespace cpu
}  // namespace fused_rnn
