// The CPU pointwise steps with AVX-512 vectors: 16 floats (8 doubles) of a row per call, so one
// vector covers exactly the 16 hidden units of a packed-recurrence panel (recurrence.h).
// Compiled for AVX-512 by the pragma below; launch.h calls it only after cpu_has_avx512().
// Like steps_avx2.cpp it holds nothing but the row loops of steps_simd.h.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
// The AVX-512 feature macros that SLEEF's and ATen's headers test (the AVX2 ones are defined by
// steps_simd.h).
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define FUSED_RNN_RUN_BLOCK run_block_avx512

#include "steps_simd.h"

#endif
