"""Second derivatives of the fused ops: the differentiable backward ops (csrc/ops.cpp) that the
ops' C++ autograd (csrc/autograd.cpp) calls for a backward run with create_graph=True.

The kernels' backward is not differentiable. A backward whose graph is recorded instead reruns
the recurrence with the reference's steps (fused_rnn.reference, the one statement of the cell
math) from the forward op's inputs, which keep their autograd history, and returns its
vector-Jacobian product taken with create_graph=True: differentiable to any order.

The forward op does not save its largest input, x_proj (a first-order backward never reads it),
so only x_proj's autograd edge comes here, on a tensor of zeros. Its values are not needed: x_proj
enters a step only through the pre-activations of the gate nonlinearities, and the rerun pins each
nonlinearity to the activation the fused forward saved (`_Pinned`). The derivative of σ, tanh and
relu is a function of the activation itself, so no pre-activation value is ever read.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import reference


def _sigmoid_derivative(s: Tensor) -> Tensor:
    return s * (1 - s)


def _tanh_derivative(t: Tensor) -> Tensor:
    return 1 - t * t


def _relu_derivative(y: Tensor) -> Tensor:
    return (y > 0).to(y.dtype)


class _Pinned(torch.autograd.Function):
    """act(pre) whose value is already known: returns `value`, and differentiates as act, with the
    derivative written as differentiable ops on this function's own output, so that a further
    derivative flows back through it to `pre` (as torch's own sigmoid and tanh do)."""

    @staticmethod
    def forward(ctx, pre: Tensor, value: Tensor, derivative: Callable[[Tensor], Tensor]) -> Tensor:
        out = value.clone()
        ctx.derivative = derivative
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        out, = ctx.saved_tensors
        return grad * ctx.derivative(out), None, None


def _pinned_activations(saved: Tensor, derivatives: Sequence[Callable[[Tensor], Tensor]],
                        dtype: torch.dtype) -> Callable[[int], Tuple[Callable, ...]]:
    """Step t's gate nonlinearities, pinned to saved[t] (T, B, G·H): gate k's activations are
    its k-th chunk of H columns. Detached: Elman's saved y is the forward op's output, whose node
    (the one running this backward) the rerun must not reach."""
    saved = saved.detach()

    def at(t: int) -> Tuple[Callable, ...]:
        values = saved[t].to(dtype).chunk(len(derivatives), dim=1)
        return tuple((lambda pre, v=v, d=d: _Pinned.apply(pre, v, d))
                     for v, d in zip(values, derivatives))

    return at


def _rerun_vjp(rerun: Callable[..., Sequence[Tensor]], inputs: Sequence[Optional[Tensor]],
               grad_outputs: Sequence[Optional[Tensor]], output_mask: Sequence[bool]
               ) -> Tuple[Tensor, ...]:
    """The gradients of rerun(*inputs) for the asked-for inputs (output_mask), with a graph; zeros
    for an input the outputs do not depend on (every length 0), an empty tensor where not asked.

    The rerun starts from aliases (views) of the inputs, and the gradient is taken with respect to
    those: it then counts only the paths through this rerun. With respect to the inputs
    themselves it would also count the paths through their own histories, which another node
    already accounts for (a cell's h0 is the previous step's output, made with the same weights).
    The views keep the inputs' histories for the next derivative."""
    aliases = [t.view_as(t) if t is not None and t.requires_grad else t for t in inputs]
    outputs = rerun(*aliases)
    asked = [k for k, (t, m) in enumerate(zip(inputs, output_mask)) if m and t is not None]
    wrt = [k for k in asked if aliases[k].requires_grad]
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None and o.requires_grad]
    grads: List[Optional[Tensor]] = [None] * len(wrt)
    if wrt and pairs:
        grads = list(torch.autograd.grad([o for o, _ in pairs], [aliases[k] for k in wrt],
                                         [g for _, g in pairs], create_graph=True,
                                         allow_unused=True))
    result = [outputs[0].new_empty(0)] * len(inputs)
    for k in asked:
        result[k] = torch.zeros_like(inputs[k])
    for k, grad in zip(wrt, grads):
        if grad is not None:
            result[k] = grad
    return tuple(result)


def elman_backward_differentiable(grad_y, grad_h_n, x_proj, y, h0, w_hh, b_hh, lengths,
                                  state_mask, reverse, relu, output_mask):
    activations = _pinned_activations(y, (_relu_derivative if relu else _tanh_derivative,),
                                      reference._compute_dtype(y.dtype))

    def rerun(x_proj, h0, w_hh, b_hh):
        return reference.rnn_projected(
            x_proj, h0, w_hh, b_hh, nonlinearity="relu" if relu else "tanh", lengths=lengths,
            reverse=reverse, state_mask=state_mask, activations=activations)

    return _rerun_vjp(rerun, (x_proj, h0, w_hh, b_hh), (grad_y, grad_h_n), output_mask)


def lstm_backward_differentiable(grad_y, grad_h_n, grad_c_n, x_proj, gates, h0, c0, w_hh, b_hh,
                                 w_ch, w_hr, lengths, state_mask, reverse, output_mask):
    derivatives = (_sigmoid_derivative, _sigmoid_derivative, _tanh_derivative,
                   _sigmoid_derivative)  # i, f, g, o
    activations = _pinned_activations(gates, derivatives, reference._compute_dtype(gates.dtype))

    def rerun(x_proj, h0, c0, w_hh, b_hh, w_ch, w_hr):
        return reference.peephole_lstm_projected(
            x_proj, h0, c0, w_hh, w_ch, b_hh, w_hr=w_hr, lengths=lengths, reverse=reverse,
            state_mask=state_mask, activations=activations)

    return _rerun_vjp(rerun, (x_proj, h0, c0, w_hh, b_hh, w_ch, w_hr),
                      (grad_y, grad_h_n, grad_c_n), output_mask)


def gru_backward_differentiable(grad_y, grad_h_n, x_proj, gates, h0, w_hh, b_hh, lengths,
                                state_mask, reverse, reset_after, output_mask):
    derivatives = (_sigmoid_derivative, _sigmoid_derivative, _tanh_derivative)  # r, z, n
    activations = _pinned_activations(gates, derivatives, reference._compute_dtype(gates.dtype))

    def rerun(x_proj, h0, w_hh, b_hh):
        return reference.gru_projected(
            x_proj, h0, w_hh, b_hh, reset_after=reset_after, lengths=lengths, reverse=reverse,
            state_mask=state_mask, activations=activations)

    return _rerun_vjp(rerun, (x_proj, h0, w_hh, b_hh), (grad_y, grad_h_n), output_mask)


def register() -> None:
    """Registers the three ops' CompositeImplicitAutograd kernels (autograd records their ops)."""
    for name, kernel in (("elman_backward_differentiable", elman_backward_differentiable),
                         ("lstm_backward_differentiable", lstm_backward_differentiable),
                         ("gru_backward_differentiable", gru_backward_differentiable)):
        torch.library.impl(f"fused_rnn::{name}", "CompositeImplicitAutograd")(kernel)
