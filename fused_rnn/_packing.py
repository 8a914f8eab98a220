"""PackedSequence <-> padded (T, B, *) conversion for the modules.

The modules run every sequence in the batch order the user sees (the PackedSequence's original
order), so a user's ``hx`` needs no permutation and the returned states come out in that order too,
exactly what torch returns after its own sort/unsort. One gather index, built once on the CPU from
``batch_sizes``, maps the packed rows to rows of the padded (T*B, *) layout; unpacking is one
``index_copy`` and packing one ``index_select``, both differentiable.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence


def packed_layout(packed: PackedSequence) -> Tuple[Tensor, Tensor]:
    """Returns ``(index, lengths)`` for ``packed``.

    index    (N,) int64 on the data's device: packed row k holds padded row ``index[k]`` of the
             time-major (T*B, *) layout, batch in original order.
    lengths  (B,) int64 on the CPU, each sequence's length, in original order.
    """
    batch_sizes = packed.batch_sizes  # (T,) int64, always on the CPU
    _check_batch_sizes(batch_sizes, packed.data.shape[0])
    steps, batch = batch_sizes.numel(), int(batch_sizes[0])
    # Packed data is time-major; at step t it holds the batch_sizes[t] longest sequences, in
    # sorted order. valid[t, s]: sorted slot s is present at step t.
    valid = torch.arange(batch).unsqueeze(0) < batch_sizes.unsqueeze(1)
    if packed.sorted_indices is None or packed.sorted_indices.is_meta:
        # (A meta PackedSequence has no permutation to read; only its shapes matter there.)
        original = torch.arange(batch)
    else:
        original = packed.sorted_indices.cpu()  # sorted slot -> original batch position
    t, slot = valid.nonzero(as_tuple=True)  # row-major: exactly the packed row order
    index = t * batch + original[slot]
    lengths = torch.empty(batch, dtype=torch.int64)
    lengths[original] = valid.sum(0)
    return index.to(packed.data.device, non_blocking=True), lengths


def _check_batch_sizes(batch_sizes: Tensor, rows: int) -> None:
    """A PackedSequence built by hand can hold any batch_sizes; pack_padded_sequence's are
    non-increasing and add up to the data's rows. Anything else would index out of range."""
    if batch_sizes.dim() != 1 or batch_sizes.numel() == 0:
        raise ValueError(f"PackedSequence.batch_sizes must be 1-D and non-empty, got shape "
                         f"{tuple(batch_sizes.shape)}")
    if bool((batch_sizes[1:] > batch_sizes[:-1]).any()) or int(batch_sizes[-1]) < 0 \
            or int(batch_sizes.sum()) != rows:
        raise ValueError(f"PackedSequence.batch_sizes must be non-negative, non-increasing and "
                         f"add up to the data's {rows} rows, got {batch_sizes.tolist()}")


def unpack(packed: PackedSequence, index: Tensor) -> Tensor:
    """Packed data (N, *) -> zero-padded (T, B, *), batch in original order."""
    data = packed.data
    steps, batch = packed.batch_sizes.numel(), int(packed.batch_sizes[0])
    padded = data.new_zeros((steps * batch,) + tuple(data.shape[1:]))
    return padded.index_copy(0, index, data).view((steps, batch) + tuple(data.shape[1:]))


def pack_like(padded: Tensor, like: PackedSequence, index: Tensor) -> PackedSequence:
    """Padded (T, B, *) in original batch order -> PackedSequence with ``like``'s layout."""
    flat = padded.reshape((-1,) + tuple(padded.shape[2:]))
    sorted_indices, unsorted_indices = like.sorted_indices, like.unsorted_indices
    if index.device != padded.device:  # a placed module returns on its last layer's device
        index = index.to(padded.device)
        if sorted_indices is not None:
            sorted_indices = sorted_indices.to(padded.device)
            unsorted_indices = unsorted_indices.to(padded.device)
    return PackedSequence(flat.index_select(0, index), like.batch_sizes, sorted_indices,
                          unsorted_indices)
