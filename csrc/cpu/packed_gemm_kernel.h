// The inner kernel of packed_gemm (csrc/cpu/packed_gemm.h), written once for every vector width:
// a block of K rows of one panel of packed B times rows of A, in register tiles of up to
// kTileRows rows x the tile's vectors. Included only by the files that compile it for one
// instruction set (packed_gemm_avx512.cpp, packed_gemm_avx2.cpp), after their `#pragma GCC
// target`, with two things defined:
//   struct Vec: the vector type and its operations: `Reg`, `kLanes` floats a register, and
//     load(p), store(p, v), broadcast(x), zero(), fmadd(a, b, c) = a * b + c;
//   FUSED_RNN_PANEL_BLOCK: the name of the function it exports (declared in packed_gemm.cpp).
// `kChunksPerTile` (how many 16-column chunks one tile spans) follows from the register count.
// Everything here is in an unnamed namespace, so no two builds share a symbol, and it holds
// nothing but plain functions of raw pointers, so that no inline library code built for the
// wider ISA can be picked by the linker for the baseline build.
#include <cstdint>

#include "packed_layout.h"

namespace fused_rnn {
namespace cpu {
namespace {

constexpr int kRegsPerChunk = static_cast<int>(kChunk) / Vec::kLanes;
// The widest tile: 6 rows x kMaxRegs accumulators must leave room for the B row and the
// broadcast A value. AVX-512 (32 registers): 6 x 4 = 24, a whole panel of 4 chunks.
// AVX2 (16 registers): 6 x 2 = 12, one chunk of 16 columns.
constexpr int kMaxRegs = Vec::kRegisters >= 32 ? 4 : 2;
constexpr int kChunksPerTile = kMaxRegs / kRegsPerChunk;

struct Tile {
  const float* a;              // A row 0 of the tile; A(r, k) = a[r * lda_r + k * lda_k]
  int64_t lda_r, lda_k;
  const float* panel;          // the tile's first column in row k of the panel: panel + k * ld_panel
  int64_t ld_panel;
  int64_t k0, k1;              // the block of K this call covers
  float* c_reg[kMaxRegs];      // output row 0 of each register's kLanes columns
  int64_t ldc;
  bool accumulate;             // C += ..., else C = bias + ... (or 0 + ...)
  const float* bias_reg[kMaxRegs];  // bias of each register's columns, or all nullptr
};

// C tile (MR rows x NR registers) = start + A[0:MR, k0:k1] · panel[k0:k1, 0:NR*kLanes].
template <int MR, int NR>
void tile(const Tile& t) {
  typename Vec::Reg acc[MR][NR];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NR; ++v) {
      acc[r][v] = t.accumulate    ? Vec::load(t.c_reg[v] + r * t.ldc)
                  : t.bias_reg[0] ? Vec::load(t.bias_reg[v])
                                  : Vec::zero();
    }
  }
  for (int64_t k = t.k0; k < t.k1; ++k) {
    const float* b_row = t.panel + k * t.ld_panel;
    typename Vec::Reg b[NR];
    for (int v = 0; v < NR; ++v) b[v] = Vec::load(b_row + v * Vec::kLanes);
    for (int r = 0; r < MR; ++r) {
      const typename Vec::Reg a_rk = Vec::broadcast(t.a[r * t.lda_r + k * t.lda_k]);
      for (int v = 0; v < NR; ++v) acc[r][v] = Vec::fmadd(a_rk, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NR; ++v) Vec::store(t.c_reg[v] + r * t.ldc, acc[r][v]);
  }
}

template <int NR>
void panel_rows(Tile t, int64_t rows) {
  float* c_reg[kMaxRegs];
  for (int v = 0; v < NR; ++v) c_reg[v] = t.c_reg[v];
  const float* a = t.a;
  for (int64_t r0 = 0, tile_rows = 0; r0 < rows; r0 += tile_rows) {
    // The fewest tiles, of balanced heights: 8 rows go as 4 + 4, not 6 + 2 (a 2-row tile
    // loads 6 vectors for 8 FMAs). Measured on the 2-core AMD EPYC, LSTM T = 1000, B = 8,
    // H = 128, one thread: 10.9 ms against 11.3 with 6 + 2.
    const int64_t tiles = (rows - r0 + kTileRows - 1) / kTileRows;
    tile_rows = (rows - r0 + tiles - 1) / tiles;
    for (int v = 0; v < NR; ++v) t.c_reg[v] = c_reg[v] + r0 * t.ldc;
    t.a = a + r0 * t.lda_r;
    switch (tile_rows) {
      case 1: tile<1, NR>(t); break;
      case 2: tile<2, NR>(t); break;
      case 3: tile<3, NR>(t); break;
      case 4: tile<4, NR>(t); break;
      case 5: tile<5, NR>(t); break;
      default: tile<6, NR>(t); break;
    }
  }
}

// The tile widths this build has: 1..kMaxRegs registers.
void panel_rows_of_width(const Tile& t, int64_t rows, int regs) {
  if constexpr (kMaxRegs >= 4) {
    if (regs == 4) return panel_rows<4>(t, rows);
    if (regs == 3) return panel_rows<3>(t, rows);
  }
  if (regs == 2) return panel_rows<2>(t, rows);
  return panel_rows<1>(t, rows);
}

}  // namespace

// Rows [0, rows) of A times rows [k0, k1) of one panel of `chunks` (1..4) chunks of 16 columns
// (row k at panel + k * ld_panel); c_chunk[v] is where output row 0 of chunk v lives,
// bias_chunk[v] (or nullptr) the bias of its columns. The caller walks K in blocks (kBlockK in
// packed_layout.h). Tiles span kChunksPerTile chunks: the whole panel with AVX-512, one chunk at
// a time with AVX2.
void FUSED_RNN_PANEL_BLOCK(const float* a, int64_t lda_r, int64_t lda_k, int64_t rows,
                           const float* panel, int64_t ld_panel, int64_t k0, int64_t k1,
                           int64_t chunks, float* const* c_chunk, int64_t ldc, bool accumulate,
                           const float* const* bias_chunk) {
  for (int64_t v0 = 0; v0 < chunks; v0 += kChunksPerTile) {
    const int n = static_cast<int>(chunks - v0 < kChunksPerTile ? chunks - v0 : kChunksPerTile);
    Tile t{a, lda_r, lda_k, panel + v0 * kChunk, ld_panel, k0, k1, {}, ldc, accumulate, {}};
    for (int i = 0; i < n * kRegsPerChunk; ++i) {
      const int64_t v = v0 + i / kRegsPerChunk, lane0 = (i % kRegsPerChunk) * Vec::kLanes;
      t.c_reg[i] = c_chunk[v] + lane0;
      t.bias_reg[i] = bias_chunk ? bias_chunk[v] + lane0 : nullptr;
    }
    panel_rows_of_width(t, rows, n * kRegsPerChunk);
  }
}

}  // namespace cpu
}  // namespace fused_rnn
