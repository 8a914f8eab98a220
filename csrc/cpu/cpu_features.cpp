// Which SIMD kernels this CPU can run. Compiled for the baseline ISA: it runs before we know.
#include "fused_rnn/launch.h"

namespace fused_rnn {

#ifdef FUSED_RNN_CPU_AVX2
bool cpu_has_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
}

bool cpu_has_avx512() {
  // What steps_avx512.cpp is compiled for (ATen's AVX512 level); also checks the OS saves zmm.
  static const bool supported = cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512dq") &&
                                __builtin_cpu_supports("avx512vl");
  return supported;
}
#endif

}  // namespace fused_rnn
