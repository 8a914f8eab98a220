"""Pure-PyTorch reference implementation of every cell and of the sequence semantics.

This module is the test oracle for the fused kernels (and the ``backend="reference"`` path of
``fused_rnn.functional``). It is written to be obviously correct, not fast: one explicit Python
loop over time, one cell call per step, only out-of-place ops so autograd (and gradcheck) works,
for any floating dtype on any device.

Conventions (see DESIGN.md; identical to torch.nn where torch has the cell):
    weights in torch.nn's layout, gate order LSTM i, f, g, o and GRU r, z, n;
    x (T, B, I), h0 (B, P), c0 (B, H), y (T, B, P), P = proj_size if ``w_hr`` is given else H.
Half types (float16, bfloat16): every step is computed in float32, the LSTM cell state stays in
float32 across steps, h is rounded to the input dtype after each step (it feeds the next step's
GEMM in that dtype) and all outputs are returned in the input dtype.
Variable lengths: for t >= lengths[b] the output row is 0 and the state is frozen, which is exactly
pack_padded_sequence -> torch module -> pad_packed_sequence (lengths of 0 allowed).
Recurrent-state dropout: ``state_mask`` (B, P), fixed over time, multiplies h wherever the
recurrent weights (and GRU's reset gate) see it; the state itself and GRU's z⊙h are not dropped.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rnn_cell", "lstm_cell", "gru_cell", "rnn", "lstm", "peephole_lstm", "gru",
           "rnn_projected", "peephole_lstm_projected", "gru_projected"]

_HALF_TYPES = (torch.float16, torch.bfloat16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in: float32 for half types, the dtype itself otherwise."""
    return torch.float32 if dtype in _HALF_TYPES else dtype


def _cast(dtype: torch.dtype, *tensors: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
    """Casts each tensor (None passes through); ``.to`` of the same dtype is a no-op for autograd."""
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def _activation(nonlinearity: str) -> Callable[[Tensor], Tensor]:
    if nonlinearity == "tanh":
        return torch.tanh
    if nonlinearity == "relu":
        return torch.relu
    raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")


# ----------------------------------------------------------------------------------------------
# Steps: the cell math from the projected input x_proj = W_ih x + b_ih, in the compute dtype. The
# gate nonlinearities come as an argument: fused_rnn's second derivatives
# (fused_rnn/_double_backward.py) rerun these steps with nonlinearities whose values are the ones
# the fused forward saved.
# ----------------------------------------------------------------------------------------------

LSTM_ACTIVATIONS = (torch.sigmoid, torch.sigmoid, torch.tanh, torch.sigmoid)  # i, f, g, o
GRU_ACTIVATIONS = (torch.sigmoid, torch.sigmoid, torch.tanh)  # r, z, n

_Activations = Sequence[Callable[[Tensor], Tensor]]


def _recurrent_view(h: Tensor, state_mask: Optional[Tensor]) -> Tensor:
    """h as the recurrent weights see it: h ⊙ state_mask with recurrent-state dropout."""
    return h if state_mask is None else h * state_mask.to(h.dtype)


def _elman_step(x_proj: Tensor, h: Tensor, w_hh: Tensor, b_hh: Optional[Tensor],
                activations: _Activations, state_mask: Optional[Tensor]) -> Tensor:
    (act,) = activations
    return act(x_proj + F.linear(_recurrent_view(h, state_mask), w_hh, b_hh))


def _lstm_step(x_proj: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Optional[Tensor],
               w_ch: Optional[Tensor], w_hr: Optional[Tensor], state_mask: Optional[Tensor],
               activations: _Activations = LSTM_ACTIVATIONS) -> Tuple[Tensor, Tensor]:
    act_i, act_f, act_g, act_o = activations
    h_seen = _recurrent_view(h, state_mask)
    a_i, a_f, a_g, a_o = (x_proj + F.linear(h_seen, w_hh, b_hh)).chunk(4, dim=1)
    if w_ch is not None:
        p_i, p_f, p_o = w_ch.chunk(3)
        a_i = a_i + p_i * c
        a_f = a_f + p_f * c
    c_new = act_f(a_f) * c + act_i(a_i) * act_g(a_g)
    if w_ch is not None:
        a_o = a_o + p_o * c_new  # the output gate peeks at the *new* cell state
    h_new = act_o(a_o) * torch.tanh(c_new)
    if w_hr is not None:
        h_new = F.linear(h_new, w_hr)
    return h_new, c_new


def _gru_step(x_proj: Tensor, h: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], reset_after: bool,
              state_mask: Optional[Tensor], activations: _Activations = GRU_ACTIVATIONS) -> Tensor:
    act_r, act_z, act_n = activations
    i_r, i_z, i_n = x_proj.chunk(3, dim=1)
    h_seen = _recurrent_view(h, state_mask)
    if reset_after:
        h_r, h_z, h_n = F.linear(h_seen, w_hh, b_hh).chunk(3, dim=1)
        r = act_r(i_r + h_r)
        n = act_n(i_n + r * h_n)
    else:
        # r is needed before the candidate's recurrent GEMM, which acts on r⊙h: split W_hh by gate.
        w_r, w_z, w_n = w_hh.chunk(3)
        b_r, b_z, b_n = (None, None, None) if b_hh is None else b_hh.chunk(3)
        h_r, h_z = F.linear(h_seen, w_r, b_r), F.linear(h_seen, w_z, b_z)
        r = act_r(i_r + h_r)
        n = act_n(i_n + F.linear(r * h_seen, w_n, b_n))
    z = act_z(i_z + h_z)
    return (1 - z) * n + z * h


# ----------------------------------------------------------------------------------------------
# Cells: one time step. h' is returned in x's dtype; the LSTM's c' in c's dtype, so a sequence
# that passes a float32 c keeps it in float32 while h is rounded to the half input dtype.
# ----------------------------------------------------------------------------------------------

def rnn_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
             b_hh: Optional[Tensor] = None, nonlinearity: str = "tanh",
             state_mask: Optional[Tensor] = None) -> Tensor:
    """Elman cell: h' = act(W_ih x + b_ih + W_hh h + b_hh)."""
    act = _activation(nonlinearity)
    out_dtype = x.dtype
    x, h, w_ih, w_hh, b_ih, b_hh = _cast(_compute_dtype(x.dtype), x, h, w_ih, w_hh, b_ih, b_hh)
    return _elman_step(F.linear(x, w_ih, b_ih), h, w_hh, b_hh, (act,), state_mask).to(out_dtype)


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
              w_ch: Optional[Tensor] = None, w_hr: Optional[Tensor] = None,
              state_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """LSTM cell, optionally with diagonal peepholes w_ch = (p_i, p_f, p_o) and projection w_hr.

    i = σ(a_i + p_i⊙c), f = σ(a_f + p_f⊙c), g = tanh(a_g), c' = f⊙c + i⊙g,
    o = σ(a_o + p_o⊙c'), h' = o⊙tanh(c') (then h' @ w_hr.T with a projection).
    """
    h_dtype, c_dtype = x.dtype, c.dtype
    x, h, c, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr = _cast(
        _compute_dtype(x.dtype), x, h, c, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr)
    h_new, c_new = _lstm_step(F.linear(x, w_ih, b_ih), h, c, w_hh, b_hh, w_ch, w_hr, state_mask)
    return h_new.to(h_dtype), c_new.to(c_dtype)


def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
             b_hh: Optional[Tensor] = None, reset_after: bool = True,
             state_mask: Optional[Tensor] = None) -> Tensor:
    """GRU cell, h' = (1-z)⊙n + z⊙h with
    reset_after=True (torch/cuDNN):    n = tanh(W_in x + b_in + r⊙(W_hn h + b_hn));
    reset_after=False (original, TF):  n = tanh(W_in x + b_in + W_hn (r⊙h) + b_hn).
    """
    out_dtype = x.dtype
    x, h, w_ih, w_hh, b_ih, b_hh = _cast(_compute_dtype(x.dtype), x, h, w_ih, w_hh, b_ih, b_hh)
    return _gru_step(F.linear(x, w_ih, b_ih), h, w_hh, b_hh, reset_after, state_mask).to(out_dtype)


# ----------------------------------------------------------------------------------------------
# Sequences: the time loop and the variable-length masking, shared by every cell.
# ----------------------------------------------------------------------------------------------

_Step = Callable[[int, Tuple[Tensor, ...]], Tuple[Tensor, ...]]


def _valid_lengths(lengths, batch: int, steps: int, device: torch.device) -> Optional[Tensor]:
    """lengths (list or integer tensor on any device) -> int64 tensor on ``device``, checked."""
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be integers, got dtype {lengths.dtype}")
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
    if batch > 0 and (int(lengths.min()) < 0 or int(lengths.max()) > steps):
        raise ValueError(f"lengths must lie in [0, T={steps}]")
    return lengths.long()


def _scan(step: _Step, x: Tensor, state: Sequence[Tensor], lengths, reverse: bool
          ) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    """Runs ``step(t, state) -> state'`` over time (x gives T and B); state[0] is the output h.

    Returns y (T, B, P) and the final state. A step is valid for sequence b when t < lengths[b];
    invalid steps keep the state and emit zeros. In reverse the invalid steps come first, so each
    sequence starts from its initial state at its own last valid step, like torch's packed reverse.
    """
    steps, batch = x.shape[:2]
    lengths = _valid_lengths(lengths, batch, steps, x.device)
    state = tuple(state)
    ys = []
    for t in (reversed(range(steps)) if reverse else range(steps)):
        new_state = step(t, state)
        out = new_state[0]
        if lengths is None:
            state = new_state
        else:
            valid = (t < lengths).unsqueeze(1)  # (B, 1), broadcasts over the hidden units
            state = tuple(torch.where(valid, new, old) for new, old in zip(new_state, state))
            out = torch.where(valid, out, torch.zeros_like(out))
        ys.append(out)
    if reverse:
        ys.reverse()  # y[t] belongs to time t in either direction
    y = torch.stack(ys) if ys else state[0].new_empty((0,) + tuple(state[0].shape))
    return y, state


def rnn(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
        b_hh: Optional[Tensor] = None, *, nonlinearity: str = "tanh", lengths: Optional[Tensor] = None,
        reverse: bool = False, state_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Elman RNN over a sequence. Returns (y, h_n)."""
    _activation(nonlinearity)  # reject a bad name even when T == 0

    def step(t, state):
        return (rnn_cell(x[t], state[0], w_ih, w_hh, b_ih, b_hh, nonlinearity, state_mask),)

    y, (h_n,) = _scan(step, x, (h0,), lengths, reverse)
    return y, h_n


def peephole_lstm(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, w_ch: Optional[Tensor],
                  b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None, *,
                  w_hr: Optional[Tensor] = None, lengths: Optional[Tensor] = None,
                  reverse: bool = False, state_mask: Optional[Tensor] = None
                  ) -> Tuple[Tensor, Tensor, Tensor]:
    """LSTM with diagonal peepholes w_ch (None = plain LSTM). Returns (y, h_n, c_n)."""

    def step(t, state):
        return lstm_cell(x[t], state[0], state[1], w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, state_mask)

    # Half inputs: the cell state is carried in float32 and rounded only when returned.
    c_start = c0.to(_compute_dtype(c0.dtype))
    y, (h_n, c_n) = _scan(step, x, (h0, c_start), lengths, reverse)
    return y, h_n, c_n.to(c0.dtype)


def lstm(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
         b_hh: Optional[Tensor] = None, *, w_hr: Optional[Tensor] = None,
         lengths: Optional[Tensor] = None, reverse: bool = False,
         state_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """LSTM (gate order i, f, g, o), optional projection w_hr. Returns (y, h_n, c_n)."""
    return peephole_lstm(x, h0, c0, w_ih, w_hh, None, b_ih, b_hh, w_hr=w_hr, lengths=lengths,
                         reverse=reverse, state_mask=state_mask)


def gru(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
        b_hh: Optional[Tensor] = None, *, reset_after: bool = True, lengths: Optional[Tensor] = None,
        reverse: bool = False, state_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """GRU (gate order r, z, n), either reset_after variant. Returns (y, h_n)."""

    def step(t, state):
        return (gru_cell(x[t], state[0], w_ih, w_hh, b_ih, b_hh, reset_after, state_mask),)

    y, (h_n,) = _scan(step, x, (h0,), lengths, reverse)
    return y, h_n


# ----------------------------------------------------------------------------------------------
# Sequences from the projected input x_proj = x W_ihᵀ + b_ih (T, B, G·H): what the fused forward
# ops compute. ``activations(t)``, optional, gives step t's gate nonlinearities (default: the
# cell's own; fused_rnn's second derivatives pin them to the fused forward's saved activations).
# ----------------------------------------------------------------------------------------------

_StepActivations = Optional[Callable[[int], _Activations]]


def rnn_projected(x_proj: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor] = None, *,
                  nonlinearity: str = "tanh", lengths: Optional[Tensor] = None,
                  reverse: bool = False, state_mask: Optional[Tensor] = None,
                  activations: _StepActivations = None) -> Tuple[Tensor, Tensor]:
    """Elman RNN from x_proj (T, B, H). Returns (y, h_n)."""
    act = (_activation(nonlinearity),)
    dtype = _compute_dtype(x_proj.dtype)
    w_hh, b_hh = _cast(dtype, w_hh, b_hh)

    def step(t, state):
        h = _elman_step(x_proj[t].to(dtype), state[0].to(dtype), w_hh, b_hh,
                        act if activations is None else activations(t), state_mask)
        return (h.to(x_proj.dtype),)

    y, (h_n,) = _scan(step, x_proj, (h0,), lengths, reverse)
    return y, h_n


def peephole_lstm_projected(x_proj: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor,
                            w_ch: Optional[Tensor], b_hh: Optional[Tensor] = None, *,
                            w_hr: Optional[Tensor] = None, lengths: Optional[Tensor] = None,
                            reverse: bool = False, state_mask: Optional[Tensor] = None,
                            activations: _StepActivations = None
                            ) -> Tuple[Tensor, Tensor, Tensor]:
    """LSTM with optional peepholes w_ch and projection w_hr from x_proj (T, B, 4H).
    Returns (y, h_n, c_n)."""
    dtype = _compute_dtype(x_proj.dtype)
    w_hh, b_hh, w_ch, w_hr = _cast(dtype, w_hh, b_hh, w_ch, w_hr)

    def step(t, state):
        h, c = _lstm_step(x_proj[t].to(dtype), state[0].to(dtype), state[1], w_hh, b_hh, w_ch,
                          w_hr, state_mask,
                          LSTM_ACTIVATIONS if activations is None else activations(t))
        return h.to(x_proj.dtype), c

    # Half inputs: the cell state is carried in float32 and rounded only when returned.
    y, (h_n, c_n) = _scan(step, x_proj, (h0, c0.to(dtype)), lengths, reverse)
    return y, h_n, c_n.to(c0.dtype)


def gru_projected(x_proj: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor] = None, *,
                  reset_after: bool = True, lengths: Optional[Tensor] = None,
                  reverse: bool = False, state_mask: Optional[Tensor] = None,
                  activations: _StepActivations = None) -> Tuple[Tensor, Tensor]:
    """GRU (either reset_after variant) from x_proj (T, B, 3H). Returns (y, h_n)."""
    dtype = _compute_dtype(x_proj.dtype)
    w_hh, b_hh = _cast(dtype, w_hh, b_hh)

    def step(t, state):
        h = _gru_step(x_proj[t].to(dtype), state[0].to(dtype), w_hh, b_hh, reset_after,
                      state_mask, GRU_ACTIVATIONS if activations is None else activations(t))
        return (h.to(x_proj.dtype),)

    y, (h_n,) = _scan(step, x_proj, (h0,), lengths, reverse)
    return y, h_n
