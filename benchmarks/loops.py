"""Pure-PyTorch recurrences: a single-step function per cell, called in a Python loop over time.

This is what a user writes without fused kernels, and what the ``compiled`` contender hands to
torch.compile (one compiled step, the loop stays in Python). It also stands in for the reference
contender while fused_rnn.reference cannot be imported. The input projection of all steps is one
GEMM before the loop, as any careful user would write it, so the loop holds only the recurrence.

Every step has the same signature so one loop drives them all:
    step(gx_t, h, c, w_hh, b_hh, w_ch, valid) -> (y_t, h, c)
    gx_t (B, G*H) this step's input projection incl. b_ih;  h, c (B, H), c None without cell state;
    w_ch (3*H,) peepholes or None;  valid (B, 1) bool or None: where False the state is frozen
    and the output is zero (the variable-length semantics of pack_padded_sequence).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from .inputs import LayerWeights

Step = Callable[..., Tuple[Tensor, Tensor, Optional[Tensor]]]
# (x, weights of one layer and direction, lengths or None, reverse) -> y
Sequence = Callable[[Tensor, LayerWeights, Optional[Tensor], bool], Tensor]


def _masked(valid: Optional[Tensor], new: Tensor, old: Tensor) -> Tuple[Tensor, Tensor]:
    """(output, next state): pass-through of the old state and a zero output past a sequence's end."""
    if valid is None:
        return new, new
    return new * valid, torch.where(valid, new, old)


def lstm_step(gx_t, h, c, w_hh, b_hh, w_ch, valid):
    """LSTM, gate order i, f, g, o; with w_ch the peephole LSTM (i, f see c, o sees c')."""
    a_i, a_f, a_g, a_o = (gx_t + torch.addmm(b_hh, h, w_hh.t())).chunk(4, dim=1)
    if w_ch is not None:
        p_i, p_f, p_o = w_ch.chunk(3)
        a_i = a_i + p_i * c
        a_f = a_f + p_f * c
    c_new = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_g)
    if w_ch is not None:
        a_o = a_o + p_o * c_new
    h_new = torch.sigmoid(a_o) * torch.tanh(c_new)
    y_t, h_next = _masked(valid, h_new, h)
    c_next = c_new if valid is None else torch.where(valid, c_new, c)
    return y_t, h_next, c_next


def gru_reset_after_step(gx_t, h, c, w_hh, b_hh, w_ch, valid):
    """torch/cuDNN GRU: n = tanh(W_in x + b_in + r⊙(W_hn h + b_hn))."""
    x_r, x_z, x_n = gx_t.chunk(3, dim=1)
    h_r, h_z, h_n = torch.addmm(b_hh, h, w_hh.t()).chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    y_t, h_next = _masked(valid, (1 - z) * n + z * h, h)
    return y_t, h_next, None


def gru_reset_before_step(gx_t, h, c, w_hh, b_hh, w_ch, valid):
    """Original / TF GRUCell: n = tanh(W_in x + b_in + W_hn (r⊙h) + b_hn): two recurrent GEMMs."""
    hidden = h.size(1)
    x_r, x_z, x_n = gx_t.chunk(3, dim=1)
    h_r, h_z = torch.addmm(b_hh[:2 * hidden], h, w_hh[:2 * hidden].t()).chunk(2, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + torch.addmm(b_hh[2 * hidden:], r * h, w_hh[2 * hidden:].t()))
    y_t, h_next = _masked(valid, (1 - z) * n + z * h, h)
    return y_t, h_next, None


def rnn_tanh_step(gx_t, h, c, w_hh, b_hh, w_ch, valid):
    """Elman RNN: h' = tanh(W_ih x + b_ih + W_hh h + b_hh)."""
    y_t, h_next = _masked(valid, torch.tanh(gx_t + torch.addmm(b_hh, h, w_hh.t())), h)
    return y_t, h_next, None


STEPS: Dict[str, Step] = {
    "lstm": lstm_step,
    "peephole_lstm": lstm_step,
    "gru": gru_reset_after_step,
    "gru_reset_before": gru_reset_before_step,
    "rnn_tanh": rnn_tanh_step,
}


def step_loop(step: Step, has_cell_state: bool) -> Sequence:
    """One layer and direction as a Python loop over ``step``."""
    def sequence(x: Tensor, w: LayerWeights, lengths: Optional[Tensor], reverse: bool) -> Tensor:
        steps, batch, _ = x.shape
        hidden = w.w_hh.size(1)
        gx = torch.addmm(w.b_ih, x.reshape(steps * batch, -1), w.w_ih.t()).view(steps, batch, -1)
        valid = None
        if lengths is not None:
            time = torch.arange(steps, device=x.device).unsqueeze(1)
            valid = (time < lengths.to(x.device).unsqueeze(0)).unsqueeze(2)  # (T, B, 1)
        h = x.new_zeros(batch, hidden)
        c = x.new_zeros(batch, hidden) if has_cell_state else None
        ys = [None] * steps
        # Running backwards with the mask is exactly "start at each sequence's own last step":
        # the state stays h0 until t < lengths[b].
        for t in (reversed(range(steps)) if reverse else range(steps)):
            ys[t], h, c = step(gx[t], h, c, w.w_hh, w.b_hh, w.w_ch, None if valid is None else valid[t])
        return torch.stack(ys)
    return sequence


def stacked(sequence: Sequence, layers: int, bidirectional: bool,
            layer_weights: Callable[[int, bool], LayerWeights]) -> Callable[[Tensor, Optional[Tensor]], Tensor]:
    """Layers and directions around a one-layer ``sequence``, as torch.nn stacks them (no dropout):
    each layer reads the previous layer's output, both directions concatenated on the last axis."""
    def forward(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
        for layer in range(layers):
            y = sequence(x, layer_weights(layer, False), lengths, False)
            if bidirectional:
                y = torch.cat([y, sequence(x, layer_weights(layer, True), lengths, True)], dim=2)
            x = y
        return x
    return forward
