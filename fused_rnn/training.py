"""Training helpers for recurrent models: truncated backpropagation through time (TBPTT).

A sequence too long to backpropagate through at once is cut into chunks of ``chunk_size`` steps.
Each chunk is a training step; the recurrent state is carried from one chunk into the next, so
the forward pass sees the whole history, but detached, so gradients stop at the chunk boundary::

    from fused_rnn.training import detach_state, tbptt_chunks

    state = None
    for (x, y), lengths in tbptt_chunks(inputs, targets, chunk_size=50, lengths=lengths,
                                        batch_first=True):
        out, state = model(x, detach_state(state), lengths=lengths)
        loss = masked_loss(out, y, lengths)
        optimizer.zero_grad(); loss.backward(); optimizer.step()

With ``lengths`` the chunks get their own lengths, ``clamp(lengths - start, 0, chunk)``. The
fused_rnn modules keep the state of a sequence through its masked steps, and a length of 0 leaves
it untouched, so sequences that ended in an earlier chunk carry their final state along unchanged
while the longer ones go on: a padded batch of unequal sequences can be trained chunk by chunk.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["detach_state", "tbptt_chunks"]


def detach_state(state):
    """A recurrent state cut from the autograd graph: a Tensor, a tuple/list of them (the LSTM's
    (h, c)), nested, or None (returned as is)."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    raise TypeError(f"a recurrent state is a Tensor, a tuple/list of them or None, got {type(state).__name__}")


def tbptt_chunks(*sequences: Tensor, chunk_size: int, lengths: Optional[Tensor] = None,
                 batch_first: bool = False) -> Iterator[Tuple[Tuple[Tensor, ...], Optional[Tensor]]]:
    """Cuts the sequences into consecutive chunks along time for truncated BPTT.

    sequences: tensors sharing the time dimension (dim 0, or 1 with ``batch_first``), e.g. the
        inputs and the targets; each chunk is a view (no copy).
    chunk_size: steps per chunk; the last chunk may be shorter.
    lengths: optional (B,) integer tensor of valid steps per sequence, as for the modules'
        ``lengths=``; each chunk then comes with ``clamp(lengths - start, 0, chunk)`` (on the
        same device as ``lengths``), else with None.

    Yields ``(chunks, chunk_lengths)``, ``chunks`` a tuple with one chunk per sequence.
    """
    if not sequences:
        raise ValueError("tbptt_chunks needs at least one sequence")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    dim = 1 if batch_first else 0
    steps = sequences[0].size(dim)
    for k, s in enumerate(sequences):
        if s.dim() <= dim or s.size(dim) != steps:
            raise ValueError(f"all sequences need the same number of steps along dim {dim}: sequence 0 "
                             f"has {steps}, sequence {k} has shape {tuple(s.shape)}")
    if lengths is not None:
        lengths = torch.as_tensor(lengths)
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.dim() != 1:
            raise ValueError(f"lengths must be a 1-D integer tensor, got {lengths.dtype} of shape "
                             f"{tuple(lengths.shape)}")
    for start in range(0, steps, chunk_size):
        size = min(chunk_size, steps - start)
        chunks = tuple(s.narrow(dim, start, size) for s in sequences)
        chunk_lengths = None if lengths is None else (lengths - start).clamp(0, size)
        yield chunks, chunk_lengths
