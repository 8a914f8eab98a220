"""Argument checks of fused_rnn.functional, in one cheap pass before the op call.

The compiled ops check their own arguments too, but they see the op's arguments (``x_proj``,
``b`` of ``fused_rnn.linear``) and cannot tell which public argument is wrong; on the meta device
they do not run at all (the fake kernels do). So every tensor argument of the public functions is
checked here, by its public name, against what the others imply:

    x (T, B, I) floating point: dtype, device, B and I for everything else
    w_hh (G*H, P): hidden_size H and state size P (H, or proj_size with a projection w_hr)
    h0 (B, P); c0 (B, H); w_ih (G*H, I); b_ih, b_hh (G*H,); w_ch (3*H,); w_hr (P, H);
    state_mask (B, P); all of x's dtype (any floating dtype inside torch.autocast, whose kernels
    cast them) and on x's device. lengths: see ``lengths_device``.

The reference backend runs these checks before it computes; the fused backend only after its op
raised (the op checks every argument itself, but by its own names), so a cell called once per
token pays nothing for them.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _autocast

__all__ = ["ArgumentError", "sequence_args", "lengths_device"]


class ArgumentError(ValueError, RuntimeError):
    """A bad argument to fused_rnn.functional. Both a ValueError (a wrong argument, the Python
    convention) and a RuntimeError (what torch's own ops raise for the same mismatch, and what
    the compiled ops raised before these checks existed), so either ``except`` catches it."""


_GATES = {"rnn": 1, "lstm": 4, "peephole_lstm": 4, "gru": 3}


def sequence_args(fn: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor,
                  w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                  w_ch: Optional[Tensor], w_hr: Optional[Tensor],
                  state_mask: Optional[Tensor]) -> None:
    """Checks the tensor arguments of ``fused_rnn.functional.<fn>`` (c0 is None for the cells
    without a cell state). Raises TypeError for a missing tensor, ArgumentError otherwise."""
    lstm = fn != "rnn" and fn != "gru"
    if not isinstance(x, Tensor):
        _not_a_tensor(fn, "x", x)
    x_shape = x.shape
    if len(x_shape) != 3:
        raise ArgumentError(f"{_where(fn)}x must be 3-D (T, B, I), got shape {tuple(x_shape)}")
    dtype, device = x.dtype, x.device
    if not dtype.is_floating_point:
        raise ArgumentError(f"{_where(fn)}x must be a floating-point tensor, got dtype {dtype}")
    batch, input_size = x_shape[1], x_shape[2]

    for name, t in (("h0", h0), ("w_ih", w_ih), ("w_hh", w_hh)) + ((("c0", c0),) if lstm else ()):
        if not isinstance(t, Tensor):
            _not_a_tensor(fn, name, t)
    w_ih_shape = w_ih.shape
    if len(w_ih_shape) == 2 and w_ih_shape[1] != input_size:  # x or w_ih: name both
        raise ArgumentError(f"{_where(fn)}x has input size {input_size} but w_ih expects "
                            f"{w_ih_shape[1]} (w_ih shape {tuple(w_ih_shape)})")
    # w_hh (G*H, P) sets hidden_size H and the state size P for everything else: weights usually
    # come from a module, so a mismatch most likely is the other argument's.
    gates, w_hh_shape = _GATES[fn], w_hh.shape
    if len(w_hh_shape) != 2 or w_hh_shape[0] % gates or w_hh_shape[0] == 0:
        raise ArgumentError(f"{_where(fn)}w_hh must be 2-D ({gates}*hidden_size, "
                            f"{'proj_size' if w_hr is not None else 'hidden_size'}), got shape "
                            f"{tuple(w_hh_shape)}")
    rows, state = w_hh_shape[0], w_hh_shape[1]
    hidden = rows // gates
    if w_hr is None and state != hidden:
        raise ArgumentError(f"{_where(fn)}w_hh must have shape ({rows}, {hidden}) = "
                            f"({gates}*hidden_size, hidden_size) without a projection w_hr, got "
                            f"{tuple(w_hh_shape)}")

    # Each tensor against x (dtype, device, B, input_size) and w_hh (sizes); None: not given
    # (the required ones were checked above).
    for name, t, shape in (("w_hh", w_hh, w_hh_shape), ("h0", h0, (batch, state)),
                           ("w_ih", w_ih, (rows, input_size)), ("c0", c0, (batch, hidden)),
                           ("b_ih", b_ih, (rows,)), ("b_hh", b_hh, (rows,)),
                           ("w_ch", w_ch, (3 * hidden,)), ("w_hr", w_hr, (state, hidden)),
                           ("state_mask", state_mask, (batch, state))):
        if t is None:
            continue
        try:
            wrong = t.shape != shape or t.dtype != dtype or t.device != device
        except AttributeError:  # not a tensor (try costs nothing when nothing is raised)
            wrong = True
        if wrong:
            _wrong_tensor(fn, name, t, shape, x, w_hh_shape)


def name_the_wrong_argument(fn: str, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr,
                            state_mask) -> None:
    """Called where the fused op raised: raises, in place of the op's error, the one that names
    the public argument that is wrong, if one is; else returns (and the caller re-raises the
    op's own error, which had another cause)."""
    try:
        sequence_args(fn, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, state_mask)
    except (ArgumentError, TypeError) as named:
        raise named from None


def lengths_device(fn: str, lengths: Tensor, device: torch.device) -> None:
    """lengths may live on the CPU (values checked there for free) or on x's device. A meta
    ``lengths`` with a real x has no values to mask with (torch would say "Cannot copy out of
    meta tensor; no data!")."""
    where = lengths.device
    if where.type != "cpu" and where != device:
        x = "x" if fn else "the input"  # fn is empty for a module's forward
        raise ArgumentError(f"{_where(fn)}lengths is on device {where} but {x} is on device "
                            f"{device}; lengths must be on the CPU or on {x}'s device")


# ------------------------------------------------------------------------------- the messages
def _where(fn: str) -> str:
    return f"fused_rnn.functional.{fn}: " if fn else ""


def _wrong_tensor(fn: str, name: str, t, shape, x: Tensor, w_hh_shape) -> None:
    """Raises what is wrong with argument ``name``: its type, shape, dtype or device."""
    if not isinstance(t, Tensor):
        _not_a_tensor(fn, name, t)
    if t.shape != shape:
        _wrong_shape(fn, name, t, shape, x.shape, w_hh_shape)
    if t.dtype != x.dtype and _autocast.autocast_dtype(x) is None:
        raise ArgumentError(f"{_where(fn)}{name} has dtype {t.dtype} but x has dtype {x.dtype}; "
                            f"every tensor argument must have x's dtype (outside torch.autocast)")
    if t.device != x.device:
        raise ArgumentError(f"{_where(fn)}{name} is on device {t.device} but x is on device "
                            f"{x.device}; every tensor argument must be on x's device")
    # Else only the dtype differs, inside an autocast region: the op's autocast kernel casts it.


def _not_a_tensor(fn: str, name: str, value) -> None:
    raise TypeError(f"{_where(fn)}{name} must be a Tensor, got {type(value).__name__}")


_FORMULAS = {  # what each expected shape is made of, for the message
    "h0": "(B, {state})", "c0": "(B, hidden_size)",
    "w_ih": "({gates}*hidden_size, input_size)", "b_ih": "({gates}*hidden_size,)",
    "b_hh": "({gates}*hidden_size,)", "w_ch": "(3*hidden_size,)",
    "w_hr": "(proj_size, hidden_size)", "state_mask": "(B, {state})",
}


def _wrong_shape(fn: str, name: str, t: Tensor, shape, x_shape, w_hh_shape) -> None:
    gates = _GATES[fn]
    state = "proj_size" if name == "w_hr" or w_hh_shape[0] // gates != w_hh_shape[1] else "hidden_size"
    formula = _FORMULAS[name].format(gates=gates, state=state)
    sources = f"w_hh {tuple(w_hh_shape)} = ({gates}*hidden_size, {state})"
    if "B" in formula or "input_size" in formula:
        sources = f"x {tuple(x_shape)} = (T, B, input_size) and " + sources
    raise ArgumentError(f"{_where(fn)}{name} must have shape {tuple(shape)} = {formula}, got "
                        f"{tuple(t.shape)} (sizes from {sources})")
