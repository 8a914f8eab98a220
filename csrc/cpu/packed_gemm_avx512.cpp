// packed_gemm's inner kernel (packed_gemm_kernel.h) with AVX-512: tiles of up to 6 rows x a
// whole panel (4 vectors of 16 floats). This file alone is compiled for AVX-512 (the pragma
// below); packed_gemm.cpp calls it only after cpu_has_avx512().
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f")
#include <immintrin.h>

namespace fused_rnn {
namespace cpu {
namespace {
struct Vec {
  using Reg = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kRegisters = 32;
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  static Reg broadcast(float x) { return _mm512_set1_ps(x); }
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
};
}  // namespace
}  // namespace cpu
}  // namespace fused_rnn

#define FUSED_RNN_PANEL_BLOCK panel_block_avx512
#include "packed_gemm_kernel.h"

#endif
