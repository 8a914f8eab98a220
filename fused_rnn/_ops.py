"""Loads the compiled ops (torch.ops.fused_rnn.*) and registers their autograd and fake kernels.

The forward ops return, beside their results, the activations that backward needs (empty
tensors when no gradient is required); autograd saves those and calls the matching backward op.
If the compiled library is missing, importing fused_rnn still works (the reference backend
needs no kernels) and the first fused call raises an error that says why.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

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


def _needs_grad(*tensors: Optional[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# Where no gradient is needed, the forward ops are called below the Autograd dispatch key, so
# torch.library's Python autograd wrapper (registered below) is skipped: it costs ~9 us a call,
# which a cell called once per token pays twice (measured on the 2-core CPU: an LSTM step op,
# B = 1, H = 128, took 18.7 us through it and 10.1 us below it). torch.compile traces the
# ordinary call. A torch without the guard takes the ordinary call too.
_below_autograd = getattr(torch._C, "_AutoDispatchBelowAutograd", None)


def _call(op, needs_grad: bool, *args):
    if needs_grad or _below_autograd is None or torch.compiler.is_compiling():
        return op(*args)
    with _below_autograd():
        return op(*args)


def _zeros_if_none(grad: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


# ------------------------------------------------------------------------------- public wrappers
def elman(x_proj: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], lengths: Optional[Tensor],
          state_mask: Optional[Tensor], reverse: bool, relu: bool,
          algo: str = "auto") -> Tuple[Tensor, Tensor]:
    _require_kernels()
    return _call(torch.ops.fused_rnn.elman_forward, _needs_grad(x_proj, h0, w_hh, b_hh), x_proj, h0,
                 w_hh, b_hh, lengths, state_mask, reverse, relu, algo)


def lstm(x_proj: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor],
         w_ch: Optional[Tensor], w_hr: Optional[Tensor], lengths: Optional[Tensor],
         state_mask: Optional[Tensor], reverse: bool,
         algo: str = "auto") -> Tuple[Tensor, Tensor, Tensor]:
    _require_kernels()
    training = _needs_grad(x_proj, h0, c0, w_hh, b_hh, w_ch, w_hr)
    y, h_n, c_n, _, _ = _call(torch.ops.fused_rnn.lstm_forward, training, x_proj, h0, c0, w_hh, b_hh,
                              w_ch, w_hr, lengths, state_mask, reverse, training, algo)
    return y, h_n, c_n


def gru(x_proj: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], lengths: Optional[Tensor],
        state_mask: Optional[Tensor], reverse: bool, reset_after: bool,
        algo: str = "auto") -> Tuple[Tensor, Tensor]:
    _require_kernels()
    training = _needs_grad(x_proj, h0, w_hh, b_hh)
    y, h_n, _, _ = _call(torch.ops.fused_rnn.gru_forward, training, x_proj, h0, w_hh, b_hh, lengths,
                         state_mask, reverse, reset_after, training, algo)
    return y, h_n


def linear(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    """x (M, K) @ w.T + b: the input projection of all steps, through the packed CPU GEMM where
    it is faster than ATen's (csrc/sequence/gemm.h)."""
    _require_kernels()
    return _call(torch.ops.fused_rnn.linear, _needs_grad(x, w, b), x, w, b)


# ------------------------------------------------------------------------------------ registration
def _c_dtype(dtype: torch.dtype) -> torch.dtype:
    """The LSTM cell state is kept in float32 for half types."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _register_fakes() -> None:
    register = torch.library.register_fake

    @register("fused_rnn::column_sums")
    def _(d):
        return d.new_empty(d.shape[-1:])

    @register("fused_rnn::elman_forward")
    def _(x_proj, h0, w_hh, b_hh, lengths, state_mask, reverse, relu, algo="auto"):
        return x_proj.new_empty(x_proj.shape), h0.new_empty(h0.shape)

    @register("fused_rnn::elman_backward")
    def _(grad_y, grad_h_n, y, h0, w_hh, lengths, state_mask, reverse, relu, algo="auto"):
        return (y.new_empty(y.shape), h0.new_empty(h0.shape), w_hh.new_empty(w_hh.shape),
                w_hh.new_empty(w_hh.shape[0]))

    @register("fused_rnn::lstm_forward")
    def _(x_proj, h0, c0, w_hh, b_hh, w_ch, w_hr, lengths, state_mask, reverse, training,
          algo="auto"):
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
        return x.new_empty((x.shape[0], w.shape[0]))


def _register_autograd() -> None:
    ops = torch.ops.fused_rnn

    def elman_setup(ctx, inputs, output):
        x_proj, h0, w_hh, b_hh, lengths, state_mask, reverse, relu, algo = inputs
        y, _ = output
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(y, h0, w_hh, lengths, state_mask)
        ctx.reverse, ctx.relu, ctx.has_bias, ctx.algo = reverse, relu, b_hh is not None, algo

    def elman_backward(ctx, grad_y, grad_h_n):
        y, h0, w_hh, lengths, state_mask = ctx.saved_tensors
        gx, gh0, gw, gb = _call(ops.elman_backward, torch.is_grad_enabled(),
                                _zeros_if_none(grad_y, y), _zeros_if_none(grad_h_n, h0), y, h0, w_hh,
                                lengths, state_mask, ctx.reverse, ctx.relu, ctx.algo)
        return gx, gh0, gw, gb if ctx.has_bias else None, None, None, None, None, None

    def lstm_setup(ctx, inputs, output):
        (x_proj, h0, c0, w_hh, b_hh, w_ch, w_hr, lengths, state_mask, reverse, training,
         algo) = inputs
        y, _, _, gates, c_all = output
        # Backward gets None, not zeros the size of gates and c_all, for the outputs that only
        # carry activations (and for whatever else the loss did not use).
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(y, gates, c_all, h0, c0, w_hh, w_ch, w_hr, lengths, state_mask)
        ctx.reverse, ctx.has_bias, ctx.training = reverse, b_hh is not None, training
        ctx.algo = algo

    def lstm_backward(ctx, grad_y, grad_h_n, grad_c_n, _grad_gates, _grad_c_all):
        if not ctx.training:
            raise RuntimeError("fused_rnn: lstm_forward ran with training=False, so it saved no "
                               "activations for backward")
        y, gates, c_all, h0, c0, w_hh, w_ch, w_hr, lengths, state_mask = ctx.saved_tensors
        gx, gh0, gc0, gw, gb, gwch, gwhr = _call(
            ops.lstm_backward, torch.is_grad_enabled(),
            _zeros_if_none(grad_y, y), _zeros_if_none(grad_h_n, h0), _zeros_if_none(grad_c_n, c0),
            y, gates, c_all, h0, c0, w_hh, w_ch, w_hr, lengths, state_mask, ctx.reverse, ctx.algo)
        return (gx, gh0, gc0, gw, gb if ctx.has_bias else None, gwch if w_ch is not None else None,
                gwhr if w_hr is not None else None, None, None, None, None, None)

    def gru_setup(ctx, inputs, output):
        (x_proj, h0, w_hh, b_hh, lengths, state_mask, reverse, reset_after, training,
         algo) = inputs
        y, _, gates, hh_n = output
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(y, gates, hh_n, h0, w_hh, lengths, state_mask)
        ctx.reverse, ctx.reset_after, ctx.algo = reverse, reset_after, algo
        ctx.has_bias, ctx.training = b_hh is not None, training

    def gru_backward(ctx, grad_y, grad_h_n, _grad_gates, _grad_hh_n):
        if not ctx.training:
            raise RuntimeError("fused_rnn: gru_forward ran with training=False, so it saved no "
                               "activations for backward")
        y, gates, hh_n, h0, w_hh, lengths, state_mask = ctx.saved_tensors
        gx, gh0, gw, gb = _call(ops.gru_backward, torch.is_grad_enabled(),
                                _zeros_if_none(grad_y, y), _zeros_if_none(grad_h_n, h0), y, gates,
                                hh_n, h0, w_hh, lengths, state_mask, ctx.reverse, ctx.reset_after,
                                ctx.algo)
        return gx, gh0, gw, gb if ctx.has_bias else None, None, None, None, None, None, None

    def linear_setup(ctx, inputs, output):
        x, w, b = inputs
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None

    def linear_backward(ctx, grad):
        # Both gradients are linear() again: d x = g · w, d w = gᵀ · x (so double backward works;
        # without create_graph they skip the Python autograd wrapper, as in _call).
        x, w = ctx.saved_tensors
        grad_x = linear(grad, w.t(), None) if ctx.needs_input_grad[0] else None
        grad_w = linear(grad.t(), x.t(), None) if ctx.needs_input_grad[1] else None
        grad_b = ops.column_sums(grad) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b

    def column_sums_setup(ctx, inputs, output):
        ctx.shape = inputs[0].shape

    def column_sums_backward(ctx, grad):
        # The sum over every leading dimension: each summed element gets the column's gradient
        # (reached by the double backward of a bias).
        return grad.expand(ctx.shape)

    def no_setup(ctx, inputs, output):
        pass

    def second_order(ctx, *grads):
        raise RuntimeError(
            "fused_rnn: the recurrent ops have no second derivative (a backward run with "
            "create_graph=True cannot be differentiated again); use backend='reference' for "
            "higher-order gradients")

    # Backward ops: raise where a graph through them is differentiated, rather than let autograd's
    # fallback return zeros with a warning.
    for name in ("elman_backward", "lstm_backward", "gru_backward"):
        torch.library.register_autograd(f"fused_rnn::{name}", second_order, setup_context=no_setup)
    torch.library.register_autograd("fused_rnn::linear", linear_backward, setup_context=linear_setup)
    torch.library.register_autograd("fused_rnn::column_sums", column_sums_backward,
                                    setup_context=column_sums_setup)
    torch.library.register_autograd("fused_rnn::elman_forward", elman_backward, setup_context=elman_setup)
    torch.library.register_autograd("fused_rnn::lstm_forward", lstm_backward, setup_context=lstm_setup)
    torch.library.register_autograd("fused_rnn::gru_forward", gru_backward, setup_context=gru_setup)


if LOAD_ERROR is None:
    _register_fakes()
    _register_autograd()
