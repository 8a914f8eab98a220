"""The inputs every contender of one case shares: the sequence, the lengths and one set of weights.

Weights are made once per case in torch.nn's naming (weight_ih_l0, weight_hh_l0_reverse, ...) and
copied into each contender, so all of them compute the same function of the same numbers and
their outputs can be compared. Peephole weights, which torch.nn does not have, are named
``weight_ch_l{k}[_reverse]`` here; contenders.load_weights maps them to whatever the module calls them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor

from .cells import Cell
from .workloads import Workload

DTYPES: Dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def layer_suffix(layer: int, reverse: bool) -> str:
    return f"_l{layer}" + ("_reverse" if reverse else "")


@dataclass
class LayerWeights:
    """One layer and direction, shapes as torch.nn: w_ih (G*H, I), w_hh (G*H, H), biases (G*H,),
    w_ch (3*H,) peepholes of gates i, f, o or None."""
    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor
    b_hh: Tensor
    w_ch: Optional[Tensor] = None


@dataclass
class Case:
    """One (workload, cell, dtype) on one device: everything the contenders are built from."""
    workload: Workload
    cell: Cell
    dtype_name: str
    device: torch.device
    x: Tensor  # (T, B, I), requires no grad; contenders make their own leaf for training
    lengths: Optional[Tensor]  # (B,) int64 on the CPU (pack_padded_sequence wants them there)
    weights: Dict[str, Tensor]  # torch.nn names -> tensors of the case's dtype on the device

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    @property
    def directions(self) -> int:
        return 2 if self.workload.bidirectional else 1

    def layer_weights(self, layer: int, reverse: bool) -> LayerWeights:
        sfx = layer_suffix(layer, reverse)
        w = self.weights
        return LayerWeights(w["weight_ih" + sfx], w["weight_hh" + sfx], w["bias_ih" + sfx],
                            w["bias_hh" + sfx], w.get("weight_ch" + sfx))


def make_case(workload: Workload, cell: Cell, dtype_name: str, device: torch.device, seed: int = 0) -> Case:
    # Drawn on the CPU in float32 from one seeded generator, then cast and moved: the same numbers
    # on every device and in every dtype.
    gen = torch.Generator().manual_seed(seed)
    T, B, I, H = workload.T, workload.B, workload.I, workload.H
    dtype = DTYPES[dtype_name]

    def draw(*shape: int, bound: float = 1.0) -> Tensor:
        values = torch.rand(*shape, generator=gen) * (2 * bound) - bound
        return values.to(device=device, dtype=dtype)

    x = torch.randn(T, B, I, generator=gen).to(device=device, dtype=dtype)
    lengths = None
    if workload.variable_lengths:
        lengths = torch.randint(max(1, T // 2), T + 1, (B,), generator=gen, dtype=torch.int64)

    bound = 1.0 / math.sqrt(H)  # torch.nn's default initialisation range
    directions = 2 if workload.bidirectional else 1
    weights: Dict[str, Tensor] = {}
    for layer in range(workload.layers):
        layer_input = I if layer == 0 else H * directions
        for reverse in ([False, True] if workload.bidirectional else [False]):
            sfx = layer_suffix(layer, reverse)
            weights["weight_ih" + sfx] = draw(cell.gates * H, layer_input, bound=bound)
            weights["weight_hh" + sfx] = draw(cell.gates * H, H, bound=bound)
            weights["bias_ih" + sfx] = draw(cell.gates * H, bound=bound)
            weights["bias_hh" + sfx] = draw(cell.gates * H, bound=bound)
            if cell.has_peephole:
                weights["weight_ch" + sfx] = draw(3 * H, bound=bound)
    return Case(workload, cell, dtype_name, device, x, lengths, weights)
