// The CPU pointwise steps with AVX2 + FMA vectors: 8 floats (4 doubles) of a row per call.
// This file alone is compiled for AVX2 (the pragma below); launch.h calls it only after
// cpu_has_avx2(). It holds nothing but the row loops (steps_simd.h), so that no code built for
// AVX2 can be shared with (and picked by the linker for) the baseline build.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c")
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define FUSED_RNN_RUN_BLOCK run_block_avx2

#include "steps_simd.h"

#endif
