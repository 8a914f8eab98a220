"""The LSTM with a projection (proj_size, w_hr) as an ONNX ``Scan`` of the reference cell.

ONNX's LSTM operator has no projection, so the time loop itself goes into the graph: torch's
``scan`` higher-order op over the steps, which the exporter turns into ONNX ``Scan`` with the
cell's ops as its body. The step is ``fused_rnn.reference.lstm_cell`` (the oracle's math) plus
the length masking of ``reference._scan``: invalid steps keep the state and output zeros, and in
reverse they come first, so each sequence starts at its own last valid step.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import reference


def _scan_op():
    """torch's scan (a prototype API in torch 2.x, hence the private import)."""
    try:
        from torch._higher_order_ops.scan import scan
    except ImportError as error:
        raise NotImplementedError(
            "ONNX export of an LSTM with proj_size > 0 needs torch's scan operator "
            f"(torch._higher_order_ops.scan), which this torch lacks ({error}); ONNX's LSTM "
            "operator has no projection") from error
    return scan


def peephole_lstm(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                  w_ch: Optional[Tensor], b_ih: Optional[Tensor], b_hh: Optional[Tensor], *,
                  w_hr: Tensor, lengths: Optional[Tensor], reverse: bool
                  ) -> Tuple[Tensor, Tensor, Tensor]:
    """The projected (peephole) LSTM over x (T, B, I) as one Scan; returns (y, h_n, c_n)."""
    scan = _scan_op()
    if lengths is None:
        def step(state, x_t):
            h, c = reference.lstm_cell(x_t, state[0], state[1], w_ih, w_hh, b_ih, b_hh, w_ch, w_hr)
            return (h, c), h.clone()  # scan refuses an output that aliases the carry

        (h_n, c_n), y = scan(step, (h0, c0), x, reverse=reverse)
        return y, h_n, c_n

    # valid[t, b] = t < lengths[b], (T, B, 1): scanned alongside x.
    steps = torch.arange(x.shape[0], device=x.device)
    valid = (steps.unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(2)

    def masked_step(state, inputs):
        x_t, valid_t = inputs
        h, c = reference.lstm_cell(x_t, state[0], state[1], w_ih, w_hh, b_ih, b_hh, w_ch, w_hr)
        new_state = (torch.where(valid_t, h, state[0]), torch.where(valid_t, c, state[1]))
        return new_state, torch.where(valid_t, h, torch.zeros_like(h))

    (h_n, c_n), y = scan(masked_step, (h0, c0), (x, valid), reverse=reverse)
    return y, h_n, c_n
