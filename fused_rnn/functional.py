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
    lengths  (B,) integer, values in [0, T], on the CPU or x's device; None means every
             sequence has length T. x's rows at t >= lengths[b] are never read: they are zeroed
             before the input projection, so NaN or Inf there reaches no output or gradient.
    returns  y (T, B, P) with zeros at t >= lengths[b]; h_n (B, P); c_n (B, H)

Every tensor argument is checked before the op call, by its public name (fused_rnn/_checks.py):
shapes against x and w_hh, x's dtype and x's device for all (meta included); a wrong one raises
ArgumentError (a ValueError and a RuntimeError), a missing one TypeError. The fused backend needs
T >= 1; the reference backend returns the initial state for T == 0.

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

from . import _autocast, _checks, _ops, reference
from ._checks import ArgumentError
from . import onnx as _onnx  # torch.onnx.export's path (fused_rnn/onnx)

try:  # functorch's interpreter stack: which torch.func transforms are active
    from torch._C._functorch import TransformType
    from torch._C._functorch import peek_interpreter_stack as _peek_interpreter_stack
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
except ImportError:  # a torch without it: no transforms to see
    _peek_interpreter_stack = None

__all__ = ["rnn", "lstm", "peephole_lstm", "gru", "ArgumentError"]

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


def _reference(fn, x: Tensor, *args, **kwargs):
    """The reference backend's ``fn``; inside an autocast region with the casts the fused ops'
    autocast kernels make, so that both backends compute the same thing there."""
    dtype = _autocast.autocast_dtype(x)
    if dtype is None:
        return fn(x, *args, **kwargs)
    return _autocast.run_cast(fn, dtype, x.device.type, x, *args, **kwargs)


def prepare_lengths(lengths: Optional[Tensor], batch: int, steps: int,
                    device: torch.device, fn: str = "") -> Optional[Tensor]:
    """Validates ``lengths`` and returns it as int64 on ``device`` (one copy, before the loop)."""
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    _checks.lengths_device(fn, lengths, device)
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
    if lengths.dim() != 1 or lengths.numel() != batch:
        raise ValueError(f"lengths must be 1-D with one entry per sequence (B={batch}), "
                         f"got shape {tuple(lengths.shape)}")
    if torch.compiler.is_exporting():
        pass  # the values are symbolic under torch.export: nothing to read, no assert to export
    elif torch.compiler.is_compiling() and lengths.device.type == "cpu":
        # A traced graph cannot branch on the values (nor read them without a graph break): the
        # check runs inside the graph instead, and raises when the graph runs. (On a GPU it would
        # be a device-side assert, which ends the process: there values clamp, as in eager.)
        torch._assert_async(((lengths >= 0) & (lengths <= steps)).all(),
                            "lengths must lie in [0, T]")
    elif lengths.device.type == "cpu" and lengths.numel() > 0:
        # Checked where it is free. Lengths already on the GPU are not read back (that would
        # synchronise); there, values outside [0, T] clamp (< 0: nothing valid, > T: all valid).
        low, high = torch.aminmax(lengths)
        if int(low) < 0 or int(high) > steps:
            raise ValueError(f"lengths must lie in [0, T={steps}], got values in [{int(low)}, {int(high)}]")
    return lengths.to(device=device, dtype=torch.int64, non_blocking=True).contiguous()


def _zero_padding(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """x with its padding (rows t >= lengths[b]) set to 0. The recurrence never reads those rows,
    but the input projection's weight gradient multiplies every row of x by its zero gradient, and
    0 * NaN (or Inf) is NaN: a NaN in the padding would poison w_ih's gradient. masked_fill also
    gives the padding a zero gradient, as pack_padded_sequence does."""
    if lengths is None:
        return x
    padding = torch.arange(x.shape[0], device=x.device).unsqueeze(1) >= lengths  # (T, B)
    return x.masked_fill(padding.unsqueeze(2), 0)


def _prepare(fn: str, backend: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor,
             w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
             w_ch: Optional[Tensor], w_hr: Optional[Tensor], lengths,
             state_mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
    """Returns (x with zeroed padding, lengths as int64 on x's device). The reference backend and
    ONNX export check every argument (by its public name) first: plain PyTorch ops would
    broadcast some wrong shapes. The compiled ops check all of theirs, so on the fused path the
    named check runs only when the op raised (``_checks.name_the_wrong_argument``): a cell called
    once per token does not pay it on every step."""
    if backend != "fused" or _onnx.active():
        _checks.sequence_args(fn, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, state_mask)
    if lengths is None:
        return x, None
    lengths = prepare_lengths(lengths, x.shape[1], x.shape[0], x.device, fn)
    return _zero_padding(x, lengths), lengths


def _require_steps(fn: str, x: Tensor) -> None:
    if x.shape[0] == 0:  # the compiled loops need a first step; the reference returns h0
        raise _checks.ArgumentError(
            f"fused_rnn.functional.{fn}: x has no time steps (shape {tuple(x.shape)}); the fused "
            "backend needs T >= 1 (backend='reference' returns the initial state)")


def rnn(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
        b_hh: Optional[Tensor] = None, *, nonlinearity: str = "tanh", lengths: Optional[Tensor] = None,
        reverse: bool = False, state_mask: Optional[Tensor] = None,
        backend: str = "fused", algo: str = "auto") -> Tuple[Tensor, Tensor]:
    """Elman RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu. Returns (y, h_n)."""
    backend = _backend_to_run(backend)
    check_algo(algo)
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    try:
        x, lengths = _prepare("rnn", backend, x, h0, None, w_ih, w_hh, b_ih, b_hh, None, None,
                              lengths, state_mask)
        if _onnx.active():  # torch.onnx.export: ONNX's RNN operator instead of the fused op
            return _onnx.rnn(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity=nonlinearity,
                             lengths=lengths, reverse=reverse, state_mask=state_mask)
        if backend == "reference":
            return _reference(reference.rnn, x, h0, w_ih, w_hh, b_ih, b_hh,
                              nonlinearity=nonlinearity, lengths=lengths, reverse=reverse,
                              state_mask=state_mask)
        _require_steps("rnn", x)
        return _ops.elman(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, state_mask, reverse,
                          nonlinearity == "relu", algo)
    except Exception:
        _checks.name_the_wrong_argument("rnn", x, h0, None, w_ih, w_hh, b_ih, b_hh, None, None,
                                        state_mask)
        raise


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
    fn = "peephole_lstm" if w_ch is not None else "lstm"
    try:
        x, lengths = _prepare(fn, backend, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, lengths,
                              state_mask)
        if _onnx.active():  # torch.onnx.export: ONNX's LSTM operator instead of the fused op
            return _onnx.peephole_lstm(x, h0, c0, w_ih, w_hh, w_ch, b_ih, b_hh, w_hr=w_hr,
                                       lengths=lengths, reverse=reverse, state_mask=state_mask)
        if backend == "reference":
            return _reference(reference.peephole_lstm, x, h0, c0, w_ih, w_hh, w_ch, b_ih, b_hh,
                              w_hr=w_hr, lengths=lengths, reverse=reverse, state_mask=state_mask)
        _require_steps(fn, x)
        return _ops.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, lengths, state_mask,
                         reverse, algo)
    except Exception:
        _checks.name_the_wrong_argument(fn, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr,
                                        state_mask)
        raise


def gru(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
        b_hh: Optional[Tensor] = None, *, reset_after: bool = True, lengths: Optional[Tensor] = None,
        reverse: bool = False, state_mask: Optional[Tensor] = None,
        backend: str = "fused", algo: str = "auto") -> Tuple[Tensor, Tensor]:
    """GRU (gate order r, z, n). reset_after=True is torch/cuDNN's
    n = tanh(W_in x + b_in + r⊙(W_hn h + b_hn)); reset_after=False is the original (TF GRUCell)
    n = tanh(W_in x + b_in + W_hn (r⊙h) + b_hn). h' = (1-z)⊙n + z⊙h. Returns (y, h_n)."""
    backend = _backend_to_run(backend)
    check_algo(algo)
    try:
        x, lengths = _prepare("gru", backend, x, h0, None, w_ih, w_hh, b_ih, b_hh, None, None,
                              lengths, state_mask)
        if _onnx.active():  # torch.onnx.export: ONNX's GRU operator instead of the fused op
            return _onnx.gru(x, h0, w_ih, w_hh, b_ih, b_hh, reset_after=reset_after,
                             lengths=lengths, reverse=reverse, state_mask=state_mask)
        if backend == "reference":
            return _reference(reference.gru, x, h0, w_ih, w_hh, b_ih, b_hh,
                              reset_after=reset_after, lengths=lengths, reverse=reverse,
                              state_mask=state_mask)
        _require_steps("gru", x)
        return _ops.gru(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, state_mask, reverse, reset_after,
                        algo)
    except Exception:
        _checks.name_the_wrong_argument("gru", x, h0, None, w_ih, w_hh, b_ih, b_hh, None, None,
                                        state_mask)
        raise
