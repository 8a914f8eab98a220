"""Loads the compiled ops (torch.ops.fused_rnn.*) and registers their fake kernels.

The forward ops return, beside their results, the activations that backward needs (empty
tensors when no gradient is required); their autograd, in C++ (csrc/autograd.cpp), saves those
and calls the matching backward op, or, for a backward with create_graph=True, a differentiable
one implemented in Python (_double_backward.py, registered here).
If the compiled library is missing, importing fused_rnn still works (the reference backend
needs no kernels) and the first fused call raises an error that says why.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _double_backward

try:
    from . import _C
    LOAD_ERROR: Optional[BaseException] = None
except ImportError as error:  # not built, or built against another torch
    _C = None
    LOAD_ERROR = error


def compiled_build_info() -> dict:
    return dict(_C.build_info())


def _require_kernels() -> None:
    if LOAD_ERROR is not None:
        raise RuntimeError(
            f"fused_rnn's compiled kernels could not be loaded ({LOAD_ERROR}). Build them with "
            "`pip install --no-build-isolation -e .`, or use backend='reference'.")


# ------------------------------------------------------------------------------- public wrappers
# One layer and direction from its input x (T, B, I): the input projection and the recurrence in
# one op call (csrc/sequences.cpp).
def elman(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
          b_hh: Optional[Tensor], lengths: Optional[Tensor], state_mask: Optional[Tensor],
          reverse: bool, relu: bool, algo: str = "auto") -> Tuple[Tensor, Tensor]:
    _require_kernels()
    return torch.ops.fused_rnn.elman_sequence(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, state_mask,
                                              reverse, relu, algo)


def lstm(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
         b_hh: Optional[Tensor], w_ch: Optional[Tensor], w_hr: Optional[Tensor],
         lengths: Optional[Tensor], state_mask: Optional[Tensor], reverse: bool,
         algo: str = "auto") -> Tuple[Tensor, Tensor, Tensor]:
    _require_kernels()
    return torch.ops.fused_rnn.lstm_sequence(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, lengths,
                                             state_mask, reverse, algo)


def gru(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
        b_hh: Optional[Tensor], lengths: Optional[Tensor], state_mask: Optional[Tensor],
        reverse: bool, reset_after: bool, algo: str = "auto") -> Tuple[Tensor, Tensor]:
    _require_kernels()
    return torch.ops.fused_rnn.gru_sequence(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, state_mask,
                                            reverse, reset_after, algo)


def linear(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    """x (M, K) @ w.T + b: the input projection of all steps, through the packed CPU GEMM where
    it is faster than ATen's (csrc/sequence/gemm.h)."""
    _require_kernels()
    return torch.ops.fused_rnn.linear(x, w, b)


# ------------------------------------------------------------------------------------ registration
def _c_dtype(dtype: torch.dtype) -> torch.dtype:
    """The LSTM cell state is kept in float32 for half types."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _same_device(op: str, first: Tensor, **others: Optional[Tensor]) -> None:
    """The device check the real kernels make: without it a meta tensor among CPU or CUDA ones
    would send the call to these fake kernels, which would return results for it."""
    for name, t in others.items():
        if t is not None and t.device != first.device:
            raise RuntimeError(f"fused_rnn::{op}: {name} is on {t.device} but the input is on "
                               f"{first.device}")


def _register_fakes() -> None:
    register = torch.library.register_fake

    @register("fused_rnn::column_sums")
    def _(d):
        return d.new_empty(d.shape[-1:])

    @register("fused_rnn::elman_forward")
    def _(x_proj, h0, w_hh, b_hh, lengths, state_mask, reverse, relu, algo="auto"):
        _same_device("elman_forward", x_proj, h0=h0, w_hh=w_hh, b_hh=b_hh, lengths=lengths,
                     state_mask=state_mask)
        return x_proj.new_empty(x_proj.shape), h0.new_empty(h0.shape)

    @register("fused_rnn::elman_backward")
    def _(grad_y, grad_h_n, y, h0, w_hh, lengths, state_mask, reverse, relu, algo="auto"):
        return (y.new_empty(y.shape), h0.new_empty(h0.shape), w_hh.new_empty(w_hh.shape),
                w_hh.new_empty(w_hh.shape[0]))

    @register("fused_rnn::lstm_forward")
    def _(x_proj, h0, c0, w_hh, b_hh, w_ch, w_hr, lengths, state_mask, reverse, training,
          algo="auto"):
        _same_device("lstm_forward", x_proj, h0=h0, c0=c0, w_hh=w_hh, b_hh=b_hh, w_ch=w_ch,
                     w_hr=w_hr, lengths=lengths, state_mask=state_mask)
        steps, batch, gates = x_proj.shape
        hidden, state = gates // 4, h0.shape[1]
        saved_gates = x_proj.new_empty(x_proj.shape) if training else x_proj.new_empty(0)
        c_all = (x_proj.new_empty((steps, batch, hidden), dtype=_c_dtype(x_proj.dtype)) if training
                 else x_proj.new_empty(0, dtype=_c_dtype(x_proj.dtype)))
        return (x_proj.new_empty((steps, batch, state)), h0.new_empty(h0.shape),
                c0.new_empty(c0.shape), saved_gates, c_all)

    @register("fused_rnn::lstm_backward")
    def _(grad_y, grad_h_n, grad_c_n, y, gates, c_all, h0, c0, w_hh, w_ch, w_hr, lengths, state_mask,
          reverse, algo="auto"):
        return (gates.new_empty(gates.shape), h0.new_empty(h0.shape), c0.new_empty(c0.shape),
                w_hh.new_empty(w_hh.shape), w_hh.new_empty(w_hh.shape[0]),
                w_ch.new_empty(w_ch.shape) if w_ch is not None else gates.new_empty(0),
                w_hr.new_empty(w_hr.shape) if w_hr is not None else gates.new_empty(0))

    @register("fused_rnn::gru_forward")
    def _(x_proj, h0, w_hh, b_hh, lengths, state_mask, reverse, reset_after, training,
          algo="auto"):
        _same_device("gru_forward", x_proj, h0=h0, w_hh=w_hh, b_hh=b_hh, lengths=lengths,
                     state_mask=state_mask)
        steps, batch, gates = x_proj.shape
        hidden = gates // 3
        saved_gates = x_proj.new_empty(x_proj.shape) if training else x_proj.new_empty(0)
        hh_n = (x_proj.new_empty((steps, batch, hidden)) if training and reset_after
                else x_proj.new_empty(0))
        return x_proj.new_empty((steps, batch, hidden)), h0.new_empty(h0.shape), saved_gates, hh_n

    @register("fused_rnn::gru_backward")
    def _(grad_y, grad_h_n, y, gates, hh_n, h0, w_hh, lengths, state_mask, reverse, reset_after,
          algo="auto"):
        return (gates.new_empty(gates.shape), h0.new_empty(h0.shape), w_hh.new_empty(w_hh.shape),
                w_hh.new_empty(w_hh.shape[0]))

    @register("fused_rnn::linear")
    def _(x, w, b):
        _same_device("linear", x, w=w, b=b)
        return x.new_empty((x.shape[0], w.shape[0]))


if LOAD_ERROR is None:
    _register_fakes()
    _double_backward.register()
