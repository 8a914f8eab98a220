"""The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``): symbolic functions that
map the traced ``fused_rnn::{elman,lstm,gru}_sequence`` ops onto ONNX's RNN, LSTM and GRU.

That exporter traces the model with the fused ops running (their numbers are the trace's), then
asks for a symbolic function per traced op; ``register()`` provides ours, and ``fused_rnn.onnx
.active()`` calls it the first time it sees that exporter trace a fused_rnn call. The mapping is
the dynamo path's (operators.py), written with graph ops: the weights' gate blocks are sliced and
concatenated in the graph, and the exporter's constant folding turns them into initializers.
The LSTM projection (a Scan on the dynamo path) is refused here.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.onnx import symbolic_helper

from .operators import GRU_GATES, LSTM_GATES, PEEPHOLES, STATE_MASK_ERROR

__all__ = ["register"]

OPSET = 14  # the lowest opset registered for: Squeeze/Unsqueeze with axes as an input (13+)
_INT32 = 6  # onnx.TensorProto.INT32
_registered = False


def register() -> None:
    """Registers the symbolic functions of the three sequence ops (once; later calls return)."""
    global _registered
    if _registered:
        return
    for name, symbolic in (("elman_sequence", _elman), ("lstm_sequence", _lstm),
                           ("gru_sequence", _gru)):
        torch.onnx.register_custom_op_symbolic(f"fused_rnn::{name}", symbolic, OPSET)
    _registered = True


# ---------------------------------------------------------------- one symbolic per op schema
# Arguments as in csrc/ops.cpp; parse_args turns the constant flags into Python values.
@symbolic_helper.parse_args("v", "v", "v", "v", "v", "v", "v", "v", "b", "b", "s")
def _elman(g, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, state_mask, reverse, relu, algo):
    _refuse_state_mask(state_mask)
    activation = "Relu" if relu else "Tanh"
    return _emit(g, "RNN", x, [h0], w_ih, w_hh, b_ih, b_hh, (0,), lengths, reverse,
                 {"activations_s": [activation]})


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "v", "v", "v", "v", "v", "v", "b", "s")
def _lstm(g, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, lengths, state_mask, reverse, algo):
    _refuse_state_mask(state_mask)
    if not _is_none(w_hr):
        raise NotImplementedError(
            "the TorchScript ONNX exporter (dynamo=False) cannot export an LSTM with "
            "proj_size > 0: ONNX's LSTM operator has no projection. Export with dynamo=True, "
            "which writes the projected LSTM as an ONNX Scan.")
    hidden = _sizes(w_hh)[1]
    peepholes = None if _is_none(w_ch) else _blocks(g, w_ch, PEEPHOLES, hidden)
    return _emit(g, "LSTM", x, [h0, c0], w_ih, w_hh, b_ih, b_hh, LSTM_GATES, lengths,
                 reverse, {}, peepholes)


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "v", "v", "v", "b", "b", "s")
def _gru(g, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, state_mask, reverse, reset_after, algo):
    _refuse_state_mask(state_mask)
    return _emit(g, "GRU", x, [h0], w_ih, w_hh, b_ih, b_hh, GRU_GATES, lengths,
                 reverse, {"linear_before_reset_i": int(reset_after)})


# ------------------------------------------------------------------------------------ helpers
def _is_none(value) -> bool:
    return value is None or value.node().mustBeNone()


def _sizes(value) -> Sequence[int]:
    return value.type().sizes()


def _refuse_state_mask(state_mask) -> None:
    if not _is_none(state_mask):
        raise ValueError(STATE_MASK_ERROR)


def _ints(g, values: Sequence[int]):
    return g.op("Constant", value_t=torch.tensor(list(values), dtype=torch.int64))


def _missing(g):
    """An omitted optional input of an ONNX operator."""
    none = g.op("prim::Constant")
    none.setType(torch._C.OptionalType.ofTensor())
    return none


def _blocks(g, w, order: Sequence[int], size: int):
    """w's blocks of `size` rows in `order`, with ONNX's leading num_directions axis (1)."""
    parts = [g.op("Slice", w, _ints(g, [k * size]), _ints(g, [(k + 1) * size]), _ints(g, [0]))
             for k in order]
    return g.op("Unsqueeze", g.op("Concat", *parts, axis_i=0), _ints(g, [0]))


def _bias(g, b_ih, b_hh, order: Sequence[int], size: int, like):
    """ONNX's B: Wb then Rb in ONNX's gate order; None when there is no bias."""
    if _is_none(b_ih) and _is_none(b_hh):
        return None
    zeros = g.op("ConstantOfShape", _ints(g, [len(order) * size]),
                 value_t=torch.zeros(1, dtype=torch.float32))
    zeros = g.op("CastLike", zeros, like)
    b_ih = zeros if _is_none(b_ih) else b_ih
    b_hh = zeros if _is_none(b_hh) else b_hh
    return g.op("Concat", _blocks(g, b_ih, order, size), _blocks(g, b_hh, order, size), axis_i=1)


def _emit(g, op: str, x, states, w_ih, w_hh, b_ih, b_hh, order: Sequence[int], lengths,
          reverse: bool, attrs: dict, peepholes: Optional[object] = None):
    hidden = _sizes(w_hh)[1]
    bias = _bias(g, b_ih, b_hh, order, hidden, x)
    sequence_lens = None if _is_none(lengths) else g.op("Cast", lengths, to_i=_INT32)
    inputs = [x, _blocks(g, w_ih, order, hidden), _blocks(g, w_hh, order, hidden),
              _missing(g) if bias is None else bias,
              _missing(g) if sequence_lens is None else sequence_lens,
              *(g.op("Unsqueeze", s, _ints(g, [0])) for s in states)]
    if peepholes is not None:
        inputs.append(peepholes)
    y, *final = g.op(op, *inputs, outputs=1 + len(states), hidden_size_i=hidden,
                     direction_s="reverse" if reverse else "forward", **attrs)
    final = [g.op("Squeeze", s, _ints(g, [0])) for s in final]
    if sequence_lens is not None:  # length 0 ends in the initial state (see operators._emit)
        empty = g.op("Unsqueeze", g.op("Equal", sequence_lens, g.op(
            "Constant", value_t=torch.tensor(0, dtype=torch.int32))), _ints(g, [1]))
        final = [g.op("Where", empty, s0, s) for s0, s in zip(states, final)]
    return (g.op("Squeeze", y, _ints(g, [1])), *final)
