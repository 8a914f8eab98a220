"""Drop-in replacements for torch.nn.RNNCell, LSTMCell and GRUCell (plus a peephole LSTM cell).

The cells subclass ``torch.nn.RNNCellBase`` (torch's parameters, names, init and extra_repr) and
run one time step as a sequence of length 1 through ``fused_rnn.functional``, i.e. the fused op.
Every cell takes a keyword-only ``backend="fused"`` (or ``"reference"``, the pure-PyTorch oracle).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import _autocast, functional, scripted

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "PeepholeLSTMCell"]

_BACKENDS = ("fused", "reference")


class _FusedCellBase(nn.RNNCellBase):
    _num_states = 1  # 1: hx is a tensor h; 2 (LSTM): hx is a tuple (h, c)

    def __init__(self, input_size: int, hidden_size: int, bias: bool, num_chunks: int, device,
                 dtype, backend: str) -> None:
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        # RNNCellBase's own __init__: next in the MRO is nn.RNNCell/LSTMCell/GRUCell (the cells
        # are instances of those), whose __init__ takes other arguments.
        nn.RNNCellBase.__init__(self, input_size, hidden_size, bias, num_chunks=num_chunks,
                                device=device, dtype=dtype)
        self.backend = backend

    def __prepare_scriptable__(self) -> nn.Module:
        """What torch.jit.script compiles instead (fused_rnn/scripted.py)."""
        return scripted.scriptable(self)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.backend == "fused" else s + f", backend={self.backend!r}"

    def _prepare(self, input: Tensor, hx) -> Tuple[Tensor, List[Tensor], bool]:
        """Checks like torch's cells; returns x (1, B, I), the states [(B, H)...], is_batched.
        (A cell runs once per token: each shape is read once, and names are made only for an
        error.)"""
        input_dims = input.dim()
        if input_dims not in (1, 2):
            raise ValueError(f"{type(self).__name__}: Expected input to be 1D or 2D, got {input_dims}D instead")
        is_batched = input_dims == 2
        x = input if is_batched else input.unsqueeze(0)
        batch, input_size = x.shape
        if input_size != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input_size} expected {self.input_size}")
        weight = self.weight_ih
        dtype, device = x.dtype, x.device
        if (dtype != weight.dtype and _autocast.autocast_dtype(x) is None) or device != weight.device:
            self._input_error(x, weight)  # (inside an autocast region the op casts the weights)
        if hx is None:
            zeros = x.new_zeros(batch, self.hidden_size)
            return x.unsqueeze(0), [zeros] * self._num_states, is_batched
        if self._num_states == 1:
            if not isinstance(hx, Tensor):
                raise TypeError(f"{type(self).__name__}: hx must be a Tensor, got {type(hx).__name__}")
            states = [hx]
        else:
            if not isinstance(hx, (tuple, list)) or not all(isinstance(s, Tensor) for s in hx):
                raise TypeError(f"{type(self).__name__}: hx must be a tuple (h, c) of two Tensors")
            if len(hx) != 2:  # torch's lstm_cell raises a RuntimeError here
                raise RuntimeError(f"{type(self).__name__} expects two hidden states (h, c), got {len(hx)}")
            states = list(hx)
        for k, s in enumerate(states):
            shape = s.shape
            if len(shape) != input_dims or (batch, self.hidden_size) != (shape if is_batched else (1, *shape)) \
                    or (s.dtype != dtype and _autocast.autocast_dtype(x) is None) \
                    or s.device != device:  # autocast casts the states, not a device
                self._state_error(k, s, input_dims, batch, x)
            if not is_batched:
                states[k] = s.unsqueeze(0)
        return x.unsqueeze(0), states, is_batched

    def _input_error(self, x: Tensor, weight: Tensor) -> None:
        """Raises what is wrong with the input's dtype or device (RuntimeError, as torch's cells)."""
        if x.dtype != weight.dtype:
            raise RuntimeError(f"{type(self).__name__} input dtype ({x.dtype}) does not match weight "
                               f"dtype ({weight.dtype}). Convert input: input.to({weight.dtype}), or "
                               f"convert model: model.to({x.dtype})")
        raise RuntimeError(f"Input and parameter tensors are not at the same device, found input "
                           f"tensor at {x.device} and parameter tensor at {weight.device}")

    def _state_error(self, k: int, s: Tensor, input_dims: int, batch: int, x: Tensor) -> None:
        """Raises what is wrong with state k, in torch's cells' words where they have them (torch
        names the states hidden0 and hidden1 in its shape messages, hidden or hx[k] in its
        dimension messages)."""
        name = type(self).__name__
        what = "hidden" if self._num_states == 1 else f"hx[{k}]"
        if s.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {s.dim()}D instead")
        if s.dim() != input_dims:
            # torch reports a confusing size mismatch here; the dimensions are what is wrong.
            raise RuntimeError(f"{name}: Expected {what} to be {input_dims}D like the input, "
                               f"got {s.dim()}D instead")
        s = s if input_dims == 2 else s.unsqueeze(0)
        if s.size(0) != batch:
            raise RuntimeError(f"Input batch size {batch} doesn't match hidden{k} batch size {s.size(0)}")
        if s.size(1) != self.hidden_size:
            raise RuntimeError(f"hidden{k} has inconsistent hidden_size: got {s.size(1)}, "
                               f"expected {self.hidden_size}")
        if s.dtype != x.dtype:
            raise RuntimeError(f"hidden{k} has dtype {s.dtype} but the input has dtype {x.dtype}")
        raise RuntimeError(f"Input and hidden tensors are not at the same device, found input "
                           f"tensor at {x.device} and hidden tensor at {s.device}")

    def _weights(self) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh


class RNNCell(_FusedCellBase, nn.RNNCell):
    """Elman cell h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu: a drop-in
    torch.nn.RNNCell. Input (B, I) or unbatched (I,); hx optional (zeros). Returns h'."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None, *, backend: str = "fused") -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(input_size, hidden_size, bias, 1, device, dtype, backend)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        x, (h,), is_batched = self._prepare(input, hx)
        _, h = functional.rnn(x, h, *self._weights(), nonlinearity=self.nonlinearity,
                              backend=self.backend)
        return h if is_batched else h.squeeze(0)


class GRUCell(_FusedCellBase, nn.GRUCell):
    """GRU cell (gate order r, z, n): a drop-in torch.nn.GRUCell. ``reset_after=False`` is the
    original GRU, n = tanh(W_in x + b_in + W_hn (r*h) + b_hn), same parameters (see fused_rnn.GRU).
    Input (B, I) or unbatched (I,); hx optional (zeros). Returns h'."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, reset_after: bool = True,
                 device=None, dtype=None, *, backend: str = "fused") -> None:
        super().__init__(input_size, hidden_size, bias, 3, device, dtype, backend)
        self.reset_after = bool(reset_after)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.reset_after else s + ", reset_after=False"

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        x, (h,), is_batched = self._prepare(input, hx)
        _, h = functional.gru(x, h, *self._weights(), reset_after=self.reset_after,
                              backend=self.backend)
        return h if is_batched else h.squeeze(0)


class LSTMCell(_FusedCellBase, nn.LSTMCell):
    """LSTM cell (gate order i, f, g, o): a drop-in torch.nn.LSTMCell. Input (B, I) or unbatched
    (I,); hx an optional tuple (h, c) (zeros). Returns (h', c')."""

    _num_states = 2

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 *, backend: str = "fused") -> None:
        super().__init__(input_size, hidden_size, bias, 4, device, dtype, backend)

    def _peepholes(self) -> Optional[Tensor]:
        return None

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        x, (h, c), is_batched = self._prepare(input, hx)
        w_ih, w_hh, b_ih, b_hh = self._weights()
        _, h, c = functional.peephole_lstm(x, h, c, w_ih, w_hh, self._peepholes(), b_ih, b_hh,
                                           backend=self.backend)
        return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))


class PeepholeLSTMCell(LSTMCell):
    """LSTM cell with diagonal peepholes ``weight_ch`` (3*hidden_size,) = (p_i, p_f, p_o):
    i = σ(a_i + p_i*c), f = σ(a_f + p_f*c), c' = f*c + i*g, o = σ(a_o + p_o*c'), h' = o*tanh(c').
    Initialised like the other weights; all zero computes exactly torch.nn.LSTMCell."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 *, backend: str = "fused") -> None:
        super().__init__(input_size, hidden_size, bias, device, dtype, backend=backend)
        self.weight_ch = nn.Parameter(torch.empty(3 * hidden_size, device=device, dtype=dtype))
        bound = 1.0 / hidden_size ** 0.5
        nn.init.uniform_(self.weight_ch, -bound, bound)

    def _peepholes(self) -> Optional[Tensor]:
        return self.weight_ch
