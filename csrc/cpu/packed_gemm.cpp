// PackedMatrix (packing runs once per sequence, in the baseline ISA) and the panel loop of
// packed_gemm; the inner kernel (packed_gemm_kernel.h) is built for AVX-512 and for AVX2.
#include "packed_gemm.h"

#include "buffer_pool.h"
#include "fused_rnn/launch.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

namespace fused_rnn {
namespace cpu {

#if defined(__x86_64__) && defined(__GNUC__)
// packed_gemm_avx512.cpp and packed_gemm_avx2.cpp (packed_gemm_kernel.h)
void panel_block_avx512(const float* a, int64_t lda_r, int64_t lda_k, int64_t rows,
                        const float* panel, int64_t ld_panel, int64_t k0, int64_t k1,
                        int64_t chunks, float* const* c_chunk, int64_t ldc, bool accumulate,
                        const float* const* bias_chunk);
void panel_block_avx2(const float* a, int64_t lda_r, int64_t lda_k, int64_t rows,
                      const float* panel, int64_t ld_panel, int64_t k0, int64_t k1,
                      int64_t chunks, float* const* c_chunk, int64_t ldc, bool accumulate,
                      const float* const* bias_chunk);
#endif

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
  // From the buffer pool: a fresh block of this size (megabytes: W_hh, or the B of a weight
  // gradient) would be page-faulted in on every call, which cost as much as the packing itself.
  // Pool and ATen blocks are 64-byte aligned; one extra vector keeps the size non-zero.
  storage_ = pooled_empty({total + kChunk}, at::TensorOptions().dtype(at::kFloat));
  data_ = storage_.data_ptr<float>();
  TORCH_INTERNAL_ASSERT(reinterpret_cast<uintptr_t>(data_) % 64 == 0);
  at::parallel_for(0, panels(), 1, [&](int64_t panel_begin, int64_t panel_end) {
    for (int64_t p = panel_begin; p < panel_end; ++p) {
      const int64_t n = panel_chunks_[p], row = n * kChunk;
      float* const dst = data_ + panel_offset_[p];
      // 16 x 16 blocks (16 rows k of one chunk), each read along the source's contiguous
      // direction, so that every cache line read is used whole while it is in L1. (The plain
      // k, chunk, column order reads W [N, K] 16 rows apart per vector: 2.5x slower.)
      for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
        const int64_t k1 = std::min(k0 + kChunk, K);
        for (int64_t v = 0; v < n; ++v) {
          const float* block = src + chunk_col(p, v) * stride_n;
          float* out = dst + v * kChunk;
          if (stride_k <= stride_n) {
            for (int64_t u = 0; u < kChunk; ++u) {
              for (int64_t k = k0; k < k1; ++k) out[k * row + u] = block[k * stride_k + u * stride_n];
            }
          } else {
            for (int64_t k = k0; k < k1; ++k) {
              for (int64_t u = 0; u < kChunk; ++u) out[k * row + u] = block[k * stride_k + u * stride_n];
            }
          }
        }
      }
    }
  });
}

PackedMatrix PackedMatrix::all_columns(const float* src, int64_t stride_k, int64_t stride_n,
                                       int64_t K, int64_t N) {
  std::vector<int64_t> chunk_cols;
  for (int64_t n = 0; n < N; n += kChunk) chunk_cols.push_back(n);
  return PackedMatrix(src, stride_k, stride_n, K, chunk_cols, kMaxChunksPerPanel);
}

Panel PackedMatrix::panel(int64_t p) const {
  Panel view{data_ + panel_offset_[p], panel_chunks_[p] * kChunk, panel_chunks_[p], {}};
  for (int64_t v = 0; v < view.chunks; ++v) view.first_col[v] = chunk_col(p, v);
  return view;
}

namespace {

#if defined(__x86_64__) && defined(__GNUC__)
// Rows [0, rows) of A times rows [k0, k1) of a panel of B, into C (starting from `bias` [N]
// when given and not accumulating).
void panel_block(const float* a, int64_t lda_r, int64_t lda_k, int64_t rows, const Panel& panel,
                 int64_t k0, int64_t k1, float* c, int64_t ldc, bool accumulate,
                 const float* bias = nullptr) {
  float* c_chunk[kMaxChunksPerPanel];
  const float* bias_chunk[kMaxChunksPerPanel];
  for (int64_t v = 0; v < panel.chunks; ++v) {
    c_chunk[v] = c + panel.first_col[v];
    bias_chunk[v] = bias ? bias + panel.first_col[v] : nullptr;
  }
  auto* kernel = cpu_has_avx512() ? &panel_block_avx512 : &panel_block_avx2;
  kernel(a, lda_r, lda_k, rows, panel.data, panel.ld, k0, k1, panel.chunks, c_chunk, ldc,
         accumulate, bias ? bias_chunk : nullptr);
}

// Panel p of a row-major B [K, N] (row stride ldb), read in place.
Panel row_major_panel(const float* b, int64_t ldb, int64_t N, int64_t p) {
  const int64_t first = p * kMaxChunksPerPanel * kChunk;
  Panel view{b + first, ldb, std::min(kMaxChunksPerPanel, (N - first) / kChunk), {}};
  for (int64_t v = 0; v < view.chunks; ++v) view.first_col[v] = first + v * kChunk;
  return view;
}

// A(r, k) for r in [0, rows), k in [k0, k1), with A(r, k) = a[r * lda_r + k * lda_k], into
// out[(k - k0) * rows + r]: row k of the block is one contiguous copy when lda_r == 1.
void gather_rows(const float* a, int64_t lda_r, int64_t lda_k, int64_t rows, int64_t k0,
                 int64_t k1, float* out) {
  for (int64_t k = k0; k < k1; ++k, out += rows) {
    const float* src = a + k * lda_k;
    if (lda_r == 1) {
      std::copy(src, src + rows, out);
    } else {
      for (int64_t r = 0; r < rows; ++r) out[r] = src[r * lda_r];
    }
  }
}
#endif

}  // namespace

void packed_gemm(const float* a, int64_t lda_r, int64_t lda_k, int64_t rows, const PackedMatrix& b,
                 int64_t panel_begin, int64_t panel_end, float* c, int64_t ldc, bool accumulate) {
#if defined(__x86_64__) && defined(__GNUC__)
  TORCH_INTERNAL_ASSERT(cpu_has_packed_gemm(), "fused_rnn: packed_gemm needs AVX2 + FMA");
  for (int64_t p = panel_begin; p < panel_end; ++p) {
    const Panel panel = b.panel(p);
    for (int64_t k0 = 0; k0 < b.K(); k0 += kBlockK) {
      const int64_t k1 = std::min(k0 + kBlockK, b.K());
      panel_block(a, lda_r, lda_k, rows, panel, k0, k1, c, ldc, accumulate || k0 > 0);
    }
  }
#else
  TORCH_INTERNAL_ASSERT(false, "fused_rnn: packed_gemm needs AVX2 + FMA");
#endif
}

void gemm(const float* a, int64_t lda_r, int64_t lda_k, const float* b, int64_t ldb_k,
          int64_t ldb_n, float* c, int64_t ldc, int64_t M, int64_t K, int64_t N, bool accumulate,
          const float* bias) {
#if defined(__x86_64__) && defined(__GNUC__)
  TORCH_INTERNAL_ASSERT(cpu_has_packed_gemm() && N % kChunk == 0 && K > 0,
                        "fused_rnn: cpu::gemm needs AVX2 + FMA, N % 16 == 0 and K > 0");
  if (M == 0 || N == 0) return;
  const bool in_place = gemm_reads_b_in_place(lda_k, ldb_n);
  std::optional<PackedMatrix> packed;
  if (!in_place) packed.emplace(PackedMatrix::all_columns(b, ldb_k, ldb_n, K, N));
  const int64_t panels = (N / kChunk + kMaxChunksPerPanel - 1) / kMaxChunksPerPanel;
  auto panel_at = [&](int64_t p) { return in_place ? row_major_panel(b, ldb_k, N, p) : packed->panel(p); };
  // A read down its columns is gathered block by block (kGatheredA in packed_layout.h).
  const bool gather_a = lda_k != 1;
  const Blocking blocking = gather_a ? kGatheredA : kRowMajorA;
  const int64_t tiles = (M + kTileRows - 1) / kTileRows;
  at::parallel_for(0, tiles, 1, [&](int64_t tile_begin, int64_t tile_end) {
    const int64_t r_begin = tile_begin * kTileRows, r_end = std::min(tile_end * kTileRows, M);
    // This thread's gathered block of A: [k1 - k0][rows], A(r0 + r, k) at [(k - k0) * rows + r].
    static thread_local std::vector<float> gathered;
    if (gather_a) gathered.resize(blocking.rows * blocking.k);
    for (int64_t r0 = r_begin; r0 < r_end; r0 += blocking.rows) {
      const int64_t rows = std::min(blocking.rows, r_end - r0);
      for (int64_t p0 = 0; p0 < panels; p0 += blocking.panels) {
        const int64_t p1 = std::min(p0 + blocking.panels, panels);
        for (int64_t k0 = 0; k0 < K; k0 += blocking.k) {
          const int64_t k1 = std::min(k0 + blocking.k, K);
          const float* a_block = a + r0 * lda_r;
          int64_t block_lda_r = lda_r, block_lda_k = lda_k, block_k0 = k0, block_k1 = k1;
          if (gather_a) {
            gather_rows(a_block, lda_r, lda_k, rows, k0, k1, gathered.data());
            a_block = gathered.data();
            block_lda_r = 1, block_lda_k = rows, block_k0 = 0, block_k1 = k1 - k0;
          }
          for (int64_t p = p0; p < p1; ++p) {
            // The kernel walks rows [block_k0, block_k1) of A and of the panel alike: shift
            // the panel to the block's first row when A is the gathered block.
            Panel panel = panel_at(p);
            if (gather_a) panel.data += k0 * panel.ld;
            panel_block(a_block, block_lda_r, block_lda_k, rows, panel, block_k0, block_k1,
                        c + r0 * ldc, ldc, accumulate || k0 > 0, bias);
          }
        }
      }
    }
  });
#else
  TORCH_INTERNAL_ASSERT(false, "fused_rnn: cpu::gemm needs AVX2 + FMA");
#endif
}

}  // namespace cpu
}  // namespace fused_rnn
