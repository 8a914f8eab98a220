// packed_gemm's inner kernel (packed_gemm_kernel.h) with AVX2 + FMA: tiles of up to 6 rows x one
// chunk of 16 columns (2 vectors of 8 floats), for CPUs without AVX-512. This file alone is
// compiled for AVX2 (the pragma below); packed_gemm.cpp calls it only after cpu_has_avx2().
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma")
#include <immintrin.h>

namespace fused_rnn {
namespace cpu {
namespace {
struct Vec {
  using Reg = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kRegisters = 16;
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, Reg v) { _mm256_storeu_ps(p, v); }
  static Reg broadcast(float x) { return _mm256_set1_ps(x); }
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
};
}  // namespace
}  // namespace cpu
}  // namespace fused_rnn

#define FUSED_RNN_PANEL_BLOCK panel_block_avx2
#include "packed_gemm_kernel.h"

#endif
