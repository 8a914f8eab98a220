// A float GEMM for the CPU recurrence, C (+)= A · B, where B is a weight matrix packed once per
// sequence into column panels (packed_gemm_kernel.h, built for AVX-512 and for AVX2 + FMA).
//
// Why our own: each time step multiplies a small state matrix (B rows) by the same W_hh. ATen's
// GEMM repacks W_hh and pays its call overhead on every step, and on AMD CPUs MKL runs its AVX2
// code; packed once, W_hh stays in cache and the step runs near the FMA peak.
// Measured with the AVX2 kernel too (AVX-512 disabled: ATEN_CPU_CAPABILITY=avx2 on the 2-core
// AMD EPYC): see fused_rnn's README, CPU section.
//
// Layout. The output columns are grouped in chunks of 16 contiguous columns (one AVX-512 vector,
// two AVX2 vectors);
// a panel is up to 4 chunks that need not be adjacent: for an LSTM, panel p holds the columns of
// hidden units [16p, 16p + 16) of all four gates, so one worker owns everything its pointwise
// step needs. A panel is stored k-major: panel[k][v * 16 + u] = B(k, chunk_col[v] + u).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "fused_rnn/launch.h"
#include "packed_layout.h"

namespace fused_rnn {
namespace cpu {

// Whether this CPU runs the packed GEMM: AVX2 + FMA, with AVX-512 where it has it (launch.h).
inline bool cpu_has_packed_gemm() {
#ifdef FUSED_RNN_CPU_AVX2
  return cpu_has_avx2();
#else
  return false;
#endif
}

class PackedMatrix {
 public:
  // B(k, n) = src[k * stride_k + n * stride_n], k in [0, K). chunk_cols[i] is the first output
  // column of chunk i; consecutive runs of `chunks_per_panel` chunks form the panels.
  // Panels are packed in parallel (at::parallel_for).
  PackedMatrix(const float* src, int64_t stride_k, int64_t stride_n, int64_t K,
               const std::vector<int64_t>& chunk_cols, int64_t chunks_per_panel);
  // All N columns in order, four chunks a panel (N % 16 == 0): B for a plain GEMM.
  static PackedMatrix all_columns(const float* src, int64_t stride_k, int64_t stride_n, int64_t K,
                                  int64_t N);

  int64_t K() const { return K_; }
  int64_t panels() const { return static_cast<int64_t>(panel_offset_.size()); }
  int64_t chunks(int64_t panel) const { return panel_chunks_[panel]; }
  // The packed floats' size.
  int64_t bytes() const { return storage_.nbytes(); }
  Panel panel(int64_t p) const;
  // The first output column of chunk v of a panel.
  int64_t chunk_col(int64_t panel, int64_t v) const { return chunk_cols_[panel * per_panel_ + v]; }

 private:
  int64_t K_;
  int64_t per_panel_;
  std::vector<int64_t> chunk_cols_;     // [chunks]
  std::vector<int64_t> panel_chunks_;   // [panels] chunks in each panel (the last may have fewer)
  std::vector<int64_t> panel_offset_;   // [panels] float offset of each panel in data_
  at::Tensor storage_;  // float [sum over panels of K * chunks * 16 (+ 16)], 64-byte aligned
  float* data_;         // storage_'s data
};

// For panels [panel_begin, panel_end) of b: C(r, cols) (+)= sum_k A(r, k) B(k, cols) for rows
// r in [0, rows), with A(r, k) = a[r * lda_r + k * lda_k] and C row r at c + r * ldc.
// accumulate = false overwrites C. Runs on the calling thread; requires cpu_has_packed_gemm().
void packed_gemm(const float* a, int64_t lda_r, int64_t lda_k, int64_t rows, const PackedMatrix& b,
                 int64_t panel_begin, int64_t panel_end, float* c, int64_t ldc, bool accumulate);

// A whole GEMM on all threads, for the large products outside the time loop (input
// projection, weight gradients): C [M, N] (+)= A [M, K] · B [K, N] with
//   A(r, k) = a[r * lda_r + k * lda_k], B(k, n) = b[k * ldb_k + n * ldb_n], C row r at c + r * ldc.
// Without accumulate, C starts from the row vector bias [N] when given (else 0). B is packed
// first unless gemm_reads_b_in_place; an A read down its columns (lda_k != 1) is gathered per
// block into a buffer of each thread's. Splits the rows of C between the threads. Requires
// N % 16 == 0, K > 0 and cpu_has_packed_gemm().
// A weight gradient's B (A read down its columns, K = T·B) is a sequence-sized activation:
// packing would copy it whole, so a row-major one is read in place (its A is gathered block by
// block instead, packed_layout.h kGatheredA). Every other B is packed once (it is weight-sized): measured, d x =
// d_pre · W_ih ran at ~400 GF/s with W_ih in place and ~475 packed.
inline bool gemm_reads_b_in_place(int64_t lda_k, int64_t ldb_n) { return ldb_n == 1 && lda_k != 1; }

void gemm(const float* a, int64_t lda_r, int64_t lda_k, const float* b, int64_t ldb_k,
          int64_t ldb_n, float* c, int64_t ldc, int64_t M, int64_t K, int64_t N, bool accumulate,
          const float* bias = nullptr);

}  // namespace cpu
}  // namespace fused_rnn
