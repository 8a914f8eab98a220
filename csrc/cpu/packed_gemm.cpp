// PackedMatrix (packing runs once per sequence, in the baseline ISA) and the panel loop of
// packed_gemm; the AVX-512 inner kernel is in packed_gemm_avx512.cpp.
#include "packed_gemm.h"

#include "fused_rnn/launch.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>

namespace fused_rnn {
namespace cpu {

#if defined(__x86_64__) && defined(__GNUC__)
// packed_gemm_avx512.cpp
void panel_block_avx512(const float* a, int64_t lda_r, int64_t lda_k, int64_t rows,
                        const float* panel, int64_t k0, int64_t k1, int64_t chunks,
                        float* const* c_chunk, int64_t ldc, bool accumulate,
                        const float* const* bias_chunk);
#endif

void PackedMatrix::FreeAligned::operator()(float* p) const { std::free(p); }

PackedMatrix::PackedMatrix(const float* src, int64_t stride_k, int64_t stride_n, int64_t K,
                           const std::vector<int64_t>& chunk_cols, int64_t chunks_per_panel)
    : K_(K), per_panel_(chunks_per_panel), chunk_cols_(chunk_cols) {
  TORCH_INTERNAL_ASSERT(chunks_per_panel >= 1 && chunks_per_panel <= kMaxChunksPerPanel);
  const int64_t chunks = static_cast<int64_t>(chunk_cols.size());
  int64_t total = 0;
  for (int64_t first = 0; first < chunks; first += per_panel_) {
    const int64_t n = std::min(per_panel_, chunks - first);
    panel_chunks_.push_back(n);
    panel_offset_.push_back(total);
    total += K * n * kChunk;
  }
  // aligned_alloc wants a multiple of the alignment; one extra vector keeps it non-zero.
  const size_t bytes = static_cast<size_t>(total + kChunk) * sizeof(float);
  data_.reset(static_cast<float*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
  TORCH_CHECK(data_ != nullptr,
              message("fused_rnn: could not allocate ", bytes, " bytes for packed weights"));
  at::parallel_for(0, panels(), 1, [&](int64_t panel_begin, int64_t panel_end) {
    for (int64_t p = panel_begin; p < panel_end; ++p) {
      float* dst = data_.get() + panel_offset_[p];
      const int64_t n = panel_chunks_[p];
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t v = 0; v < n; ++v) {
          const float* col = src + k * stride_k + chunk_col(p, v) * stride_n;
          for (int64_t u = 0; u < kChunk; ++u) *dst++ = col[u * stride_n];
        }
      }
    }
  });
}

namespace {

#if defined(__x86_64__) && defined(__GNUC__)
// Rows [0, rows) of A times rows [k0, k1) of panel p of b, into C (starting from `bias` [N]
// when given and not accumulating).
void panel_block(const float* a, int64_t lda_r, int64_t lda_k, int64_t rows, const PackedMatrix& b,
                 int64_t p, int64_t k0, int64_t k1, float* c, int64_t ldc, bool accumulate,
                 const float* bias = nullptr) {
  float* c_chunk[kMaxChunksPerPanel];
  const float* bias_chunk[kMaxChunksPerPanel];
  for (int64_t v = 0; v < b.chunks(p); ++v) {
    c_chunk[v] = c + b.chunk_col(p, v);
    bias_chunk[v] = bias ? bias + b.chunk_col(p, v) : nullptr;
  }
  panel_block_avx512(a, lda_r, lda_k, rows, b.panel_data(p), k0, k1, b.chunks(p), c_chunk, ldc,
                     accumulate, bias ? bias_chunk : nullptr);
}
#endif

}  // namespace

void packed_gemm(const float* a, int64_t lda_r, int64_t lda_k, int64_t rows, const PackedMatrix& b,
                 int64_t panel_begin, int64_t panel_end, float* c, int64_t ldc, bool accumulate) {
#if defined(__x86_64__) && defined(__GNUC__)
  TORCH_INTERNAL_ASSERT(cpu_has_avx512(), "fused_rnn: packed_gemm needs AVX-512");
  for (int64_t p = panel_begin; p < panel_end; ++p) {
    for (int64_t k0 = 0; k0 < b.K(); k0 += kBlockK) {
      const int64_t k1 = std::min(k0 + kBlockK, b.K());
      panel_block(a, lda_r, lda_k, rows, b, p, k0, k1, c, ldc, accumulate || k0 > 0);
    }
  }
#else
  TORCH_INTERNAL_ASSERT(false, "fused_rnn: packed_gemm needs AVX-512");
#endif
}

void gemm(const float* a, int64_t lda_r, int64_t lda_k, const float* b, int64_t ldb_k,
          int64_t ldb_n, float* c, int64_t ldc, int64_t M, int64_t K, int64_t N, bool accumulate,
          const float* bias) {
#if defined(__x86_64__) && defined(__GNUC__)
  TORCH_INTERNAL_ASSERT(cpu_has_avx512() && N % kChunk == 0 && K > 0,
                        "fused_rnn: cpu::gemm needs AVX-512, N % 16 == 0 and K > 0");
  if (M == 0 || N == 0) return;
  std::vector<int64_t> chunk_cols;
  for (int64_t n = 0; n < N; n += kChunk) chunk_cols.push_back(n);
  const PackedMatrix packed(b, ldb_k, ldb_n, K, chunk_cols, kMaxChunksPerPanel);
  // Each thread owns whole rows of C, in groups of kGroupRows, and walks a group's columns in
  // blocks of kGroupPanels panels (packed_layout.h): such a block of C stays in L2 while all of
  // K passes (it is read and written once per K block); within a K block the group's slice of
  // A stays in L2 while each panel's slice (in L1) meets its row tiles.
  const int64_t tiles = (M + kTileRows - 1) / kTileRows;
  at::parallel_for(0, tiles, 1, [&](int64_t tile_begin, int64_t tile_end) {
    const int64_t r_begin = tile_begin * kTileRows, r_end = std::min(tile_end * kTileRows, M);
    for (int64_t r0 = r_begin; r0 < r_end; r0 += kGroupRows) {
      const int64_t rows = std::min(kGroupRows, r_end - r0);
      for (int64_t p0 = 0; p0 < packed.panels(); p0 += kGroupPanels) {
        const int64_t p1 = std::min(p0 + kGroupPanels, packed.panels());
        for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
          const int64_t k1 = std::min(k0 + kBlockK, K);
          for (int64_t p = p0; p < p1; ++p) {
            panel_block(a + r0 * lda_r, lda_r, lda_k, rows, packed, p, k0, k1, c + r0 * ldc,
                        ldc, accumulate || k0 > 0, bias);
          }
        }
      }
    }
  });
#else
  TORCH_INTERNAL_ASSERT(false, "fused_rnn: cpu::gemm needs AVX-512");
#endif
}

}  // namespace cpu
}  // namespace fused_rnn
