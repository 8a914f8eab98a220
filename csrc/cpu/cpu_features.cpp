// Which SIMD kernels this CPU can run. Compiled for the baseline ISA: it runs before we know.
#include "fused_rnn/launch.h"

namespace fused_rnn {

#ifdef FUSED_RNN_CPU_AVX2
bool cpu_has_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
}
#endif

}  // namespace fused_rnn
