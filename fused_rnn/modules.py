"""Drop-in replacements for torch.nn.RNN, LSTM and GRU (plus a peephole LSTM).

The modules subclass ``torch.nn.RNNBase``, so parameter creation, names, shapes, registration
order, initialisation, ``all_weights``, ``extra_repr`` and (un)pickling are torch's own code and
state_dicts load both ways. What is replaced is everything that runs: ``forward`` calls one
``fused_rnn.functional`` sequence function per layer and direction (the time loop lives in the
compiled op), and ``flatten_parameters`` is a no-op because no cuDNN weight buffer exists.
"""
from __future__ import annotations

import numbers
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _autocast, _packing, functional, placement, scripted

__all__ = ["RNN", "LSTM", "GRU", "PeepholeLSTM"]

_BACKENDS = ("fused", "reference")

_COMMON_DOC = """
    Arguments as in torch.nn, plus these keyword-only ones:

    input_dropout: probability of zeroing an element of each layer's input (variational dropout,
        Gal & Ghahramani 2016; the TF ``DropoutWrapper(input_keep_prob=, variational_recurrent=True)``
        done right). One mask of shape (1, B, features) is drawn per forward call and layer, and
        held across all time steps; survivors are scaled by 1 / (1 - p). Both directions of a
        bidirectional layer see the same dropped input. Default 0.
    output_dropout: the same for each layer's output sequence, the last layer included (after
        concatenating the directions; the returned final states are not dropped). Default 0.
    state_dropout: recurrent-state dropout (Gal & Ghahramani's variational RNN dropout; TF's
        ``DropoutWrapper(state_keep_prob=, variational_recurrent=True)``): the recurrent weights of
        each layer and direction see h ⊙ m, with one mask m of shape (B, hidden or proj size) per
        forward call held across all time steps (scaled by 1 / (1 - p)). The state itself, the
        outputs and GRU's z⊙h term are not dropped. Runs inside the fused op. Default 0.
        Both are active only in ``train()`` mode; ``eval()`` is deterministic. They combine with
        torch's ``dropout`` (a fresh mask at every step, between layers only), which comes after
        ``output_dropout``. All are active only in ``train()`` mode.
    backend: ``"fused"`` (the compiled kernels, default) or ``"reference"`` (fused_rnn.reference,
        the readable pure-PyTorch oracle); see fused_rnn.functional.
    algo: the fused recurrence's algorithm, ``"auto"`` (default), ``"stepwise"`` or
        ``"persistent"``; see fused_rnn.functional and docs/persistent.md.

    ``forward(input, hx=None, lengths=None)`` takes what torch's forward takes, plus ``lengths``:
    a 1-D integer tensor (CPU or the input's device), one entry in [0, T] per sequence (for
    unbatched input, one entry or a scalar), that masks padded input: the result is exactly
    pack_padded_sequence -> torch module -> pad_packed_sequence(total_length=T); the padding is
    never read (NaN or Inf there reaches no result or gradient). Outputs past a
    sequence's length are 0, its final state is the state after its last valid step, and the
    reverse direction starts at that step. ``lengths`` must be None for a PackedSequence input.
"""


def _check_probability(name: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Number) or not 0 <= p <= 1:
        raise ValueError(f"{name} must be a number in [0, 1] (the probability of an element being "
                         f"zeroed), got {p!r}")
    return float(p)


def _dropout_mask(shape: Tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """An inverted-dropout mask of ``shape`` (entries 0 or 1 / (1 - p)) like ``like``."""
    return F.dropout(like.new_ones(shape), p, training=True)


def _variational_dropout(x: Tensor, p: float) -> Tensor:
    """x (T, B, F) times one inverted-dropout mask (1, B, F) shared by all time steps."""
    return x * _dropout_mask((1,) + tuple(x.shape[1:]), p, x)


def _refuse_proj_size(proj_size: Optional[int]) -> None:
    """torch.nn.RNN and GRU take proj_size as a keyword only to refuse it (any value, 0 too)."""
    if proj_size is not None:
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")


class _FusedRNNBase(nn.RNNBase):
    """Shared forward: input normalisation, checks, layers, directions, dropout, packing."""

    _num_states = 1  # 1: hx is a tensor h; 2 (LSTM): hx is a tuple (h, c)
    # Set by place_layers (fused_rnn/placement.py): one device per layer, or None when unplaced.
    _layer_devices: Optional[Tuple[torch.device, ...]] = None
    _pipeline_chunks: int = 1
    algo: str = "auto"  # set in __init__; the class default serves modules pickled before it existed

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int, bias: bool,
                 batch_first: bool, dropout: float, bidirectional: bool, proj_size: int, device,
                 dtype, input_dropout: float, output_dropout: float, state_dropout: float,
                 backend: str, algo: str) -> None:
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        functional.check_algo(algo)
        # RNNBase's own __init__, not super()'s: next in the MRO is nn.LSTM/GRU/RNN (the modules
        # are instances of those, for isinstance checks), whose __init__ takes other arguments.
        nn.RNNBase.__init__(self, mode, input_size, hidden_size, num_layers, bias, batch_first,
                            dropout, bidirectional, proj_size, device=device, dtype=dtype)
        self.input_dropout = _check_probability("input_dropout", input_dropout)
        self.output_dropout = _check_probability("output_dropout", output_dropout)
        self.state_dropout = _check_probability("state_dropout", state_dropout)
        self.backend = backend
        self.algo = algo

    def __prepare_scriptable__(self) -> nn.Module:
        """What torch.jit.script compiles instead: the same parameters and ops behind a
        forward in TorchScript's subset (fused_rnn/scripted.py)."""
        return scripted.scriptable(self)

    def flatten_parameters(self) -> None:
        """No-op: the fused kernels use the parameters where they are (no cuDNN weight buffer)."""

    # --- multi-device placement (the logic lives in fused_rnn/placement.py) --------------------

    def place_layers(self, devices, *, pipeline_chunks: int = 1):
        """Puts layer k's parameters on ``devices[k]`` (one device or device string per layer, any
        mix of CPU and GPUs); the forward moves activations between devices. The input and hx may
        be on any device; the output and final states come back on the last layer's device.
        state_dict names are unchanged.

        ``pipeline_chunks=k > 1`` cuts the time axis into k chunks and runs the layers as a
        wavefront (layer l+1 on chunk j while layer l is on chunk j+1), so layers on different
        devices overlap; results equal the unchunked run. Refused for bidirectional modules.

        ``.to(device)``/``.cuda()``/``.cpu()`` move every layer to that one device and drop the
        placement; dtype conversions keep it. ``place_layers(None)`` undoes it, gathering every
        layer on the first layer's device. Returns self. See docs/placement.md.
        """
        return placement.place_layers(self, devices, pipeline_chunks)

    @property
    def layer_devices(self) -> Optional[Tuple[torch.device, ...]]:
        """The device of each layer set by place_layers, or None when the module is not placed."""
        return self._layer_devices

    @property
    def pipeline_chunks(self) -> int:
        """The time chunks of the pipelined forward (1: not pipelined); set by place_layers."""
        return self._pipeline_chunks

    def _apply(self, fn, recurse=True):
        ret = super()._apply(fn, recurse)
        placement.after_apply(self)  # .to(device) & co. drop a placement they moved layers off
        return ret

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.input_dropout != 0:
            s += f", input_dropout={self.input_dropout}"
        if self.output_dropout != 0:
            s += f", output_dropout={self.output_dropout}"
        if self.state_dropout != 0:
            s += f", state_dropout={self.state_dropout}"
        if self.backend != "fused":
            s += f", backend={self.backend!r}"
        if self.algo != "auto":
            s += f", algo={self.algo!r}"
        return s + placement.describe(self)

    # --- per-layer weights and the one op call per layer and direction ------------------------

    def _weight(self, name: str, layer: int, direction: int) -> Optional[Tensor]:
        return getattr(self, f"{name}_l{layer}{'_reverse' if direction else ''}")

    def _weights(self, layer: int, direction: int) -> Tuple[Optional[Tensor], ...]:
        """(w_ih, w_hh, b_ih, b_hh) of one layer and direction; biases None when bias=False."""
        w_ih = self._weight("weight_ih", layer, direction)
        w_hh = self._weight("weight_hh", layer, direction)
        if not self.bias:
            return w_ih, w_hh, None, None
        return w_ih, w_hh, self._weight("bias_ih", layer, direction), self._weight("bias_hh", layer, direction)

    def _run(self, x: Tensor, state: Sequence[Tensor], layer: int, direction: int,
             lengths: Optional[Tensor], state_mask: Optional[Tensor] = None) -> Tuple[Tensor, ...]:
        """One layer, one direction, whole sequence: returns (y, *final_state)."""
        raise NotImplementedError

    def _state_masks(self, batch: int, like: Tensor) -> List[Optional[Tensor]]:
        """One recurrent-state dropout mask (B, P) per direction of a layer, on ``like``'s device,
        or Nones when state dropout is off (or in eval mode)."""
        num_directions = 2 if self.bidirectional else 1
        if not (self.training and self.state_dropout > 0):
            return [None] * num_directions
        size = self.proj_size or self.hidden_size
        return [_dropout_mask((batch, size), self.state_dropout, like)
                for _ in range(num_directions)]

    # --- forward -------------------------------------------------------------------------------

    def _state_sizes(self) -> Tuple[int, ...]:
        """Feature size of each state tensor: (H,) or, for the LSTM, (P or H, H)."""
        h = self.proj_size or self.hidden_size
        return (h,) if self._num_states == 1 else (h, self.hidden_size)

    def _initial_state(self, hx, x: Tensor, is_batched: bool) -> List[Tensor]:
        """hx as given by the user -> list of state tensors (L*D, B, size), checked."""
        num_directions = 2 if self.bidirectional else 1
        batch = x.size(1)
        expected = [(self.num_layers * num_directions, batch, size) for size in self._state_sizes()]
        if hx is None:
            return [x.new_zeros(shape) for shape in expected]
        if self._num_states == 1:
            if not isinstance(hx, Tensor):
                raise TypeError(f"hx must be a Tensor, got {type(hx).__name__}")
            states = [hx]
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(s, Tensor) for s in hx):
                raise TypeError("hx must be a tuple (h_0, c_0) of two Tensors")
            states = list(hx)
        dims = 3 if is_batched else 2
        if any(s.dim() != dims for s in states):  # torch's wording, per module kind
            kind = "batched 3-D" if is_batched else "unbatched 2-D"
            if self._num_states == 1:
                raise RuntimeError(f"For {kind} input, hx should also be {dims}-D but got "
                                   f"{states[0].dim()}-D tensor")
            raise RuntimeError(f"For {kind} input, hx and cx should also be {dims}-D but got "
                               f"({states[0].dim()}-D, {states[1].dim()}-D) tensors")
        if not is_batched:
            states = [s.unsqueeze(1) for s in states]
        for k, (s, shape) in enumerate(zip(states, expected)):
            name = "hidden" if self._num_states == 1 else f"hidden[{k}]"
            if s.shape != shape:
                raise RuntimeError(f"Expected {name} size {shape}, got {list(s.shape)}")
            if s.dtype != x.dtype and _autocast.autocast_dtype(x) is None:  # autocast casts
                raise RuntimeError(f"{name} has dtype {s.dtype} but the input has dtype {x.dtype}")
        return states

    def _check_devices_and_steps(self, x: Tensor, states: List[Tensor]) -> None:
        """What torch checks after its Python checks, in its order and words: the states', then
        the parameters' device against the input's, then at least one time step. A placed module
        (place_layers) takes input and hx on any device and moves them itself."""
        device = x.device
        if self._layer_devices is None:
            for s in states:
                if s.device != device:
                    raise RuntimeError(f"Input and hidden tensors are not at the same device, found "
                                       f"input tensor at {device} and hidden tensor at {s.device}")
            weight = self.weight_ih_l0  # by name: torch.func.functional_call may have swapped it
            if weight.device != device:
                raise RuntimeError(f"Input and parameter tensors are not at the same device, found "
                                   f"input tensor at {device} and parameter tensor at {weight.device}")
        if x.shape[0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")

    def _time_major(self, input, lengths):
        """Checks the input; returns (x (T, B, I), lengths or None, is_batched, packed index or None)."""
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("lengths must be None when the input is a PackedSequence "
                                 "(it carries its own lengths)")
            self.check_input(input.data, input.batch_sizes)  # dtype (ValueError), 2-D, input size
            index, lengths = _packing.packed_layout(input)
            lengths = lengths.to(input.data.device, non_blocking=True)  # once, for every layer
            return _packing.unpack(input, index), lengths, True, index
        name = type(self).__name__
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: input must be a Tensor or a PackedSequence, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            noun = " tensor" if self.mode.startswith("RNN") else ""  # torch's LSTM/GRU omit it
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D{noun} instead")
        is_batched = input.dim() == 3
        if not is_batched:
            x = input.unsqueeze(1)
        else:
            x = input.transpose(0, 1) if self.batch_first else input
        self.check_input(x, None)  # dtype (ValueError), input size (RuntimeError)
        if lengths is not None:
            lengths = torch.as_tensor(lengths)
            if not is_batched and lengths.dim() == 0:
                lengths = lengths.reshape(1)
            # Checked once here (integers in [0, T], one per sequence) and moved to the input's
            # device once, not once per layer and direction.
            lengths = functional.prepare_lengths(lengths, x.size(1), x.size(0), x.device)
        return x, lengths, is_batched, None

    def _layers(self, x: Tensor, state: List[Tensor], lengths: Optional[Tensor]
                ) -> Tuple[Tensor, List[Tensor]]:
        """All layers and directions over x (T, B, I): returns the output and the final states."""
        if self._layer_devices is not None:  # placed on several devices and/or pipelined
            return placement.run_layers(self, x, state, lengths)
        num_directions = 2 if self.bidirectional else 1
        final: List[List[Tensor]] = [[] for _ in state]
        layer_input = x
        for layer in range(self.num_layers):
            if self.training and self.input_dropout > 0:
                layer_input = _variational_dropout(layer_input, self.input_dropout)
            state_masks = self._state_masks(x.size(1), layer_input)
            outputs = []
            for direction in range(num_directions):
                k = layer * num_directions + direction
                y, *last = self._run(layer_input, [s[k] for s in state], layer, direction, lengths,
                                     state_masks[direction])
                outputs.append(y)
                for kind, s in zip(final, last):
                    kind.append(s)
            layer_input = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=2)
            if self.training and self.output_dropout > 0:
                layer_input = _variational_dropout(layer_input, self.output_dropout)
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input, [torch.stack(s) for s in final]

    def forward(self, input, hx=None, lengths: Optional[Tensor] = None):
        x, lengths, is_batched, packed_index = self._time_major(input, lengths)
        initial = self._initial_state(hx, x, is_batched)
        self._check_devices_and_steps(x, initial)
        output, states = self._layers(x, initial, lengths)
        if packed_index is not None:
            output = _packing.pack_like(output, input, packed_index)
        elif not is_batched:
            output = output.squeeze(1)
            states = [s.squeeze(1) for s in states]
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, (states[0] if self._num_states == 1 else tuple(states))


class RNN(_FusedRNNBase, nn.RNN):
    __doc__ = """Multi-layer Elman RNN, h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act tanh
    or relu: a drop-in torch.nn.RNN (same arguments, parameters, state_dict, inputs and outputs).
    """ + _COMMON_DOC

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None, *,
                 input_dropout: float = 0.0, output_dropout: float = 0.0,
                 state_dropout: float = 0.0, backend: str = "fused", algo: str = "auto",
                 proj_size: Optional[int] = None) -> None:
        _refuse_proj_size(proj_size)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, input_dropout, output_dropout,
                         state_dropout, backend, algo)
        self.nonlinearity = nonlinearity

    def _run(self, x, state, layer, direction, lengths, state_mask=None):
        return functional.rnn(x, state[0], *self._weights(layer, direction),
                              nonlinearity=self.nonlinearity, lengths=lengths,
                              state_mask=state_mask, reverse=bool(direction), backend=self.backend,
                              algo=self.algo)


class GRU(_FusedRNNBase, nn.GRU):
    __doc__ = """Multi-layer GRU, gate order r, z, n: a drop-in torch.nn.GRU.

    reset_after: True (default) is torch/cuDNN's GRU, n = tanh(W_in x + b_in + r*(W_hn h + b_hn));
        False is the original GRU (Cho et al. 2014, TF's GRUCell),
        n = tanh(W_in x + b_in + W_hn (r*h) + b_hn), with the same parameter names and shapes.
    """ + _COMMON_DOC

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 reset_after: bool = True, device=None, dtype=None, *, input_dropout: float = 0.0,
                 output_dropout: float = 0.0, state_dropout: float = 0.0,
                 backend: str = "fused", algo: str = "auto", proj_size: Optional[int] = None) -> None:
        _refuse_proj_size(proj_size)
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, input_dropout, output_dropout,
                         state_dropout, backend, algo)
        self.reset_after = bool(reset_after)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.reset_after else s + ", reset_after=False"

    def _run(self, x, state, layer, direction, lengths, state_mask=None):
        return functional.gru(x, state[0], *self._weights(layer, direction),
                              reset_after=self.reset_after, lengths=lengths,
                              state_mask=state_mask, reverse=bool(direction), backend=self.backend,
                              algo=self.algo)


class LSTM(_FusedRNNBase, nn.LSTM):
    __doc__ = """Multi-layer LSTM, gate order i, f, g, o, optional projection (proj_size): a drop-in
    torch.nn.LSTM. hx and the returned state are tuples (h, c), h of size proj_size if > 0.
    """ + _COMMON_DOC

    _num_states = 2

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, input_dropout: float = 0.0,
                 output_dropout: float = 0.0, state_dropout: float = 0.0,
                 backend: str = "fused", algo: str = "auto") -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, input_dropout, output_dropout,
                         state_dropout, backend, algo)

    def _peepholes(self, layer: int, direction: int) -> Optional[Tensor]:
        return None

    def _run(self, x, state, layer, direction, lengths, state_mask=None):
        w_ih, w_hh, b_ih, b_hh = self._weights(layer, direction)
        w_hr = self._weight("weight_hr", layer, direction) if self.proj_size > 0 else None
        return functional.peephole_lstm(x, state[0], state[1], w_ih, w_hh,
                                        self._peepholes(layer, direction), b_ih, b_hh, w_hr=w_hr,
                                        lengths=lengths, state_mask=state_mask,
                                        reverse=bool(direction), backend=self.backend,
                                        algo=self.algo)


class PeepholeLSTM(LSTM):
    __doc__ = """LSTM with diagonal peephole connections (Gers & Schmidhuber 2000; TF's
    LSTMCell(use_peepholes=True)): i = σ(a_i + p_i*c), f = σ(a_f + p_f*c), c' = f*c + i*g,
    o = σ(a_o + p_o*c'), h' = o*tanh(c'). Arguments, inputs and outputs as fused_rnn.LSTM; each
    layer and direction has one more parameter, ``weight_ch_l{k}{_reverse}`` of shape
    (3*hidden_size,) holding p_i, p_f, p_o, initialised like the others. With it all zero the
    module computes exactly torch.nn.LSTM (load an nn.LSTM state_dict with strict=False and zero
    the peepholes).
    """ + _COMMON_DOC

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, input_dropout: float = 0.0,
                 output_dropout: float = 0.0, state_dropout: float = 0.0,
                 backend: str = "fused", algo: str = "auto") -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, input_dropout=input_dropout,
                         output_dropout=output_dropout, state_dropout=state_dropout,
                         backend=backend, algo=algo)
        bound = 1.0 / hidden_size ** 0.5
        # One weight_ch per layer and direction, last in its group (after weight_hr).
        for group in self._all_weights:
            suffix = group[0][len("weight_ih"):]  # "_l{k}" or "_l{k}_reverse"
            w_ch = nn.Parameter(torch.empty(3 * hidden_size, device=device, dtype=dtype))
            nn.init.uniform_(w_ch, -bound, bound)
            setattr(self, "weight_ch" + suffix, w_ch)
            group.append("weight_ch" + suffix)
        self._flat_weights_names = [n for group in self._all_weights for n in group]
        # Register in layer order too, so parameters() and state_dict() follow all_weights.
        for n in self._flat_weights_names:
            self._parameters[n] = self._parameters.pop(n)
        self._init_flat_weights()

    def _peepholes(self, layer: int, direction: int) -> Optional[Tensor]:
        return self._weight("weight_ch", layer, direction)
