// The CPU pointwise steps with AVX2 + FMA vectors: 8 floats (4 doubles) of a row per call, the
// math of cell_math.h evaluated on at::vec::Vectorized (SLEEF exp/tanh, as ATen's own kernels).
// This file alone is compiled for AVX2 (the pragma below); launch.h calls it only after
// cpu_has_avx2(). It holds nothing but the row loops, so that no code built for AVX2 can be
// shared with (and picked by the linker for) the baseline build.
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

#include <ATen/cpu/vec/vec.h>

#include "fused_rnn/cell_steps.h"
#include "fused_rnn/launch.h"

namespace fused_rnn {
namespace {

// `count` neighbouring elements at a time (the vector width, fewer at a row's end).
template <typename T>
struct VecIO {
  using V = at::vec::Vectorized<T>;
  int64_t count;

  V load(const T* p, int64_t k) const {
    return count == V::size() ? V::loadu(p + k) : V::loadu(p + k, count);
  }
  void store(T* p, int64_t k, const V& v) const {
    if (count == V::size()) {
      v.store(p + k);
    } else {
      v.store(p + k, count);
    }
  }
  V load_or_zero(const T* p, int64_t k) const { return p ? load(p, k) : V(0); }
};

}  // namespace

template <class Step>
void run_rows_avx2(const Step& step, int64_t row_begin, int64_t row_end, int64_t cols) {
  using T = typename Step::scalar_type;
  constexpr int64_t width = at::vec::Vectorized<T>::size();
  const VecIO<T> full{width};
  for (int64_t b = row_begin; b < row_end; ++b) {
    int64_t j = 0;
    for (; j + width <= cols; j += width) step.apply(full, b, j);
    if (j < cols) step.apply(VecIO<T>{cols - j}, b, j);
  }
}

#define FUSED_RNN_INSTANTIATE_AVX2(StepTemplate)                                            \
  template void run_rows_avx2(const StepTemplate<float>&, int64_t, int64_t, int64_t);  \
  template void run_rows_avx2(const StepTemplate<double>&, int64_t, int64_t, int64_t);

FUSED_RNN_INSTANTIATE_AVX2(ElmanForwardStep)
FUSED_RNN_INSTANTIATE_AVX2(ElmanBackwardStep)
FUSED_RNN_INSTANTIATE_AVX2(LstmForwardStep)
FUSED_RNN_INSTANTIATE_AVX2(LstmBackwardStep)
FUSED_RNN_INSTANTIATE_AVX2(GruForwardStep)
FUSED_RNN_INSTANTIATE_AVX2(GruBackwardStep)
FUSED_RNN_INSTANTIATE_AVX2(GruResetBeforeGatesStep)
FUSED_RNN_INSTANTIATE_AVX2(GruResetBeforeStateStep)
FUSED_RNN_INSTANTIATE_AVX2(GruResetBeforeBackwardZnStep)
FUSED_RNN_INSTANTIATE_AVX2(GruResetBeforeBackwardRStep)
FUSED_RNN_INSTANTIATE_AVX2(MaskedStateStep)
FUSED_RNN_INSTANTIATE_AVX2(ProjectionCarryStep)

}  // namespace fused_rnn
#endif
