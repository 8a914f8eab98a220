// One time step's fused pointwise pass of every cell, as plain structs of pointers with an
// element function `apply(io, b, j)`. The CUDA launcher runs one thread per (b, j) with ScalarIO;
// the CPU launcher runs each row b with a SIMD IO (8 columns at a time, csrc/cpu/) or ScalarIO.
// Both run exactly this code: `io` only decides how many neighbouring columns one call covers.
//
// A step works on rows b in [0, B) and columns j in [0, H) (or [0, P) for the projection
// steps). Buffer shapes are written next to each pointer; every buffer is contiguous. `scalar_t`
// is the storage type, `acc_t` the compute type (float for half and bfloat16).
//
// Length masking: row b is valid at step t when lengths == nullptr or t < lengths[b]. A masked
// row keeps its state, writes 0 to the output and to every saved activation (so that later
// reductions over all steps never see uninitialised or padded values), and its gradients pass
// straight through to the previous step.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "fused_rnn/cell_math.h"

namespace fused_rnn {

struct StepMask {
  const int64_t* lengths;  // [B] or nullptr (all sequences have length T)
  int64_t t;               // the time index this step processes
  FUSED_RNN_HD bool valid(int64_t b) const { return lengths == nullptr || t < lengths[b]; }
};

// One element at a time, in the compute type (float for half and bfloat16).
template <typename scalar_t>
struct ScalarIO {
  using V = at::opmath_type<scalar_t>;
  template <typename T>
  FUSED_RNN_HD V load(const T* p, int64_t k) const { return static_cast<V>(p[k]); }
  template <typename T>
  FUSED_RNN_HD void store(T* p, int64_t k, V v) const { p[k] = static_cast<T>(v); }
  // An optional vector (bias, peephole): 0 where absent.
  template <typename T>
  FUSED_RNN_HD V load_or_zero(const T* p, int64_t k) const { return p ? load(p, k) : V(0); }
};

// What every step declares: its storage type, and its element function for one element (b, j),
// which the CUDA kernel and the CPU's scalar fallback call.
#define FUSED_RNN_STEP_COMMON                                \
  using scalar_type = scalar_t;                              \
  FUSED_RNN_HD void operator()(int64_t b, int64_t j) const { \
    apply(ScalarIO<scalar_t>(), b, j);                       \
  }

// ============================================================================================ Elman
template <typename scalar_t>
struct ElmanForwardStep {
  StepMask mask;
  int64_t H;
  bool relu;
  const scalar_t* x_proj;  // [B, H]  W_ih x_t + b_ih
  const scalar_t* hh;      // [B, H]  W_hh h_{t-1}
  const scalar_t* b_hh;    // [H]     or nullptr
  scalar_t* h;             // [B, H]  state, updated in place
  scalar_t* y;             // [B, H]  output row of step t

  FUSED_RNN_STEP_COMMON
  template <class IO>
  FUSED_RNN_HD void apply(const IO& io, int64_t b, int64_t j) const {
    using V = typename IO::V;
    const int64_t k = b * H + j;
    if (!mask.valid(b)) {
      io.store(y, k, V(0));
      return;
    }
    const V a = io.load(x_proj, k) + io.load(hh, k) + io.load_or_zero(b_hh, j);
    const V h_new = math::elman_forward(a, relu);
    io.store(h, k, h_new);
    io.store(y, k, h_new);
  }
};

template <typename scalar_t>
struct ElmanBackwardStep {
  StepMask mask;
  int64_t H;
  bool relu;
  const scalar_t* grad_y;  // [B, H]  d loss / d y_t
  const scalar_t* y;       // [B, H]  saved h_t
  scalar_t* dh;            // [B, H]  in: d h_t from step t+1; out: the part of d h_{t-1} that
                           //         does not go through W_hh (the caller adds d a W_hh)
  scalar_t* d_a;           // [B, H]  d pre-activation = d x_proj_t = d hh_t

  FUSED_RNN_STEP_COMMON
  template <class IO>
  FUSED_RNN_HD void apply(const IO& io, int64_t b, int64_t j) const {
    using V = typename IO::V;
    const int64_t k = b * H + j;
    if (!mask.valid(b)) {  // y_t is a constant 0 here: dh passes through unchanged
      io.store(d_a, k, V(0));
      return;
    }
    const V dh_t = io.load(dh, k) + io.load(grad_y, k);
    io.store(d_a, k, math::elman_backward(dh_t, io.load(y, k), relu));
    io.store(dh, k, V(0));
  }
};

// ============================================================================================= LSTM
template <typename scalar_t>
struct LstmForwardStep {
  using acc_t = at::opmath_type<scalar_t>;
  StepMask mask;
  int64_t H;
  const scalar_t* x_proj;  // [B, 4H]  W_ih x_t + b_ih, gates i, f, g, o
  const scalar_t* hh;      // [B, 4H]  W_hh h_{t-1}
  const scalar_t* b_hh;    // [4H]     or nullptr
  const scalar_t* w_ch;    // [3H]     peepholes i, f, o, or nullptr
  acc_t* c;                // [B, H]   cell state, updated in place (kept in acc_t)
  // Without projection: h and y are set, m is nullptr. With projection: only m is set; the
  // caller projects m and then applies MaskedStateStep.
  scalar_t* h;             // [B, H]   hidden state, updated in place, or nullptr
  scalar_t* y;             // [B, H]   output row of step t, or nullptr
  scalar_t* m;             // [B, H]   o tanh(c) before projection, or nullptr
  scalar_t* gates;         // [B, 4H]  saved i, f, g, o for backward, or nullptr (inference)
  acc_t* c_saved;          // [B, H]   saved c_t for backward, or nullptr (inference)

  FUSED_RNN_STEP_COMMON
  template <class IO>
  FUSED_RNN_HD void apply(const IO& io, int64_t b, int64_t j) const {
    using V = typename IO::V;
    const int64_t k = b * H + j;
    const int64_t g0 = b * 4 * H + j;
    const V c_prev = io.load(c, k);
    if (!mask.valid(b)) {
      if (y) io.store(y, k, V(0));
      if (m) io.store(m, k, V(0));
      if (gates) {
        for (int q = 0; q < 4; ++q) io.store(gates, g0 + q * H, V(0));
      }
      if (c_saved) io.store(c_saved, k, c_prev);
      return;
    }
    V a[4];
    for (int q = 0; q < 4; ++q) {
      a[q] = io.load(x_proj, g0 + q * H) + io.load(hh, g0 + q * H) + io.load_or_zero(b_hh, q * H + j);
    }
    const V p_i = io.load_or_zero(w_ch, j);
    const V p_f = io.load_or_zero(w_ch, H + j);
    const V p_o = io.load_or_zero(w_ch, 2 * H + j);
    const auto s = math::lstm_forward(a[0], a[1], a[2], a[3], c_prev, p_i, p_f, p_o);
    io.store(c, k, s.c);
    if (h) io.store(h, k, s.h);
    if (y) io.store(y, k, s.h);
    if (m) io.store(m, k, s.h);
    if (gates) {
      io.store(gates, g0, s.i);
      io.store(gates, g0 + H, s.f);
      io.store(gates, g0 + 2 * H, s.g);
      io.store(gates, g0 + 3 * H, s.o);
    }
    if (c_saved) io.store(c_saved, k, s.c);
  }
};

template <typename scalar_t>
struct LstmBackwardStep {
  using acc_t = at::opmath_type<scalar_t>;
  StepMask mask;
  int64_t H;
  bool carry_h;            // without projection: dh also carries the masked rows' gradient
  const scalar_t* grad_y;  // [B, H]   d loss / d y_t, or nullptr (projection: folded into dh)
  const scalar_t* gates;   // [B, 4H]  saved i, f, g, o
  const acc_t* c_t;        // [B, H]   saved c_t
  const acc_t* c_prev;     // [B, H]   c_{t-1}
  const scalar_t* w_ch;    // [3H]     peepholes i, f, o, or nullptr
  scalar_t* dh;            // [B, H]   in: d h_t (or d m_t); out (carry_h): the part of
                           //          d h_{t-1} that does not go through W_hh
  acc_t* dc;               // [B, H]   in: d c_t from step t+1; out: d c_{t-1}
  scalar_t* d_gates;       // [B, 4H]  d pre-activations = d x_proj_t = d hh_t

  FUSED_RNN_STEP_COMMON
  template <class IO>
  FUSED_RNN_HD void apply(const IO& io, int64_t b, int64_t j) const {
    using V = typename IO::V;
    const int64_t k = b * H + j;
    const int64_t g0 = b * 4 * H + j;
    if (!mask.valid(b)) {  // y_t is a constant 0 here: dh and dc pass through unchanged
      for (int q = 0; q < 4; ++q) io.store(d_gates, g0 + q * H, V(0));
      return;
    }
    const V dh_t = io.load(dh, k) + (grad_y ? io.load(grad_y, k) : V(0));
    const V p_i = io.load_or_zero(w_ch, j);
    const V p_f = io.load_or_zero(w_ch, H + j);
    const V p_o = io.load_or_zero(w_ch, 2 * H + j);
    const auto d = math::lstm_backward(
        dh_t, io.load(dc, k), io.load(gates, g0), io.load(gates, g0 + H), io.load(gates, g0 + 2 * H),
        io.load(gates, g0 + 3 * H), io.load(c_t, k), io.load(c_prev, k), p_i, p_f, p_o);
    io.store(d_gates, g0, d.a_i);
    io.store(d_gates, g0 + H, d.a_f);
    io.store(d_gates, g0 + 2 * H, d.a_g);
    io.store(d_gates, g0 + 3 * H, d.a_o);
    io.store(dc, k, d.c_prev);
    if (carry_h) io.store(dh, k, V(0));
  }
};

// ============================================================================ GRU, reset_after=True
template <typename scalar_t>
struct GruForwardStep {
  StepMask mask;
  int64_t H;
  const scalar_t* x_proj;  // [B, 3H]  W_ih x_t + b_ih, gates r, z, n
  const scalar_t* hh;      // [B, 3H]  W_hh h_{t-1}
  const scalar_t* b_hh;    // [3H]     or nullptr
  scalar_t* h;             // [B, H]   state, updated in place
  scalar_t* y;             // [B, H]   output row of step t
  scalar_t* gates;         // [B, 3H]  saved r, z, n, or nullptr (inference)
  scalar_t* hh_n;          // [B, H]   saved W_hn h_{t-1} + b_hn, or nullptr (inference)

  FUSED_RNN_STEP_COMMON
  template <class IO>
  FUSED_RNN_HD void apply(const IO& io, int64_t b, int64_t j) const {
    using V = typename IO::V;
    const int64_t k = b * H + j;
    const int64_t g0 = b * 3 * H + j;
    if (!mask.valid(b)) {
      io.store(y, k, V(0));
      if (gates) {
        for (int q = 0; q < 3; ++q) io.store(gates, g0 + q * H, V(0));
        io.store(hh_n, k, V(0));
      }
      return;
    }
    const V r = math::sigmoid(io.load(x_proj, g0) + io.load(hh, g0) + io.load_or_zero(b_hh, j));
    const V z =
        math::sigmoid(io.load(x_proj, g0 + H) + io.load(hh, g0 + H) + io.load_or_zero(b_hh, H + j));
    const V hn = io.load(hh, g0 + 2 * H) + io.load_or_zero(b_hh, 2 * H + j);
    const V n = math::tanh_(io.load(x_proj, g0 + 2 * H) + r * hn);
    const V h_new = math::gru_new_state(n, z, io.load(h, k));
    io.store(h, k, h_new);
    io.store(y, k, h_new);
    if (gates) {
      io.store(gates, g0, r);
      io.store(gates, g0 + H, z);
      io.store(gates, g0 + 2 * H, n);
      io.store(hh_n, k, hn);
    }
  }
};

template <typename scalar_t>
struct GruBackwardStep {
  StepMask mask;
  int64_t H;
  const scalar_t* grad_y;  // [B, H]   d loss / d y_t
  const scalar_t* gates;   // [B, 3H]  saved r, z, n
  const scalar_t* hh_n;    // [B, H]   saved W_hn h_{t-1} + b_hn
  const scalar_t* h_prev;  // [B, H]   h_{t-1}
  scalar_t* dh;            // [B, H]   in: d h_t from step t+1; out: the part of d h_{t-1}
                           //          that does not go through W_hh
  scalar_t* d_x;           // [B, 3H]  d x_proj_t
  scalar_t* d_hh;          // [B, 3H]  d hh_t (differs from d x_proj_t in the n gate: × r)

  FUSED_RNN_STEP_COMMON
  template <class IO>
  FUSED_RNN_HD void apply(const IO& io, int64_t b, int64_t j) const {
    using V = typename IO::V;
    const int64_t k = b * H + j;
    const int64_t g0 = b * 3 * H + j;
    if (!mask.valid(b)) {  // y_t is a constant 0 here: dh passes through unchanged
      for (int q = 0; q < 3; ++q) {
        io.store(d_x, g0 + q * H, V(0));
        io.store(d_hh, g0 + q * H, V(0));
      }
      return;
    }
    const V dh_t = io.load(dh, k) + io.load(grad_y, k);
    const V r = io.load(gates, g0);
    const auto d = math::gru_backward_zn(dh_t, io.load(gates, g0 + H), io.load(gates, g0 + 2 * H),
                                         io.load(h_prev, k));
    const V a_r = math::gru_backward_r(d.a_n, io.load(hh_n, k), r);
    io.store(d_x, g0, a_r);
    io.store(d_x, g0 + H, d.a_z);
    io.store(d_x, g0 + 2 * H, d.a_n);
    io.store(d_hh, g0, a_r);
    io.store(d_hh, g0 + H, d.a_z);
    io.store(d_hh, g0 + 2 * H, d.a_n * r);
    io.store(dh, k, d.h_prev);
  }
};

// =========================================================================== GRU, reset_after=False
// Forward runs two GEMMs a step: hh_rz = W_h{r,z} h, then hh_n = W_hn (r h); biases are added here.
template <typename scalar_t>
struct GruResetBeforeGatesStep {
  StepMask mask;
  int64_t H;
  const scalar_t* x_proj;  // [B, 3H]  W_ih x_t + b_ih, gates r, z, n
  const scalar_t* hh_rz;   // [B, 2H]  W_h{r,z} h_{t-1}
  const scalar_t* b_hh;    // [3H]     or nullptr
  const scalar_t* h;       // [B, H]   h_{t-1} as the GEMMs see it (⊙ mask with state dropout)
  scalar_t* rh;            // [B, H]   r h_{t-1}, the input of the second GEMM
  scalar_t* gates;         // [B, 3H]  r, z written here (n by the state step); always set

  FUSED_RNN_STEP_COMMON
  template <class IO>
  FUSED_RNN_HD void apply(const IO& io, int64_t b, int64_t j) const {
    using V = typename IO::V;
    const int64_t k = b * H + j;
    const int64_t g0 = b * 3 * H + j;
    if (!mask.valid(b)) {
      io.store(gates, g0, V(0));
      io.store(gates, g0 + H, V(0));
      io.store(rh, k, V(0));
      return;
    }
    const int64_t rz0 = b * 2 * H + j;
    const V r = math::sigmoid(io.load(x_proj, g0) + io.load(hh_rz, rz0) + io.load_or_zero(b_hh, j));
    const V z = math::sigmoid(io.load(x_proj, g0 + H) + io.load(hh_rz, rz0 + H) +
                                  io.load_or_zero(b_hh, H + j));
    io.store(gates, g0, r);
    io.store(gates, g0 + H, z);
    io.store(rh, k, r * io.load(h, k));
  }
};

template <typename scalar_t>
struct GruResetBeforeStateStep {
  StepMask mask;
  int64_t H;
  const scalar_t* x_proj;  // [B, 3H]  W_ih x_t + b_ih
  const scalar_t* hh_n;    // [B, H]   W_hn (r h_{t-1})
  const scalar_t* b_hh;    // [3H]     or nullptr (b_hn is its last third)
  scalar_t* gates;         // [B, 3H]  reads z, writes n
  scalar_t* h;             // [B, H]   state, updated in place
  scalar_t* y;             // [B, H]   output row of step t

  FUSED_RNN_STEP_COMMON
  template <class IO>
  FUSED_RNN_HD void apply(const IO& io, int64_t b, int64_t j) const {
    using V = typename IO::V;
    const int64_t k = b * H + j;
    const int64_t g0 = b * 3 * H + j;
    if (!mask.valid(b)) {
      io.store(gates, g0 + 2 * H, V(0));
      io.store(y, k, V(0));
      return;
    }
    const V n =
        math::tanh_(io.load(x_proj, g0 + 2 * H) + io.load(hh_n, k) + io.load_or_zero(b_hh, 2 * H + j));
    const V h_new = math::gru_new_state(n, io.load(gates, g0 + H), io.load(h, k));
    io.store(gates, g0 + 2 * H, n);
    io.store(h, k, h_new);
    io.store(y, k, h_new);
  }
};

// Backward: d a_z and d a_n first; then the caller computes d(r h) = d a_n W_hn (a GEMM) and
// runs GruResetBeforeBackwardRStep for d a_r and the part of d h_{t-1} through r h.
template <typename scalar_t>
struct GruResetBeforeBackwardZnStep {
  StepMask mask;
  int64_t H;
  const scalar_t* grad_y;  // [B, H]   d loss / d y_t
  const scalar_t* gates;   // [B, 3H]  saved r, z, n
  const scalar_t* h_prev;  // [B, H]   h_{t-1}
  scalar_t* dh;            // [B, H]   in: d h_t from step t+1; out: the direct part of d h_{t-1}
  scalar_t* d_x;           // [B, 3H]  d x_proj_t: z and n written here, r by the next step

  FUSED_RNN_STEP_COMMON
  template <class IO>
  FUSED_RNN_HD void apply(const IO& io, int64_t b, int64_t j) const {
    using V = typename IO::V;
    const int64_t k = b * H + j;
    const int64_t g0 = b * 3 * H + j;
    if (!mask.valid(b)) {  // y_t is a constant 0 here: dh passes through unchanged
      io.store(d_x, g0 + H, V(0));
      io.store(d_x, g0 + 2 * H, V(0));
      return;
    }
    const V dh_t = io.load(dh, k) + io.load(grad_y, k);
    const auto d = math::gru_backward_zn(dh_t, io.load(gates, g0 + H), io.load(gates, g0 + 2 * H),
                                         io.load(h_prev, k));
    io.store(d_x, g0 + H, d.a_z);
    io.store(d_x, g0 + 2 * H, d.a_n);
    io.store(dh, k, d.h_prev);
  }
};

template <typename scalar_t>
struct GruResetBeforeBackwardRStep {
  StepMask mask;
  int64_t H;
  const scalar_t* d_rh;    // [B, H]   d (r h_{t-1}) = d a_n W_hn
  const scalar_t* gates;   // [B, 3H]  saved r, z, n
  const scalar_t* h_prev;  // [B, H]   h_{t-1} as r saw it (⊙ mask with state dropout)
  scalar_t* dh;            // [B, H]   d of that h_{t-1}, accumulated: += d(r h) r
  scalar_t* d_x;           // [B, 3H]  d x_proj_t: the r gate

  FUSED_RNN_STEP_COMMON
  template <class IO>
  FUSED_RNN_HD void apply(const IO& io, int64_t b, int64_t j) const {
    using V = typename IO::V;
    const int64_t k = b * H + j;
    const int64_t g0 = b * 3 * H + j;
    if (!mask.valid(b)) {
      io.store(d_x, g0, V(0));
      return;
    }
    const V r = io.load(gates, g0);
    const V d_product = io.load(d_rh, k);
    io.store(d_x, g0, math::gru_backward_r(d_product, io.load(h_prev, k), r));
    io.store(dh, k, io.load(dh, k) + d_product * r);
  }
};

// ======================================================================== LSTM projection (proj_size)
// After h_t = W_hr m_t (a GEMM into h_new): apply the length mask to state and output.
template <typename scalar_t>
struct MaskedStateStep {
  StepMask mask;
  int64_t P;
  const scalar_t* h_new;  // [B, P]  the projected new state
  scalar_t* h;            // [B, P]  state, updated in place where valid
  scalar_t* y;            // [B, P]  output row of step t

  FUSED_RNN_STEP_COMMON
  template <class IO>
  FUSED_RNN_HD void apply(const IO& io, int64_t b, int64_t j) const {
    using V = typename IO::V;
    const int64_t k = b * P + j;
    if (!mask.valid(b)) {
      io.store(y, k, V(0));
      return;
    }
    const V h_t = io.load(h_new, k);
    io.store(h, k, h_t);
    io.store(y, k, h_t);
  }
};

// Backward through the projection's input side: valid rows pass d h_t = d y_t + carry on to the
// GEMM d m_t = d h_t W_hr (and keep it for d W_hr); masked rows carry it to step t-1.
template <typename scalar_t>
struct ProjectionCarryStep {
  StepMask mask;
  int64_t P;
  const scalar_t* grad_y;  // [B, P]  d loss / d y_t
  scalar_t* carry;         // [B, P]  in: d h_t from step t+1; out: the masked rows' pass-through
  scalar_t* dh_valid;      // [B, P]  d h_t of valid rows, 0 for masked rows

  FUSED_RNN_STEP_COMMON
  template <class IO>
  FUSED_RNN_HD void apply(const IO& io, int64_t b, int64_t j) const {
    using V = typename IO::V;
    const int64_t k = b * P + j;
    if (!mask.valid(b)) {  // y_t is a constant 0 here: the carry passes through unchanged
      io.store(dh_valid, k, V(0));
      return;
    }
    io.store(dh_valid, k, io.load(carry, k) + io.load(grad_y, k));
    io.store(carry, k, V(0));
  }
};

}  // namespace fused_rnn
