// Which SIMD kernels this CPU can run. Compiled for the baseline ISA: it runs before we know.
#include "fused_rnn/launch.h"

#include <ATen/Version.h>

#include <string>

namespace fused_rnn {

#ifdef FUSED_RNN_CPU_AVX2
namespace {
// ATen's own level ("DEFAULT", "AVX2", "AVX512"), which ATEN_CPU_CAPABILITY can lower: ours
// follows it, so that one variable runs both libraries at the level of an older CPU (the tests
// run the AVX2 and scalar kernels that way on an AVX-512 machine).
const std::string& aten_capability() {
  static const std::string capability = at::get_cpu_capability();
  return capability;
}
}  // namespace

bool cpu_has_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                aten_capability() != "DEFAULT";
  return supported;
}

bool cpu_has_avx512() {
  // What steps_avx512.cpp is compiled for (ATen's AVX512 level); also checks the OS saves zmm.
  static const bool supported = cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512dq") &&
                                __builtin_cpu_supports("avx512vl") && aten_capability() == "AVX512";
  return supported;
}

bool aten_blas_runs_avx512() {
  static const bool intel = cpu_has_avx512() && __builtin_cpu_is("intel");
  return intel;
}
#endif

}  // namespace fused_rnn
