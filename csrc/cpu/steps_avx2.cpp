// The CPU pointwise steps with AVX2 + FMA vectors: 8 floats (4 doubles) of a row per call.
// This file alone is compiled for AVX2 (the pragma below); launch.h calls it only after
// cpu_has_avx2(). It holds nothing but the row loops (steps_simd.h), so that no code built for
// AVX2 can be shared with (and picked by the linker for) the baseline build.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c")
// The pragma enables the instructions but, unlike -mavx2, does not define the feature macros
// that SLEEF's and ATen's headers test; this file is AVX2 code, so it says so itself.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define FUSED_RNN_RUN_BLOCK run_block_avx2

#include "steps_simd.h"

#endif
