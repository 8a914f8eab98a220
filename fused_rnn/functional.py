"""Sequence functions: one layer, one direction, a whole sequence per call.

Every function takes the sequence ``x`` of shape (T, B, I) and the layer's weights in torch.nn's
layout, and returns the output sequence and the final state(s). One compiled op call
(``torch.ops.fused_rnn.*_sequence``) runs the input projection ``x @ w_ih.T + b_ih`` for all T
steps as one GEMM and then the whole recurrence, so there is no per-step Python.

Shapes (G = gates per cell: Elman 1, GRU 3, LSTM 4; P = proj_size or H):
    x        (T, B, I)
    h0       (B, P)          c0 (B, H)
    w_ih     (G*H, I)        w_hh (G*H, P)        b_ih, b_hh (G*H,)
    w_ch     (3*H,)          peepholes of gates i, f, o
    w_hr     (P, H)          LSTM projection
    lengths  (B,) integer, values in [0, T]; None means every sequence has length T.
    returns  y (T, B, P) with zeros at t >= lengths[b]; h_n (B, P); c_n (B, H)

``state_mask`` (B, P), optional: recurrent-state dropout (variational). The recurrent GEMMs see
h ⊙ state_mask (entries 0 or 1/(1-p), one mask for the whole sequence); the state itself is not
dropped. The modules' ``state_dropout`` draws it.
``reverse=True`` runs the sequence backwards in time, each sequence starting from its own last
valid step ``lengths[b] - 1`` (the reverse half of a bidirectional layer).
``backend="reference"`` runs fused_rnn.reference instead (the readable pure-PyTorch oracle).
``algo`` picks the fused recurrence's algorithm (docs/persistent.md):
    "stepwise"    one recurrent GEMM and one fused pointwise kernel per time step; any shape.
    "persistent"  the whole loop in one kernel that keeps W_hh on chip (CUDA), or in one
                  threaded region over packed W_hh (CPU, float32, AVX2 + FMA, hidden sizes that are
                  multiples of 16). Raises ValueError where it cannot run: LSTM projection,
                  reset_before GRU off CUDA, state dropout, a W_hh too large for the GPU's
                  shared memory.
    "auto"        (default) on the CPU persistent where it can run and the sequence has at
                  least 128 rows; on CUDA persistent where a block's share of a step is small
                  (docs/persistent.md), else stepwise.
Under a torch.func transform that differentiates (``torch.func.grad``, ``vjp``, ``jacrev``,
``jvp``) the reference backend runs: the fused ops' C++ autograd cannot run there.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _ops, reference
from . import onnx as _onnx  # torch.onnx.export's path (fused_rnn/onnx)

try:  # functorch's interpreter stack: which torch.func transforms are active
    from torch._C._functorch import TransformType
    from torch._C._functorch import peek_interpreter_stack as _peek_interpreter_stack
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
except ImportError:  # a torch without it: no transforms to see
    _peek_interpreter_stack = None

__all__ = ["rnn", "lstm", "peephole_lstm", "gru"]

_BACKENDS = ("fused", "reference")
ALGORITHMS = ("auto", "stepwise", "persistent")


def _backend_to_run(backend: str) -> str:
    """The backend that runs: `backend`, or "reference" under a torch.func transform that
    differentiates (grad, vjp, jacrev, jvp, ...). The fused ops' autograd is a C++ Function,
    which functorch refuses ("cannot use C++ torch::autograd::Function with functorch
    transforms"); the reference backend is plain PyTorch ops, which every transform supports.
    Under vmap alone the fused ops run (per batch entry, through functorch's fallback)."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "fused" and _differentiating_transform_active():
        return "reference"
    return backend


def _differentiating_transform_active() -> bool:
    # torch.compile cannot trace the interpreter stack; a compiled graph gets the fused ops.
    if _peek_interpreter_stack is None or torch.compiler.is_compiling():
        return False
    if _peek_interpreter_stack() is None:
        return False  # no transform: the common case, one C call
    return any(interpreter.key() in (TransformType.Grad, TransformType.Jvp)
               for interpreter in retrieve_all_functorch_interpreters())


def check_algo(algo: str) -> None:
    if algo not in ALGORITHMS:
        raise ValueError(f"algo must be one of {ALGORITHMS}, got {algo!r}")


def _check_sequence(x: Tensor, h0: Tensor, w_ih: Tensor) -> None:
    # Each shape read once: a cell called once per token pays these checks every step.
    x_shape, h0_shape, w_shape = x.shape, h0.shape, w_ih.shape
    if len(x_shape) != 3:
        raise ValueError(f"x must be 3-D (T, B, I), got shape {tuple(x_shape)}")
    if len(w_shape) != 2 or x_shape[2] != w_shape[1]:
        raise ValueError(f"x has input size {x_shape[2]} but w_ih expects "
                         f"{w_shape[1] if len(w_shape) == 2 else '?'} (w_ih shape {tuple(w_shape)})")
    if len(h0_shape) != 2 or h0_shape[0] != x_shape[1]:
        raise ValueError(f"h0 must be (B={x_shape[1]}, hidden), got shape {tuple(h0_shape)}")
    if w_ih.dtype != x.dtype:
        raise ValueError(f"w_ih has dtype {w_ih.dtype} but x has dtype {x.dtype}")


def prepare_lengths(lengths: Optional[Tensor], batch: int, steps: int,
                    device: torch.device) -> Optional[Tensor]:
    """Validates ``lengths`` and returns it as int64 on ``device`` (one copy, before the loop)."""
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
    if lengths.dim() != 1 or lengths.numel() != batch:
        raise ValueError(f"lengths must be 1-D with one entry per sequence (B={batch}), "
                         f"got shape {tuple(lengths.shape)}")
    # (Under torch.export the values are symbolic: nothing to read.)
    if not torch.compiler.is_exporting() and batch > 0 and lengths.device.type == "cpu":
        # Checked where it is free. Lengths already on the GPU are not read back (that would
        # synchronise); there, values outside [0, T] clamp (< 0: nothing valid, > T: all valid).
        low, high = torch.aminmax(lengths)
        if int(low) < 0 or int(high) > steps:
            raise ValueError(f"lengths must lie in [0, T={steps}], got values in [{int(low)}, {int(high)}]")
    return lengths.to(device=device, dtype=torch.int64, non_blocking=True).contiguous()


def rnn(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
        b_hh: Optional[Tensor] = None, *, nonlinearity: str = "tanh", lengths: Optional[Tensor] = None,
        reverse: bool = False, state_mask: Optional[Tensor] = None,
        backend: str = "fused", algo: str = "auto") -> Tuple[Tensor, Tensor]:
    """Elman RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu. Returns (y, h_n)."""
    backend = _backend_to_run(backend)
    check_algo(algo)
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    if _onnx.active():  # torch.onnx.export: ONNX's RNN operator instead of the fused op
        return _onnx.rnn(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity=nonlinearity,
                         lengths=lengths, reverse=reverse, state_mask=state_mask)
    if backend == "reference":
        return reference.rnn(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity=nonlinearity,
                             lengths=lengths, reverse=reverse, state_mask=state_mask)
    _check_sequence(x, h0, w_ih)
    lengths = prepare_lengths(lengths, x.size(1), x.size(0), x.device)
    return _ops.elman(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, state_mask, reverse,
                      nonlinearity == "relu", algo)


def lstm(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
         b_hh: Optional[Tensor] = None, *, w_hr: Optional[Tensor] = None,
         lengths: Optional[Tensor] = None, reverse: bool = False,
         state_mask: Optional[Tensor] = None, backend: str = "fused",
         algo: str = "auto") -> Tuple[Tensor, Tensor, Tensor]:
    """LSTM (gate order i, f, g, o), optional projection w_hr. Returns (y, h_n, c_n)."""
    return peephole_lstm(x, h0, c0, w_ih, w_hh, None, b_ih, b_hh, w_hr=w_hr, lengths=lengths,
                         reverse=reverse, state_mask=state_mask, backend=backend, algo=algo)


def peephole_lstm(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, w_ch: Optional[Tensor],
                  b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None, *,
                  w_hr: Optional[Tensor] = None, lengths: Optional[Tensor] = None,
                  reverse: bool = False, state_mask: Optional[Tensor] = None,
                  backend: str = "fused", algo: str = "auto") -> Tuple[Tensor, Tensor, Tensor]:
    """LSTM with diagonal peepholes w_ch = (p_i, p_f, p_o), each (H,):
    i = σ(a_i + p_i⊙c), f = σ(a_f + p_f⊙c), c' = f⊙c + i⊙g, o = σ(a_o + p_o⊙c'), h' = o⊙tanh(c').
    ``w_ch=None`` is the plain LSTM. Returns (y, h_n, c_n)."""
    backend = _backend_to_run(backend)
    check_algo(algo)
    if _onnx.active():  # torch.onnx.export: ONNX's LSTM operator instead of the fused op
        return _onnx.peephole_lstm(x, h0, c0, w_ih, w_hh, w_ch, b_ih, b_hh, w_hr=w_hr,
                                   lengths=lengths, reverse=reverse, state_mask=state_mask)
    if backend == "reference":
        return reference.peephole_lstm(x, h0, c0, w_ih, w_hh, w_ch, b_ih, b_hh, w_hr=w_hr,
                                       lengths=lengths, reverse=reverse, state_mask=state_mask)
    _check_sequence(x, h0, w_ih)
    lengths = prepare_lengths(lengths, x.size(1), x.size(0), x.device)
    return _ops.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, lengths, state_mask, reverse,
                     algo)


def gru(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
        b_hh: Optional[Tensor] = None, *, reset_after: bool = True, lengths: Optional[Tensor] = None,
        reverse: bool = False, state_mask: Optional[Tensor] = None,
        backend: str = "fused", algo: str = "auto") -> Tuple[Tensor, Tensor]:
    """GRU (gate order r, z, n). reset_after=True is torch/cuDNN's
    n = tanh(W_in x + b_in + r⊙(W_hn h + b_hn)); reset_after=False is the original (TF GRUCell)
    n = tanh(W_in x + b_in + W_hn (r⊙h) + b_hn). h' = (1-z)⊙n + z⊙h. Returns (y, h_n)."""
    backend = _backend_to_run(backend)
    check_algo(algo)
    if _onnx.active():  # torch.onnx.export: ONNX's GRU operator instead of the fused op
        return _onnx.gru(x, h0, w_ih, w_hh, b_ih, b_hh, reset_after=reset_after, lengths=lengths,
                         reverse=reverse, state_mask=state_mask)
    if backend == "reference":
        return reference.gru(x, h0, w_ih, w_hh, b_ih, b_hh, reset_after=reset_after,
                             lengths=lengths, reverse=reverse, state_mask=state_mask)
    _check_sequence(x, h0, w_ih)
    lengths = prepare_lengths(lengths, x.size(1), x.size(0), x.device)
    return _ops.gru(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, state_mask, reverse, reset_after, algo)
