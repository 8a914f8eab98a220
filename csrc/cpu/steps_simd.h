// The body shared by the SIMD builds of the pointwise steps (steps_avx2.cpp, steps_avx512.cpp):
// the math of cell_math.h evaluated on at::vec::Vectorized (exp and tanh: ATen's exp_u20 for
// float, SLEEF for double), one vector of a row per call. The including file first selects its
// instruction set and defines FUSED_RNN_RUN_BLOCK, the name of the function it exports (declared
// in launch.h).
// ATen puts Vectorized in a namespace named after the instruction set, and VecIO is local to
// each file, so no two builds share a symbol.
//
// Both builds are at least AVX2 + FMA + F16C. Their pragmas enable the instructions but, unlike
// -mavx2, do not define the feature macros that SLEEF's and ATen's headers test, so they are
// defined here (the AVX-512 build adds its own).
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
void FUSED_RNN_RUN_BLOCK(const Step& step, int64_t row_begin, int64_t row_end, int64_t col_begin,
                         int64_t col_end) {
  using T = typename Step::scalar_type;
  constexpr int64_t width = at::vec::Vectorized<T>::size();
  const VecIO<T> full{width};
  for (int64_t b = row_begin; b < row_end; ++b) {
    int64_t j = col_begin;
    for (; j + width <= col_end; j += width) step.apply(full, b, j);
    if (j < col_end) step.apply(VecIO<T>{col_end - j}, b, j);
  }
}

#define FUSED_RNN_INSTANTIATE_SIMD(StepTemplate)                                                   \
  template void FUSED_RNN_RUN_BLOCK(const StepTemplate<float>&, int64_t, int64_t, int64_t,        \
                                    int64_t);                                                       \
  template void FUSED_RNN_RUN_BLOCK(const StepTemplate<double>&, int64_t, int64_t, int64_t, int64_t);

FUSED_RNN_INSTANTIATE_SIMD(ElmanForwardStep)
FUSED_RNN_INSTANTIATE_SIMD(ElmanBackwardStep)
FUSED_RNN_INSTANTIATE_SIMD(LstmForwardStep)
FUSED_RNN_INSTANTIATE_SIMD(LstmBackwardStep)
FUSED_RNN_INSTANTIATE_SIMD(GruForwardStep)
FUSED_RNN_INSTANTIATE_SIMD(GruBackwardStep)
FUSED_RNN_INSTANTIATE_SIMD(GruResetBeforeGatesStep)
FUSED_RNN_INSTANTIATE_SIMD(GruResetBeforeStateStep)
FUSED_RNN_INSTANTIATE_SIMD(GruResetBeforeBackwardZnStep)
FUSED_RNN_INSTANTIATE_SIMD(GruResetBeforeBackwardRStep)
FUSED_RNN_INSTANTIATE_SIMD(MaskedStateStep)
FUSED_RNN_INSTANTIATE_SIMD(ProjectionCarryStep)

}  // namespace fused_rnn
