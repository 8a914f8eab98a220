// One time step's fused pointwise pass of every cell, as plain structs of pointers with an
// element function `operator()(b, j)`. The CPU launcher loops over (b, j) with at::parallel_for,
// the CUDA launcher runs one thread per (b, j); both run exactly this code.
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

template <typename scalar_t>
FUSED_RNN_HD at::opmath_type<scalar_t> load(const scalar_t* p, int64_t k) {
  return static_cast<at::opmath_type<scalar_t>>(p[k]);
}

// An optional vector (bias, peephole): 0 where absent.
template <typename scalar_t>
FUSED_RNN_HD at::opmath_type<scalar_t> load_or_zero(const scalar_t* p, int64_t k) {
  return p ? static_cast<at::opmath_type<scalar_t>>(p[k]) : at::opmath_type<scalar_t>(0);
}

// ============================================================================================ Elman
template <typename scalar_t>
struct ElmanForwardStep {
  using acc_t = at::opmath_type<scalar_t>;
  StepMask mask;
  int64_t H;
  bool relu;
  const scalar_t* x_proj;  // [B, H]  W_ih x_t + b_ih
  const scalar_t* hh;      // [B, H]  W_hh h_{t-1}
  const scalar_t* b_hh;    // [H]     or nullptr
  scalar_t* h;             // [B, H]  state, updated in place
  scalar_t* y;             // [B, H]  output row of step t

  FUSED_RNN_HD void operator()(int64_t b, int64_t j) const {
    const int64_t k = b * H + j;
    if (!mask.valid(b)) {
      y[k] = scalar_t(0);
      return;
    }
    const acc_t a = load(x_proj, k) + load(hh, k) + load_or_zero(b_hh, j);
    const acc_t h_new = math::elman_forward(a, relu);
    h[k] = static_cast<scalar_t>(h_new);
    y[k] = static_cast<scalar_t>(h_new);
  }
};

template <typename scalar_t>
struct ElmanBackwardStep {
  using acc_t = at::opmath_type<scalar_t>;
  StepMask mask;
  int64_t H;
  bool relu;
  const scalar_t* grad_y;  // [B, H]  d loss / d y_t
  const scalar_t* y;       // [B, H]  saved h_t
  scalar_t* dh;            // [B, H]  in: d h_t from step t+1; out: the part of d h_{t-1} that
                           //         does not go through W_hh (the caller adds d a W_hh)
  scalar_t* d_a;           // [B, H]  d pre-activation = d x_proj_t = d hh_t

  FUSED_RNN_HD void operator()(int64_t b, int64_t j) const {
    const int64_t k = b * H + j;
    if (!mask.valid(b)) {  // y_t is a constant 0 here: dh passes through unchanged
      d_a[k] = scalar_t(0);
      return;
    }
    const acc_t dh_t = load(dh, k) + load(grad_y, k);
    d_a[k] = static_cast<scalar_t>(math::elman_backward(dh_t, load(y, k), relu));
    dh[k] = scalar_t(0);
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

  FUSED_RNN_HD void operator()(int64_t b, int64_t j) const {
    const int64_t k = b * H + j;
    const int64_t g0 = b * 4 * H + j;
    const acc_t c_prev = c[k];
    if (!mask.valid(b)) {
      if (y) y[k] = scalar_t(0);
      if (m) m[k] = scalar_t(0);
      if (gates) {
        for (int q = 0; q < 4; ++q) gates[g0 + q * H] = scalar_t(0);
      }
      if (c_saved) c_saved[k] = c_prev;
      return;
    }
    acc_t a[4];
    for (int q = 0; q < 4; ++q) {
      a[q] = load(x_proj, g0 + q * H) + load(hh, g0 + q * H) + load_or_zero(b_hh, q * H + j);
    }
    const acc_t p_i = load_or_zero(w_ch, j);
    const acc_t p_f = load_or_zero(w_ch, H + j);
    const acc_t p_o = load_or_zero(w_ch, 2 * H + j);
    const auto s = math::lstm_forward(a[0], a[1], a[2], a[3], c_prev, p_i, p_f, p_o);
    c[k] = s.c;
    if (h) h[k] = static_cast<scalar_t>(s.h);
    if (y) y[k] = static_cast<scalar_t>(s.h);
    if (m) m[k] = static_cast<scalar_t>(s.h);
    if (gates) {
      gates[g0] = static_cast<scalar_t>(s.i);
      gates[g0 + H] = static_cast<scalar_t>(s.f);
      gates[g0 + 2 * H] = static_cast<scalar_t>(s.g);
      gates[g0 + 3 * H] = static_cast<scalar_t>(s.o);
    }
    if (c_saved) c_saved[k] = s.c;
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

  FUSED_RNN_HD void operator()(int64_t b, int64_t j) const {
    const int64_t k = b * H + j;
    const int64_t g0 = b * 4 * H + j;
    if (!mask.valid(b)) {  // y_t is a constant 0 here: dh and dc pass through unchanged
      for (int q = 0; q < 4; ++q) d_gates[g0 + q * H] = scalar_t(0);
      return;
    }
    const acc_t dh_t = load(dh, k) + (grad_y ? load(grad_y, k) : acc_t(0));
    const acc_t p_i = load_or_zero(w_ch, j);
    const acc_t p_f = load_or_zero(w_ch, H + j);
    const acc_t p_o = load_or_zero(w_ch, 2 * H + j);
    const auto d = math::lstm_backward(dh_t, dc[k], load(gates, g0), load(gates, g0 + H),
                                       load(gates, g0 + 2 * H), load(gates, g0 + 3 * H), c_t[k],
                                       c_prev[k], p_i, p_f, p_o);
    d_gates[g0] = static_cast<scalar_t>(d.a_i);
    d_gates[g0 + H] = static_cast<scalar_t>(d.a_f);
    d_gates[g0 + 2 * H] = static_cast<scalar_t>(d.a_g);
    d_gates[g0 + 3 * H] = static_cast<scalar_t>(d.a_o);
    dc[k] = d.c_prev;
    if (carry_h) dh[k] = scalar_t(0);
  }
};

// ============================================================================ GRU, reset_after=True
template <typename scalar_t>
struct GruForwardStep {
  using acc_t = at::opmath_type<scalar_t>;
  StepMask mask;
  int64_t H;
  const scalar_t* x_proj;  // [B, 3H]  W_ih x_t + b_ih, gates r, z, n
  const scalar_t* hh;      // [B, 3H]  W_hh h_{t-1}
  const scalar_t* b_hh;    // [3H]     or nullptr
  scalar_t* h;             // [B, H]   state, updated in place
  scalar_t* y;             // [B, H]   output row of step t
  scalar_t* gates;         // [B, 3H]  saved r, z, n, or nullptr (inference)
  scalar_t* hh_n;          // [B, H]   saved W_hn h_{t-1} + b_hn, or nullptr (inference)

  FUSED_RNN_HD void operator()(int64_t b, int64_t j) const {
    const int64_t k = b * H + j;
    const int64_t g0 = b * 3 * H + j;
    if (!mask.valid(b)) {
      y[k] = scalar_t(0);
      if (gates) {
        for (int q = 0; q < 3; ++q) gates[g0 + q * H] = scalar_t(0);
        hh_n[k] = scalar_t(0);
      }
      return;
    }
    const acc_t r = math::sigmoid(load(x_proj, g0) + load(hh, g0) + load_or_zero(b_hh, j));
    const acc_t z =
        math::sigmoid(load(x_proj, g0 + H) + load(hh, g0 + H) + load_or_zero(b_hh, H + j));
    const acc_t hn = load(hh, g0 + 2 * H) + load_or_zero(b_hh, 2 * H + j);
    const acc_t n = math::tanh_(load(x_proj, g0 + 2 * H) + r * hn);
    const acc_t h_new = math::gru_new_state(n, z, load(h, k));
    h[k] = static_cast<scalar_t>(h_new);
    y[k] = static_cast<scalar_t>(h_new);
    if (gates) {
      gates[g0] = static_cast<scalar_t>(r);
      gates[g0 + H] = static_cast<scalar_t>(z);
      gates[g0 + 2 * H] = static_cast<scalar_t>(n);
      hh_n[k] = static_cast<scalar_t>(hn);
    }
  }
};

template <typename scalar_t>
struct GruBackwardStep {
  using acc_t = at::opmath_type<scalar_t>;
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

  FUSED_RNN_HD void operator()(int64_t b, int64_t j) const {
    const int64_t k = b * H + j;
    const int64_t g0 = b * 3 * H + j;
    if (!mask.valid(b)) {  // y_t is a constant 0 here: dh passes through unchanged
      for (int q = 0; q < 3; ++q) {
        d_x[g0 + q * H] = scalar_t(0);
        d_hh[g0 + q * H] = scalar_t(0);
      }
      return;
    }
    const acc_t dh_t = load(dh, k) + load(grad_y, k);
    const acc_t r = load(gates, g0);
    const auto d = math::gru_backward_zn(dh_t, load(gates, g0 + H), load(gates, g0 + 2 * H),
                                         load(h_prev, k));
    const acc_t a_r = math::gru_backward_r(d.a_n, load(hh_n, k), r);
    d_x[g0] = static_cast<scalar_t>(a_r);
    d_x[g0 + H] = static_cast<scalar_t>(d.a_z);
    d_x[g0 + 2 * H] = static_cast<scalar_t>(d.a_n);
    d_hh[g0] = static_cast<scalar_t>(a_r);
    d_hh[g0 + H] = static_cast<scalar_t>(d.a_z);
    d_hh[g0 + 2 * H] = static_cast<scalar_t>(d.a_n * r);
    dh[k] = static_cast<scalar_t>(d.h_prev);
  }
};

// =========================================================================== GRU, reset_after=False
// Forward runs two GEMMs a step: hh_rz = W_h{r,z} h, then hh_n = W_hn (r h); biases are added here.
template <typename scalar_t>
struct GruResetBeforeGatesStep {
  using acc_t = at::opmath_type<scalar_t>;
  StepMask mask;
  int64_t H;
  const scalar_t* x_proj;  // [B, 3H]  W_ih x_t + b_ih, gates r, z, n
  const scalar_t* hh_rz;   // [B, 2H]  W_h{r,z} h_{t-1}
  const scalar_t* b_hh;    // [3H]     or nullptr
  const scalar_t* h;       // [B, H]   h_{t-1}
  scalar_t* rh;            // [B, H]   r h_{t-1}, the input of the second GEMM
  scalar_t* gates;         // [B, 3H]  r, z written here (n by the state step); always set

  FUSED_RNN_HD void operator()(int64_t b, int64_t j) const {
    const int64_t k = b * H + j;
    const int64_t g0 = b * 3 * H + j;
    if (!mask.valid(b)) {
      gates[g0] = scalar_t(0);
      gates[g0 + H] = scalar_t(0);
      rh[k] = scalar_t(0);
      return;
    }
    const int64_t rz0 = b * 2 * H + j;
    const acc_t r = math::sigmoid(load(x_proj, g0) + load(hh_rz, rz0) + load_or_zero(b_hh, j));
    const acc_t z = math::sigmoid(load(x_proj, g0 + H) + load(hh_rz, rz0 + H) +
                                  load_or_zero(b_hh, H + j));
    gates[g0] = static_cast<scalar_t>(r);
    gates[g0 + H] = static_cast<scalar_t>(z);
    rh[k] = static_cast<scalar_t>(r * load(h, k));
  }
};

template <typename scalar_t>
struct GruResetBeforeStateStep {
  using acc_t = at::opmath_type<scalar_t>;
  StepMask mask;
  int64_t H;
  const scalar_t* x_proj;  // [B, 3H]  W_ih x_t + b_ih
  const scalar_t* hh_n;    // [B, H]   W_hn (r h_{t-1})
  const scalar_t* b_hh;    // [3H]     or nullptr (b_hn is its last third)
  scalar_t* gates;         // [B, 3H]  reads z, writes n
  scalar_t* h;             // [B, H]   state, updated in place
  scalar_t* y;             // [B, H]   output row of step t

  FUSED_RNN_HD void operator()(int64_t b, int64_t j) const {
    const int64_t k = b * H + j;
    const int64_t g0 = b * 3 * H + j;
    if (!mask.valid(b)) {
      gates[g0 + 2 * H] = scalar_t(0);
      y[k] = scalar_t(0);
      return;
    }
    const acc_t n =
        math::tanh_(load(x_proj, g0 + 2 * H) + load(hh_n, k) + load_or_zero(b_hh, 2 * H + j));
    const acc_t h_new = math::gru_new_state(n, load(gates, g0 + H), load(h, k));
    gates[g0 + 2 * H] = static_cast<scalar_t>(n);
    h[k] = static_cast<scalar_t>(h_new);
    y[k] = static_cast<scalar_t>(h_new);
  }
};

// Backward: d a_z and d a_n first; then the caller computes d(r h) = d a_n W_hn (a GEMM) and
// runs GruResetBeforeBackwardRStep for d a_r and the part of d h_{t-1} through r h.
template <typename scalar_t>
struct GruResetBeforeBackwardZnStep {
  using acc_t = at::opmath_type<scalar_t>;
  StepMask mask;
  int64_t H;
  const scalar_t* grad_y;  // [B, H]   d loss / d y_t
  const scalar_t* gates;   // [B, 3H]  saved r, z, n
  const scalar_t* h_prev;  // [B, H]   h_{t-1}
  scalar_t* dh;            // [B, H]   in: d h_t from step t+1; out: the direct part of d h_{t-1}
  scalar_t* d_x;           // [B, 3H]  d x_proj_t: z and n written here, r by the next step

  FUSED_RNN_HD void operator()(int64_t b, int64_t j) const {
    const int64_t k = b * H + j;
    const int64_t g0 = b * 3 * H + j;
    if (!mask.valid(b)) {  // y_t is a constant 0 here: dh passes through unchanged
      d_x[g0 + H] = scalar_t(0);
      d_x[g0 + 2 * H] = scalar_t(0);
      return;
    }
    const acc_t dh_t = load(dh, k) + load(grad_y, k);
    const auto d = math::gru_backward_zn(dh_t, load(gates, g0 + H), load(gates, g0 + 2 * H),
                                         load(h_prev, k));
    d_x[g0 + H] = static_cast<scalar_t>(d.a_z);
    d_x[g0 + 2 * H] = static_cast<scalar_t>(d.a_n);
    dh[k] = static_cast<scalar_t>(d.h_prev);
  }
};

template <typename scalar_t>
struct GruResetBeforeBackwardRStep {
  using acc_t = at::opmath_type<scalar_t>;
  StepMask mask;
  int64_t H;
  const scalar_t* d_rh;    // [B, H]   d (r h_{t-1}) = d a_n W_hn
  const scalar_t* gates;   // [B, 3H]  saved r, z, n
  const scalar_t* h_prev;  // [B, H]   h_{t-1}
  scalar_t* dh;            // [B, H]   d h_{t-1}, accumulated: += d(r h) r
  scalar_t* d_x;           // [B, 3H]  d x_proj_t: the r gate

  FUSED_RNN_HD void operator()(int64_t b, int64_t j) const {
    const int64_t k = b * H + j;
    const int64_t g0 = b * 3 * H + j;
    if (!mask.valid(b)) {
      d_x[g0] = scalar_t(0);
      return;
    }
    const acc_t r = load(gates, g0);
    const acc_t d_product = load(d_rh, k);
    d_x[g0] = static_cast<scalar_t>(math::gru_backward_r(d_product, load(h_prev, k), r));
    dh[k] = static_cast<scalar_t>(load(dh, k) + d_product * r);
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

  FUSED_RNN_HD void operator()(int64_t b, int64_t j) const {
    const int64_t k = b * P + j;
    if (!mask.valid(b)) {
      y[k] = scalar_t(0);
      return;
    }
    h[k] = h_new[k];
    y[k] = h_new[k];
  }
};

// Backward through the projection's input side: valid rows pass d h_t = d y_t + carry on to the
// GEMM d m_t = d h_t W_hr (and keep it for d W_hr); masked rows carry it to step t-1.
template <typename scalar_t>
struct ProjectionCarryStep {
  using acc_t = at::opmath_type<scalar_t>;
  StepMask mask;
  int64_t P;
  const scalar_t* grad_y;  // [B, P]  d loss / d y_t
  scalar_t* carry;         // [B, P]  in: d h_t from step t+1; out: the masked rows' pass-through
  scalar_t* dh_valid;      // [B, P]  d h_t of valid rows, 0 for masked rows

  FUSED_RNN_HD void operator()(int64_t b, int64_t j) const {
    const int64_t k = b * P + j;
    if (!mask.valid(b)) {  // y_t is a constant 0 here: the carry passes through unchanged
      dh_valid[k] = scalar_t(0);
      return;
    }
    dh_valid[k] = static_cast<scalar_t>(load(carry, k) + load(grad_y, k));
    carry[k] = scalar_t(0);
  }
};

}  // namespace fused_rnn
