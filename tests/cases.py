"""Random problems for every cell kind, runnable on either backend (shared by the op tests)."""
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from fused_rnn import functional as F

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "peephole_lstm", "lstm_proj", "gru", "gru_reset_before"]
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "peephole_lstm": 4, "lstm_proj": 4, "gru": 3,
         "gru_reset_before": 3}


@dataclass
class Case:
    """One cell kind with random inputs and weights; `run(backend)` returns its outputs."""
    cell: str
    x: torch.Tensor
    h0: torch.Tensor
    weights: Dict[str, torch.Tensor]
    c0: Optional[torch.Tensor] = None
    lengths: Optional[torch.Tensor] = None
    reverse: bool = False
    state_mask: Optional[torch.Tensor] = None  # recurrent-state dropout mask (B, P)
    algo: str = "auto"  # the fused backend's algorithm (fused_rnn.functional)

    def leaves(self) -> List[torch.Tensor]:
        tensors = [self.x, self.h0] + ([self.c0] if self.c0 is not None else [])
        return tensors + list(self.weights.values())

    def converted(self, dtype, device=None) -> "Case":
        """The same problem with every tensor cast to `dtype` (and moved to `device`), as new
        leaves that require grad."""
        def cast(t):
            if t is None:
                return None
            return t.detach().to(device=device or t.device, dtype=dtype).requires_grad_(t.requires_grad)
        return Case(self.cell, cast(self.x), cast(self.h0),
                    {k: cast(v) for k, v in self.weights.items()}, cast(self.c0),
                    lengths=self.lengths, reverse=self.reverse, state_mask=cast(self.state_mask),
                    algo=self.algo)

    def run(self, backend: str = "fused", x: Optional[torch.Tensor] = None):
        """Runs the sequence function of this cell on `x` (default: the case's own input)."""
        x = self.x if x is None else x
        w = self.weights
        kw = dict(lengths=self.lengths, reverse=self.reverse, state_mask=self.state_mask,
                  backend=backend, algo=self.algo)
        if self.cell.startswith("rnn"):
            return F.rnn(x, self.h0, w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"],
                         nonlinearity=self.cell[4:], **kw)
        if self.cell.startswith("gru"):
            return F.gru(x, self.h0, w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"],
                         reset_after=self.cell == "gru", **kw)
        return F.peephole_lstm(x, self.h0, self.c0, w["w_ih"], w["w_hh"], w.get("w_ch"), w["b_ih"],
                               w["b_hh"], w_hr=w.get("w_hr"), **kw)


def make_case(cell: str, steps: int, batch: int, inputs: int, hidden: int, *,
              dtype=torch.float64, device="cpu", lengths=None, reverse=False,
              proj: int = 3, requires_grad: bool = True, state_dropout: float = 0.0) -> Case:
    """Weights are drawn like torch's init (std 1/sqrt(fan-in)), so the recurrence neither
    explodes nor makes tiny rounding differences grow chaotically over the steps."""
    gates = GATES[cell]
    state = proj if cell == "lstm_proj" else hidden

    def rand(*shape, scale=0.5):
        return (torch.randn(*shape, dtype=torch.float64) * scale).to(device=device, dtype=dtype) \
            .requires_grad_(requires_grad)

    weights = {"w_ih": rand(gates * hidden, inputs, scale=inputs ** -0.5),
               "w_hh": rand(gates * hidden, state, scale=state ** -0.5),
               "b_ih": rand(gates * hidden), "b_hh": rand(gates * hidden)}
    if cell == "peephole_lstm":
        weights["w_ch"] = rand(3 * hidden)
    if cell == "lstm_proj":
        weights["w_hr"] = rand(state, hidden, scale=hidden ** -0.5)
    c0 = rand(batch, hidden) if gates == 4 else None
    mask = None
    if state_dropout:
        keep = torch.rand(batch, state, dtype=torch.float64) >= state_dropout
        mask = (keep / (1 - state_dropout)).to(device=device, dtype=dtype)
    return Case(cell, rand(steps, batch, inputs), rand(batch, state), weights, c0,
                lengths=lengths, reverse=reverse, state_mask=mask)


def outputs_and_grads(case: Case, backend: str, seed: int = 1):
    """Outputs of `case` and the gradients of a random projection of them w.r.t. every leaf."""
    outs = case.run(backend)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device)).sum()
               for o in outs)
    grads = torch.autograd.grad(loss, case.leaves())
    return [o.detach() for o in outs], list(grads)
