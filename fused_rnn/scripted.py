"""TorchScript: what ``torch.jit.script`` compiles in place of a fused_rnn module or cell.

The modules' Python forward (PackedSequence, placement, backends, autocast checks) is beyond
TorchScript, so ``__prepare_scriptable__`` hands ``torch.jit.script`` one of the modules below
instead: the same parameters (shared, under the same names, so state_dicts match), and a forward
written in TorchScript's subset that calls the same ops (``torch.ops.fused_rnn.*_sequence``) per
layer and direction, with the same semantics: hx, lengths, batch_first, unbatched input, layers,
directions, dropout, input/output/state dropout. Not scriptable: PackedSequence input (pass
padded input and ``lengths``), ``backend="reference"``, modules placed on several devices.
A process that loads a saved scripted model must ``import fused_rnn`` first (it registers the ops).
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# TorchScript reads no global ints, so the forwards below write these as literals.
_ELMAN, _LSTM, _GRU = 0, 1, 2  # self.kind
# Position of each kind of weight in a layer-direction's index row: self._weight(k, position).
_WEIGHT_PREFIXES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "weight_ch")


def _refuse_unscriptable(module: nn.Module) -> None:
    name = type(module).__name__
    if getattr(module, "backend", "fused") != "fused":
        raise ValueError(f"{name}(backend={module.backend!r}) cannot be scripted: TorchScript "
                         "compiles the fused ops' calls; use backend='fused'")
    if getattr(module, "layer_devices", None) is not None:
        raise ValueError(f"{name} placed with place_layers cannot be scripted: call "
                         "place_layers(None) first")


def _kind(module: nn.Module) -> int:
    if isinstance(module, (nn.LSTM, nn.LSTMCell)):
        return _LSTM
    return _GRU if isinstance(module, (nn.GRU, nn.GRUCell)) else _ELMAN


def _dropout_mask(shape: List[int], p: float, like: Tensor) -> Tensor:
    return F.dropout(torch.ones(shape, dtype=like.dtype, device=like.device), p, True)


class _ScriptedLayers(nn.Module):
    """The layer loop of a fused_rnn module over time-major x (T, B, I), in TorchScript."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        _refuse_unscriptable(module)
        self.kind = _kind(module)
        self.relu = getattr(module, "nonlinearity", "tanh") == "relu"
        self.reset_after = bool(getattr(module, "reset_after", True))
        self.num_layers = module.num_layers
        self.num_directions = 2 if module.bidirectional else 1
        self.hidden_size = module.hidden_size
        self.state_size = module.proj_size or module.hidden_size
        self.input_size = module.input_size
        self.batch_first = module.batch_first
        self.dropout = float(module.dropout)
        self.input_dropout = float(module.input_dropout)
        self.output_dropout = float(module.output_dropout)
        self.state_dropout = float(module.state_dropout)
        self.algo = module.algo
        self.training = module.training
        names = [name for group in module._all_weights for name in group]
        for name in names:
            self.register_parameter(name, getattr(module, name))
        self._flat_weights = [getattr(module, name) for name in names]
        # One row per layer-direction: where each kind of weight sits in _flat_weights.
        self._weight_index: List[List[int]] = []
        for group in module._all_weights:
            row = [-1] * len(_WEIGHT_PREFIXES)
            for name in group:
                row[_WEIGHT_PREFIXES.index(name.split("_l")[0])] = names.index(name)
            self._weight_index.append(row)

    def _weight(self, k: int, which: int) -> Optional[Tensor]:
        index = self._weight_index[k][which]
        if index < 0:
            return None
        return self._flat_weights[index]

    def _run(self, x: Tensor, h0: Tensor, c0: Tensor, k: int, lengths: Optional[Tensor],
             state_mask: Optional[Tensor], reverse: bool) -> Tuple[Tensor, Tensor, Tensor]:
        w_ih, w_hh = self._weight(k, 0), self._weight(k, 1)
        assert w_ih is not None and w_hh is not None
        b_ih, b_hh = self._weight(k, 2), self._weight(k, 3)
        if self.kind == 1:  # LSTM: w_ch at 5, w_hr at 4
            return torch.ops.fused_rnn.lstm_sequence(
                x, h0, c0, w_ih, w_hh, b_ih, b_hh, self._weight(k, 5), self._weight(k, 4),
                lengths, state_mask, reverse, self.algo)
        if self.kind == 2:  # GRU
            y, h = torch.ops.fused_rnn.gru_sequence(x, h0, w_ih, w_hh, b_ih, b_hh, lengths,
                                                    state_mask, reverse, self.reset_after,
                                                    self.algo)
        else:
            y, h = torch.ops.fused_rnn.elman_sequence(x, h0, w_ih, w_hh, b_ih, b_hh, lengths,
                                                      state_mask, reverse, self.relu, self.algo)
        return y, h, c0

    def _time_major(self, input: Tensor, lengths: Optional[Tensor]
                    ) -> Tuple[Tensor, Optional[Tensor], bool]:
        if input.dim() not in (2, 3):
            raise ValueError("input must be 2-D (unbatched) or 3-D, got " + str(input.dim())
                             + "-D")
        is_batched = input.dim() == 3
        if not is_batched:
            x = input.unsqueeze(1)
        elif self.batch_first:
            x = input.transpose(0, 1)
        else:
            x = input
        if x.size(2) != self.input_size:
            raise RuntimeError("input.size(-1) must be equal to input_size. Expected "
                               + str(self.input_size) + ", got " + str(x.size(2)))
        if lengths is not None:
            if not is_batched and lengths.dim() == 0:
                lengths = lengths.reshape(1)
            if lengths.dim() != 1 or lengths.numel() != x.size(1):
                raise ValueError("lengths must be 1-D with one entry per sequence")
            if lengths.is_floating_point():
                raise ValueError("lengths must be an integer tensor")
            if lengths.device.type == "cpu" and lengths.numel() > 0:
                if bool((lengths < 0).any()) or bool((lengths > x.size(0)).any()):
                    raise ValueError("lengths must lie in [0, T=" + str(x.size(0)) + "]")
            lengths = lengths.to(device=x.device, dtype=torch.int64)
        return x, lengths, is_batched

    def _check_state(self, name: str, state: Tensor, size: int, batch: int) -> None:
        expected = [self.num_layers * self.num_directions, batch, size]
        if list(state.shape) != expected:
            raise RuntimeError("Expected " + name + " size " + str(expected) + ", got "
                               + str(list(state.shape)))

    def _layers(self, x: Tensor, h: Tensor, c: Tensor, lengths: Optional[Tensor]
                ) -> Tuple[Tensor, Tensor, Tensor]:
        batch = x.size(1)
        finals_h: List[Tensor] = []
        finals_c: List[Tensor] = []
        layer_input = x
        for layer in range(self.num_layers):
            if self.training and self.input_dropout > 0:
                layer_input = layer_input * _dropout_mask(
                    [1, batch, layer_input.size(2)], self.input_dropout, layer_input)
            outputs: List[Tensor] = []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                mask: Optional[Tensor] = None
                if self.training and self.state_dropout > 0:
                    mask = _dropout_mask([batch, self.state_size], self.state_dropout,
                                         layer_input)
                y, h_n, c_n = self._run(layer_input, h[k], c[k], k, lengths, mask,
                                        direction == 1)
                outputs.append(y)
                finals_h.append(h_n)
                finals_c.append(c_n)
            layer_input = outputs[0] if self.num_directions == 1 else torch.cat(outputs, 2)
            if self.training and self.output_dropout > 0:
                layer_input = layer_input * _dropout_mask(
                    [1, batch, layer_input.size(2)], self.output_dropout, layer_input)
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, True)
        return layer_input, torch.stack(finals_h), torch.stack(finals_c)

    def _output(self, output: Tensor, is_batched: bool) -> Tensor:
        if not is_batched:
            return output.squeeze(1)
        return output.transpose(0, 1) if self.batch_first else output


class ScriptedLSTM(_ScriptedLayers):
    """fused_rnn.LSTM / PeepholeLSTM for TorchScript: forward(input, hx=(h0, c0), lengths)."""

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None,
                lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        x, lengths, is_batched = self._time_major(input, lengths)
        layers = self.num_layers * self.num_directions
        if hx is None:
            h = x.new_zeros([layers, x.size(1), self.state_size])
            c = x.new_zeros([layers, x.size(1), self.hidden_size])
        else:
            h, c = hx
            if not is_batched:
                h, c = h.unsqueeze(1), c.unsqueeze(1)
            self._check_state("hidden[0]", h, self.state_size, x.size(1))
            self._check_state("hidden[1]", c, self.hidden_size, x.size(1))
        output, h_n, c_n = self._layers(x, h, c, lengths)
        if not is_batched:
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return self._output(output, is_batched), (h_n, c_n)


class ScriptedRNN(_ScriptedLayers):
    """fused_rnn.RNN / GRU for TorchScript: forward(input, hx=h0, lengths)."""

    def forward(self, input: Tensor, hx: Optional[Tensor] = None,
                lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        x, lengths, is_batched = self._time_major(input, lengths)
        if hx is None:
            h = x.new_zeros([self.num_layers * self.num_directions, x.size(1), self.state_size])
        else:
            h = hx if is_batched else hx.unsqueeze(1)
            self._check_state("hidden", h, self.state_size, x.size(1))
        output, h_n, _ = self._layers(x, h, h, lengths)
        if not is_batched:
            h_n = h_n.squeeze(1)
        return self._output(output, is_batched), h_n


class _ScriptedCell(nn.Module):
    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        _refuse_unscriptable(cell)
        self.kind = _kind(cell)
        self.relu = getattr(cell, "nonlinearity", "tanh") == "relu"
        self.reset_after = bool(getattr(cell, "reset_after", True))
        self.input_size, self.hidden_size = cell.input_size, cell.hidden_size
        self.weight_ih, self.weight_hh = cell.weight_ih, cell.weight_hh
        self.bias_ih, self.bias_hh = cell.bias_ih, cell.bias_hh
        self.weight_ch = getattr(cell, "weight_ch", None)

    def _prepare(self, input: Tensor, hx: Optional[Tensor]) -> Tuple[Tensor, Tensor, bool]:
        if input.dim() not in (1, 2):
            raise ValueError("Expected input to be 1D or 2D, got " + str(input.dim())
                             + "D instead")
        is_batched = input.dim() == 2
        x = input if is_batched else input.unsqueeze(0)
        if x.size(1) != self.input_size:
            raise RuntimeError("input has inconsistent input_size: got " + str(x.size(1))
                               + " expected " + str(self.input_size))
        if hx is None:
            h = x.new_zeros([x.size(0), self.hidden_size])
        else:
            h = hx if is_batched else hx.unsqueeze(0)
            if list(h.shape) != [x.size(0), self.hidden_size]:
                raise RuntimeError("hidden has the wrong shape: expected "
                                   + str([x.size(0), self.hidden_size]) + ", got "
                                   + str(list(h.shape)))
        return x.unsqueeze(0), h, is_batched

    def _step(self, x: Tensor, h: Tensor, c: Tensor) -> Tuple[Tensor, Tensor]:
        if self.kind == 1:  # LSTM
            _, h_n, c_n = torch.ops.fused_rnn.lstm_sequence(
                x, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                self.weight_ch, None, None, None, False, "auto")
            return h_n, c_n
        if self.kind == 2:  # GRU
            _, h_n = torch.ops.fused_rnn.gru_sequence(x, h, self.weight_ih, self.weight_hh,
                                                      self.bias_ih, self.bias_hh, None, None,
                                                      False, self.reset_after, "auto")
        else:
            _, h_n = torch.ops.fused_rnn.elman_sequence(x, h, self.weight_ih, self.weight_hh,
                                                        self.bias_ih, self.bias_hh, None, None,
                                                        False, self.relu, "auto")
        return h_n, c


class ScriptedLSTMCell(_ScriptedCell):
    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[Tensor, Tensor]:
        h0: Optional[Tensor] = None
        c0: Optional[Tensor] = None
        if hx is not None:
            h0, c0 = hx
        x, h, is_batched = self._prepare(input, h0)
        _, c, _ = self._prepare(input, c0)
        h_n, c_n = self._step(x, h, c)
        if not is_batched:
            return h_n.squeeze(0), c_n.squeeze(0)
        return h_n, c_n


class ScriptedCell(_ScriptedCell):
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        x, h, is_batched = self._prepare(input, hx)
        h_n, _ = self._step(x, h, h)
        return h_n if is_batched else h_n.squeeze(0)


def scriptable(module: nn.Module) -> nn.Module:
    """The TorchScript-compatible stand-in of a fused_rnn module or cell."""
    if isinstance(module, (nn.LSTMCell, nn.GRUCell, nn.RNNCell)):
        return ScriptedLSTMCell(module) if isinstance(module, nn.LSTMCell) else ScriptedCell(module)
    return ScriptedLSTM(module) if isinstance(module, nn.LSTM) else ScriptedRNN(module)
