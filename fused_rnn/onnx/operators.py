"""fused_rnn.functional's calls as ONNX's standard RNN, LSTM and GRU operators, one operator per
layer and direction, emitted with ``torch.onnx.ops.symbolic_multi_out`` (torch's supported way to
put a given ONNX operator into the exported graph).

What maps to what (torch.nn layout → ONNX; the exporter folds the reordering into constants):
    rnn (tanh | relu)        → RNN   activations=[Tanh | Relu]
    lstm, peephole_lstm      → LSTM  gates i,f,g,o → i,o,f,c; peepholes p_i,p_f,p_o → P: i,o,f
    gru reset_after=True     → GRU   linear_before_reset=1; gates r,z,n → z,r,h
    gru reset_after=False    → GRU   linear_before_reset=0
    lengths                  → sequence_lens (int32)
    reverse=True             → direction="reverse"
B is b_ih and b_hh concatenated, each in ONNX's gate order. A bidirectional layer is two
operators (forward and reverse) whose outputs the module concatenates, as in eager mode.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import projection

__all__ = ["rnn", "peephole_lstm", "gru"]

STATE_MASK_ERROR = ("state_mask (recurrent-state dropout, the modules' state_dropout in train "
                    "mode) cannot be exported to ONNX: it is a training-time option; call "
                    "model.eval() before torch.onnx.export")

# Gate blocks of torch's layout, listed in ONNX's order.
LSTM_GATES = (0, 3, 1, 2)  # torch i, f, g, o → ONNX i, o, f, c
GRU_GATES = (1, 0, 2)  # torch r, z, n → ONNX z, r, h
PEEPHOLES = (0, 2, 1)  # ours p_i, p_f, p_o → ONNX P: i, o, f


# ------------------------------------------------------------------------------------ operators
def rnn(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
        b_hh: Optional[Tensor], *, nonlinearity: str, lengths: Optional[Tensor], reverse: bool,
        state_mask: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """ONNX RNN for fused_rnn.functional.rnn's arguments; returns (y, h_n)."""
    lengths = _checked(x, h0, w_ih, lengths, state_mask)
    activation = {"tanh": "Tanh", "relu": "Relu"}[nonlinearity]
    y, h_n = _emit("RNN", x, [h0], w_ih, w_hh, b_ih, b_hh, (0,), lengths, reverse,
                   {"activations": [activation]})
    return y, h_n


def peephole_lstm(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                  w_ch: Optional[Tensor], b_ih: Optional[Tensor], b_hh: Optional[Tensor], *,
                  w_hr: Optional[Tensor], lengths: Optional[Tensor], reverse: bool,
                  state_mask: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """ONNX LSTM (with P for the peepholes) for functional.peephole_lstm's arguments; returns
    (y, h_n, c_n)."""
    lengths = _checked(x, h0, w_ih, lengths, state_mask)
    if w_hr is not None:  # ONNX's LSTM has no projection
        return projection.peephole_lstm(x, h0, c0, w_ih, w_hh, w_ch, b_ih, b_hh, w_hr=w_hr,
                                        lengths=lengths, reverse=reverse)
    peepholes = None if w_ch is None else _blocks(w_ch, PEEPHOLES)
    y, h_n, c_n = _emit("LSTM", x, [h0, c0], w_ih, w_hh, b_ih, b_hh, LSTM_GATES, lengths,
                        reverse, {}, extra=[peepholes])
    return y, h_n, c_n


def gru(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
        b_hh: Optional[Tensor], *, reset_after: bool, lengths: Optional[Tensor], reverse: bool,
        state_mask: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """ONNX GRU for functional.gru's arguments; returns (y, h_n). ONNX's linear_before_reset=1
    is torch's r ⊙ (W_hn h + b_hn), 0 the original W_hn (r ⊙ h) + b_hn (reset_after=False)."""
    lengths = _checked(x, h0, w_ih, lengths, state_mask)
    y, h_n = _emit("GRU", x, [h0], w_ih, w_hh, b_ih, b_hh, GRU_GATES, lengths, reverse,
                   {"linear_before_reset": int(reset_after)})
    return y, h_n


# ------------------------------------------------------------------------------------- helpers
def _checked(x: Tensor, h0: Tensor, w_ih: Tensor, lengths, state_mask: Optional[Tensor]
             ) -> Optional[Tensor]:
    """functional has checked the arguments and made lengths an int64 tensor (as on the fused
    path); what is left is what ONNX cannot express."""
    if state_mask is not None:
        raise ValueError(STATE_MASK_ERROR)
    return lengths


def _blocks(w: Tensor, order: Sequence[int]) -> Tensor:
    """w's equal blocks along dim 0 in `order`, with ONNX's leading num_directions axis (1).
    Sliced with narrow, not chunk: the exporter folds Slice on a constant (here the parameters)
    into a constant, but not the multi-output Split that chunk becomes."""
    size = w.shape[0] // len(order)
    return torch.cat([w.narrow(0, k * size, size) for k in order]).unsqueeze(0)


def _bias(b_ih: Optional[Tensor], b_hh: Optional[Tensor], order: Sequence[int]) -> Optional[Tensor]:
    """ONNX's B (1, 2*G*H): Wb then Rb, each in ONNX's gate order; None when there is no bias."""
    if b_ih is None and b_hh is None:
        return None
    b_ih = torch.zeros_like(b_hh) if b_ih is None else b_ih
    b_hh = torch.zeros_like(b_ih) if b_hh is None else b_hh
    return torch.cat([_blocks(b_ih, order), _blocks(b_hh, order)], dim=1)


def _emit(op: str, x: Tensor, states: Sequence[Tensor], w_ih: Tensor, w_hh: Tensor,
          b_ih: Optional[Tensor], b_hh: Optional[Tensor], order: Sequence[int],
          lengths: Optional[Tensor], reverse: bool, attrs: dict,
          extra: Sequence[Optional[Tensor]] = ()) -> Tuple[Tensor, ...]:
    """One ONNX `op` over x (T, B, I), one direction; returns y (T, B, H) and the final states
    (B, H) each. ONNX's inputs: X, W, R, B, sequence_lens, initial_h[, initial_c, P]."""
    steps, batch = x.shape[0], x.shape[1]
    hidden = w_hh.shape[1]
    sequence_lens = None if lengths is None else lengths.to(torch.int32)
    inputs = [x, _blocks(w_ih, order), _blocks(w_hh, order), _bias(b_ih, b_hh, order),
              sequence_lens, *(s.unsqueeze(0) for s in states), *extra]
    attrs = dict(attrs, hidden_size=hidden, direction="reverse" if reverse else "forward")
    # Outputs: Y (T, num_directions=1, B, H), then Y_h (and LSTM's Y_c), each (1, B, H).
    shapes = [[steps, 1, batch, hidden]] + [[1, batch, hidden]] * len(states)
    y, *final = torch.onnx.ops.symbolic_multi_out(
        op, inputs, attrs, dtypes=[x.dtype] * len(shapes), shapes=shapes)
    final = [s.squeeze(0) for s in final]
    if sequence_lens is not None:
        # A sequence of length 0 ends in its initial state; onnxruntime returns zeros there
        # (the ONNX spec leaves it open).
        empty = (sequence_lens == 0).unsqueeze(1)
        final = [torch.where(empty, s0, s) for s0, s in zip(states, final)]
    return (y.squeeze(1), *final)
