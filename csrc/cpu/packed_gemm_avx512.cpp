// The AVX-512 inner kernel of packed_gemm (csrc/cpu/packed_gemm.h): a block of K rows of one
// panel of packed B times rows of A, in register tiles of 6 rows x the panel's vectors.
// Only this file is compiled for AVX-512 (the pragma below), and it holds nothing but plain
// functions of raw pointers, so that no inline library code built for AVX-512 can be picked by
// the linker for the baseline build. Callers check cpu_has_avx512() first.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f")
#include <immintrin.h>

#include <cstdint>

#include "packed_layout.h"

namespace fused_rnn {
namespace cpu {
namespace {

struct Tile {
  const float* a;                // A row 0 of the tile; A(r, k) = a[r * lda_r + k * lda_k]
  int64_t lda_r, lda_k;
  const float* panel;            // row k of the panel (NV vectors) at panel + k * ld_panel
  int64_t ld_panel;
  int64_t k0, k1;                // the block of K this call covers
  float* const* c_chunk;         // [NV] output row 0 of each 16-column chunk
  int64_t ldc;
  bool accumulate;               // C += ..., else C = bias + ... (or 0 + ...)
  const float* const* bias_chunk;  // [NV] bias of each chunk's columns, or nullptr
};

// C tile (MR rows x NV vectors of 16) = start + A[0:MR, k0:k1] · panel[k0:k1, 0:NV*16].
template <int MR, int NV>
void tile(const Tile& t) {
  __m512 acc[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = t.accumulate   ? _mm512_loadu_ps(t.c_chunk[v] + r * t.ldc)
                  : t.bias_chunk ? _mm512_loadu_ps(t.bias_chunk[v])
                                 : _mm512_setzero_ps();
    }
  }
  for (int64_t k = t.k0; k < t.k1; ++k) {
    const float* b_row = t.panel + k * t.ld_panel;
    __m512 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ps(b_row + v * 16);
    for (int r = 0; r < MR; ++r) {
      const __m512 a_rk = _mm512_set1_ps(t.a[r * t.lda_r + k * t.lda_k]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a_rk, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(t.c_chunk[v] + r * t.ldc, acc[r][v]);
  }
}

template <int NV>
void panel_rows(Tile t, int64_t rows) {
  float* const* c_chunk = t.c_chunk;
  const float* a = t.a;
  for (int64_t r0 = 0, tile_rows = 0; r0 < rows; r0 += tile_rows) {
    // The fewest tiles, of balanced heights: 8 rows go as 4 + 4, not 6 + 2 (a 2-row tile
    // loads 6 vectors for 8 FMAs). Measured on the 2-core AMD EPYC, LSTM T = 1000, B = 8,
    // H = 128, one thread: 10.9 ms against 11.3 with 6 + 2.
    const int64_t tiles = (rows - r0 + kTileRows - 1) / kTileRows;
    tile_rows = (rows - r0 + tiles - 1) / tiles;
    float* c_rows[NV];
    for (int v = 0; v < NV; ++v) c_rows[v] = c_chunk[v] + r0 * t.ldc;
    t.c_chunk = c_rows;
    t.a = a + r0 * t.lda_r;
    switch (tile_rows) {
      case 1: tile<1, NV>(t); break;
      case 2: tile<2, NV>(t); break;
      case 3: tile<3, NV>(t); break;
      case 4: tile<4, NV>(t); break;
      case 5: tile<5, NV>(t); break;
      default: tile<6, NV>(t); break;
    }
  }
}

}  // namespace

// Rows [0, rows) of A times rows [k0, k1) of one panel of `chunks` (1..4) vectors (row k at
// panel + k * ld_panel); c_chunk[v] is
// where output row 0 of chunk v lives, bias_chunk[v] (or nullptr) the bias of its columns. The
// caller walks K in blocks (kBlockK in packed_layout.h).
void panel_block_avx512(const float* a, int64_t lda_r, int64_t lda_k, int64_t rows,
                        const float* panel, int64_t ld_panel, int64_t k0, int64_t k1,
                        int64_t chunks, float* const* c_chunk, int64_t ldc, bool accumulate,
                        const float* const* bias_chunk) {
  const Tile t{a, lda_r, lda_k, panel, ld_panel, k0, k1, c_chunk, ldc, accumulate, bias_chunk};
  switch (chunks) {
    case 1: return panel_rows<1>(t, rows);
    case 2: return panel_rows<2>(t, rows);
    case 3: return panel_rows<3>(t, rows);
    default: return panel_rows<4>(t, rows);
  }
}

}  // namespace cpu
}  // namespace fused_rnn
#endif
