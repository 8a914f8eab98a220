// The pointwise math of every cell, forward and backward: the single source of truth that the
// CPU and CUDA kernels both call. Everything here works on the compute type (float for
// float/half/bfloat16 storage, double for double) and knows nothing about memory layout.
//
// Conventions (torch.nn's): pre-activations a = W_ih x + b_ih + W_hh h + b_hh, split per gate.
//   LSTM (gates i, f, g, o), optional diagonal peepholes p_i, p_f, p_o (zero = plain LSTM):
//     i = σ(a_i + p_i c), f = σ(a_f + p_f c), g = tanh(a_g), c' = f c + i g,
//     o = σ(a_o + p_o c'), h' = o tanh(c')
//   GRU (gates r, z, n), reset_after (torch/cuDNN): n = tanh(a_n^x + r (W_hn h + b_hn))
//                        reset_before (TF GRUCell): n = tanh(a_n^x + W_hn (r h) + b_hn)
//     h' = (1 - z) n + z h
//   Elman: h' = act(a), act = tanh or relu.
// Backward functions take the gradient flowing into the step's outputs and return the gradients
// of its pre-activations and of the previous state; all derivatives are written through the
// saved activations (σ' = s(1-s), tanh' = 1-t²), so no pre-activation has to be stored.
//
// T is a scalar (float, double) or, in the CPU kernels, a SIMD vector (at::vec::Vectorized) that
// computes 8 or 4 neighbouring elements at once: so the math is written with arithmetic
// operators and the helpers below only, never with branches on values.
#pragma once

#include <cmath>
#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FUSED_RNN_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Forced: a shared library's inline functions may be interposed, so without it GCC called the
// SIMD tanh through the PLT from every step and spilled the step's vectors around the call.
#define FUSED_RNN_HD inline __attribute__((always_inline))
#else
#define FUSED_RNN_HD inline
#endif

namespace fused_rnn {
namespace math {

FUSED_RNN_HD float exp_(float x) { return ::expf(x); }
FUSED_RNN_HD double exp_(double x) { return ::exp(x); }
FUSED_RNN_HD float tanh_(float x) { return ::tanhf(x); }
FUSED_RNN_HD double tanh_(double x) { return ::tanh(x); }
FUSED_RNN_HD float relu_(float x) { return x > 0.f ? x : 0.f; }
FUSED_RNN_HD double relu_(double x) { return x > 0. ? x : 0.; }
// dh where h = relu(a) > 0, else 0.
FUSED_RNN_HD float relu_grad(float dh, float h) { return h > 0.f ? dh : 0.f; }
FUSED_RNN_HD double relu_grad(double dh, double h) { return h > 0. ? dh : 0.; }

// The same for SIMD vector types (host only): ATen's Vectorized methods. Comparisons give
// all-ones lanes, so `&` selects and `|` turns a lane into NaN.
// exp: exp_u20, for float a degree-5 polynomial, cheaper than SLEEF's exp; sigmoid built on it
// stays within 4e-7 relative error wherever its result is a normal float. For double it is
// SLEEF's exp. It clamps its argument, which turns NaN into a number, so NaN is put back.
template <typename V>
FUSED_RNN_HD V exp_(const V& x) { return x.exp_u20() | x.isnan(); }
// tanh: for float, a third of the cost of SLEEF's tanh, within 3e-7 relative error. Large |x|:
// tanh|x| = (1 - e) / (1 + e), e = exp(-2|x|), which loses digits to the cancellation in 1 - e as
// |x| -> 0; below 0.625 an odd polynomial x + x^3 p(x^2) (fitted to tanh's relative error on
// [0, 0.625]) takes over. Double keeps SLEEF's tanh.
template <typename V>
FUSED_RNN_HD V tanh_(const V& x) {
  if constexpr (std::is_same_v<typename V::value_type, float>) {
    const V a = x.abs();
    const V e = (a * V(-2.f)).exp_u20();
    const V u = a * a;
    const V p = fmadd(fmadd(fmadd(V(0.0151963579f), u, V(-0.0519485474f)), u, V(0.133081868f)), u,
                      V(-0.333323419f));
    const V tanh_a = V::blendv((V(1.f) - e) / (V(1.f) + e), fmadd(a * u, p, a), a < V(0.625f));
    return (tanh_a | (x & V(-0.f))) | x.isnan();  // x's sign; NaN stays NaN
  } else {
    return x.tanh();
  }
}
template <typename V>
FUSED_RNN_HD V relu_(const V& x) { return maximum(x, V(0)); }
template <typename V>
FUSED_RNN_HD V relu_grad(const V& dh, const V& h) { return dh & (h > V(0)); }

template <typename T>
FUSED_RNN_HD T sigmoid(T x) {
  return T(1) / (T(1) + exp_(T(0) - x));
}

// ---------------------------------------------------------------------------------------- Elman
template <typename T>
FUSED_RNN_HD T elman_forward(T a, bool relu) {
  return relu ? relu_(a) : tanh_(a);
}

// dh: gradient w.r.t. h' = act(a); h: the saved h'. Returns d a.
template <typename T>
FUSED_RNN_HD T elman_backward(T dh, T h, bool relu) {
  return relu ? relu_grad(dh, h) : dh * (T(1) - h * h);
}

// ----------------------------------------------------------------------------------------- LSTM
template <typename T>
struct LstmActivations {
  T i, f, g, o;  // gate activations
  T c, h;        // new cell and hidden state
};

template <typename T>
FUSED_RNN_HD LstmActivations<T> lstm_forward(T a_i, T a_f, T a_g, T a_o, T c_prev, T p_i, T p_f,
                                             T p_o) {
  LstmActivations<T> s;
  s.i = sigmoid(a_i + p_i * c_prev);
  s.f = sigmoid(a_f + p_f * c_prev);
  s.g = tanh_(a_g);
  s.c = s.f * c_prev + s.i * s.g;
  s.o = sigmoid(a_o + p_o * s.c);
  s.h = s.o * tanh_(s.c);
  return s;
}

template <typename T>
struct LstmGradients {
  T a_i, a_f, a_g, a_o;  // d pre-activations (the peephole terms' gradients follow from these)
  T c_prev;              // d c_{t-1}
};

// dh: d h' (output + recurrence); dc: d c' arriving from step t+1. i, f, g, o, c are the saved
// activations of this step, c_prev the previous cell state.
template <typename T>
FUSED_RNN_HD LstmGradients<T> lstm_backward(T dh, T dc, T i, T f, T g, T o, T c, T c_prev, T p_i,
                                            T p_f, T p_o) {
  LstmGradients<T> d;
  const T tc = tanh_(c);
  d.a_o = dh * tc * o * (T(1) - o);
  // c' feeds h' = o tanh(c'), the next step, and the output gate's peephole.
  const T dc_total = dc + dh * o * (T(1) - tc * tc) + d.a_o * p_o;
  d.a_i = dc_total * g * i * (T(1) - i);
  d.a_f = dc_total * c_prev * f * (T(1) - f);
  d.a_g = dc_total * i * (T(1) - g * g);
  d.c_prev = dc_total * f + d.a_i * p_i + d.a_f * p_f;
  return d;
}

// ------------------------------------------------------------------------------------------ GRU
template <typename T>
FUSED_RNN_HD T gru_new_state(T n, T z, T h_prev) {
  return (T(1) - z) * n + z * h_prev;
}

// Gradients of h' = (1-z) n + z h through z and n, shared by both GRU variants.
template <typename T>
struct GruGradients {
  T a_z;     // d pre-activation of z
  T a_n;     // d pre-activation of n (inside the tanh)
  T h_prev;  // the direct part of d h_{t-1}: dh z (the part through r comes from the caller)
};

template <typename T>
FUSED_RNN_HD GruGradients<T> gru_backward_zn(T dh, T z, T n, T h_prev) {
  GruGradients<T> d;
  d.a_z = dh * (h_prev - n) * z * (T(1) - z);
  d.a_n = dh * (T(1) - z) * (T(1) - n * n);
  d.h_prev = dh * z;
  return d;
}

// d pre-activation of r, given the gradient of the quantity r multiplies (its "partner"):
//   reset_after:  partner = W_hn h + b_hn, d partner-product = d a_n
//   reset_before: partner = h_prev,        d (r h) = d a_n W_hn (a GEMM done by the caller)
template <typename T>
FUSED_RNN_HD T gru_backward_r(T d_product, T partner, T r) {
  return d_product * partner * r * (T(1) - r);
}

}  // namespace math
}  // namespace fused_rnn
