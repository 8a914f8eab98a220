"""The cells under test and, for each, what implements it where.

A cell is described once here and every contender reads what it needs: the number of gates (to
shape the weights), whether it carries a cell state, the torch.nn class if torch has the cell
(cuDNN has no peephole LSTM and no reset-before GRU), the fused_rnn module class and its extra
constructor arguments, and the fused_rnn.functional sequence function with its keyword arguments.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch


@dataclass(frozen=True)
class Cell:
    name: str
    gates: int
    has_cell_state: bool
    has_peephole: bool
    torch_class: Optional[type]  # None: torch has no such cell
    torch_kwargs: Dict[str, object] = field(default_factory=dict)
    fused_class: str = ""  # attribute of the fused_rnn package
    fused_kwargs: Dict[str, object] = field(default_factory=dict)
    functional: str = ""  # function of fused_rnn.functional
    functional_kwargs: Dict[str, object] = field(default_factory=dict)


CELLS: Dict[str, Cell] = {c.name: c for c in [
    Cell("lstm", gates=4, has_cell_state=True, has_peephole=False,
         torch_class=torch.nn.LSTM, fused_class="LSTM", functional="lstm"),
    Cell("gru", gates=3, has_cell_state=False, has_peephole=False,
         torch_class=torch.nn.GRU, fused_class="GRU", fused_kwargs={"reset_after": True},
         functional="gru", functional_kwargs={"reset_after": True}),
    Cell("gru_reset_before", gates=3, has_cell_state=False, has_peephole=False,
         torch_class=None, fused_class="GRU", fused_kwargs={"reset_after": False},
         functional="gru", functional_kwargs={"reset_after": False}),
    Cell("rnn_tanh", gates=1, has_cell_state=False, has_peephole=False,
         torch_class=torch.nn.RNN, torch_kwargs={"nonlinearity": "tanh"},
         fused_class="RNN", fused_kwargs={"nonlinearity": "tanh"},
         functional="rnn", functional_kwargs={"nonlinearity": "tanh"}),
    Cell("peephole_lstm", gates=4, has_cell_state=True, has_peephole=True,
         torch_class=None, fused_class="PeepholeLSTM", functional="peephole_lstm"),
]}


def select(names: List[str]) -> List[Cell]:
    unknown = [n for n in names if n not in CELLS]
    if unknown:
        raise ValueError(f"unknown cell(s) {unknown}; known: {list(CELLS)}")
    return [CELLS[n] for n in names]
