// The device-agnostic implementations of the fused_rnn ops: a time loop of one recurrent GEMM
// (ATen, current stream) and one fused pointwise step per time step, with the weight gradients
// as single GEMMs after the loop. The same functions serve the CPU and CUDA dispatch keys;
// only the pointwise launcher differs (fused_rnn/launch.h). Every op takes an optional
// state_mask [B, P]: recurrent-state dropout (see StateDropout in common.h), and an `algo`:
// "auto", "stepwise" or "persistent" (fused_rnn/persistent.h).
#pragma once

#include <tuple>

#include "common.h"

namespace fused_rnn {

// ------------------------------------------------------------------------------------------ Elman
// -> y [T, B, H], h_n [B, H]
std::tuple<Tensor, Tensor> elman_forward(const Tensor& x_proj, const Tensor& h0, const Tensor& w_hh,
                                         const OptTensor& b_hh, const OptTensor& lengths,
                                         const OptTensor& state_mask, bool reverse, bool relu,
                                         c10::string_view algo);

// -> grad_x_proj [T, B, H], grad_h0 [B, H], grad_w_hh [H, H], grad_b_hh [H]
std::tuple<Tensor, Tensor, Tensor, Tensor> elman_backward(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& y, const Tensor& h0,
    const Tensor& w_hh, const OptTensor& lengths, const OptTensor& state_mask, bool reverse,
    bool relu, c10::string_view algo);

// ------------------------------------------------------------------------------------------- LSTM
// -> y [T, B, P], h_n [B, P], c_n [B, H], gates [T, B, 4H], c_all [T, B, H] (float for half types)
// (gates and c_all are empty when !training). P = w_hr.size(0) with projection, else H.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& x_proj, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
    const OptTensor& b_hh, const OptTensor& w_ch, const OptTensor& w_hr, const OptTensor& lengths,
    const OptTensor& state_mask, bool reverse, bool training, c10::string_view algo);

// -> grad_x_proj [T, B, 4H], grad_h0 [B, P], grad_c0 [B, H], grad_w_hh [4H, P], grad_b_hh [4H],
//    grad_w_ch [3H] (empty without peepholes), grad_w_hr [P, H] (empty without projection)
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& y,
    const Tensor& gates, const Tensor& c_all, const Tensor& h0, const Tensor& c0,
    const Tensor& w_hh, const OptTensor& w_ch, const OptTensor& w_hr, const OptTensor& lengths,
    const OptTensor& state_mask, bool reverse, c10::string_view algo);

// -------------------------------------------------------------------------------------------- GRU
// -> y [T, B, H], h_n [B, H], gates [T, B, 3H] (r, z, n), hh_n [T, B, H]
//    (saved W_hn h + b_hn; reset_after only). gates and hh_n are empty when !training.
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward(const Tensor& x_proj, const Tensor& h0,
                                                       const Tensor& w_hh, const OptTensor& b_hh,
                                                       const OptTensor& lengths,
                                                       const OptTensor& state_mask, bool reverse,
                                                       bool reset_after, bool training,
                                                       c10::string_view algo);

// -> grad_x_proj [T, B, 3H], grad_h0 [B, H], grad_w_hh [3H, H], grad_b_hh [3H]
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& y, const Tensor& gates,
    const Tensor& hh_n, const Tensor& h0, const Tensor& w_hh, const OptTensor& lengths,
    const OptTensor& state_mask, bool reverse, bool reset_after, c10::string_view algo);

}  // namespace fused_rnn
