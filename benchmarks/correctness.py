"""--check: before timing, do the contenders compute the same thing?

Each contender's output and input gradient (loss = output.sum()) are compared with a baseline's
(torch.nn where torch has the cell, else the reference) on the case's shared inputs and weights.
A mismatch is recorded and flagged in the table; the run goes on, since a benchmark that stops
tells nothing about the other contenders. Correctness proper is the tests' job.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor

from .contenders import Built

# Relative to the baseline's largest magnitude; half types round each step's state, and the
# rounding compounds over the sequence, so their bars are much looser.
TOLERANCE: Dict[str, float] = {"fp32": 1e-3, "bf16": 1e-1, "fp16": 3e-2}


def outputs(built: Built, x: Tensor) -> Tuple[Tensor, Tensor]:
    built.set_training(True)
    leaf = x.detach().requires_grad_(True)
    with built.environment_set():
        y = built.forward(leaf)
        (grad,) = torch.autograd.grad(y.sum(), leaf)
    return y.detach().float(), grad.float()


def _relative_error(value: Tensor, baseline: Tensor) -> float:
    scale = baseline.abs().max().clamp_min(1e-6)
    return float((value - baseline).abs().max() / scale)


def compare(candidate: Tuple[Tensor, Tensor], baseline: Tuple[Tensor, Tensor], dtype_name: str) -> dict:
    output_error = _relative_error(candidate[0], baseline[0])
    grad_error = _relative_error(candidate[1], baseline[1])
    tolerance = TOLERANCE[dtype_name]
    return {"output_rel_error": output_error, "grad_x_rel_error": grad_error, "tolerance": tolerance,
            "ok": output_error <= tolerance and grad_error <= tolerance}
