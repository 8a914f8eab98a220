// fp16 and bf16 on the CPU: the time loops run in float32, with the tensors widened on the way in
// and the results narrowed on the way out, so the ops keep their contract (outputs, saved
// activations and gradients in the input's dtype; the LSTM's c_all in float32, as for every half
// type). Why: the CPU kernels for half types are generic element-by-element code, several times
// slower than the float32 SIMD and packed-GEMM paths (tests/test_autocast.py and the benchmarks'
// CPU bf16 rows), and autocast sends bf16 work here. A product of two bf16 (or fp16) values is
// exact in float32 and the steps' math already ran in float32, so the one difference is that h
// is carried between steps in float32 instead of being rounded to the half type at every step:
// the same or smaller error against float64.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <utility>

namespace fused_rnn {
namespace cpu {

inline bool is_half(const at::Tensor& t) {
  return t.defined() && (t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16);
}

inline at::Tensor widen(const at::Tensor& t) { return is_half(t) ? t.to(at::kFloat) : t; }

inline std::optional<at::Tensor> widen(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return t;
  return widen(*t);
}

template <class T>
T widen(T value) {  // bools, strings: as they are
  return value;
}

// Narrows a widened call's results to the half type of its first argument, except the one at
// index KeepFloat (-1: none), which the op's contract keeps in float32 (the LSTM's c_all).
template <int KeepFloat = -1>
struct NarrowResults {
  template <class... Results, class First, class... Rest>
  std::tuple<Results...> operator()(std::tuple<Results...> results, const First& first,
                                    const Rest&...) const {
    const at::ScalarType half = first.scalar_type();
    return narrow(std::move(results), half, std::index_sequence_for<Results...>{});
  }

 private:
  template <class Tuple, size_t... I>
  static Tuple narrow(Tuple results, at::ScalarType half, std::index_sequence<I...>) {
    return {(static_cast<int>(I) == KeepFloat ? std::get<I>(results)
                                              : std::get<I>(results).to(half))...};
  }
};

// The op `Impl` with its half-type calls run in float32. `Narrow` maps the float32 results
// back to the dtypes of the op's contract, given the original arguments.
template <auto Impl, class Narrow>
struct HalfAsFloat;

template <class Ret, class... Args, Ret (*Impl)(Args...), class Narrow>
struct HalfAsFloat<Impl, Narrow> {
  static Ret call(Args... args) {
    const at::Tensor& first = std::get<0>(std::forward_as_tuple(args...));
    if (!is_half(first)) return Impl(args...);
    return Narrow{}(Impl(widen(args)...), args...);
  }
};

}  // namespace cpu
}  // namespace fused_rnn
