"""Shared bits of the examples: the command line, the device, data generators, a tiny training
loop and optional plotting. Each example imports what it needs from here; none of this is part
of the fused_rnn library.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn


# --- command line and device ------------------------------------------------------------------

def parser(description: str, steps: int) -> argparse.ArgumentParser:
    """The flags every example takes; an example adds its own on top."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--steps", type=int, default=steps, help=f"training steps (default {steps})")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--out", default=".", help="folder for the PNG plots (default: the current one)")
    p.add_argument("--no-plot", action="store_true", help="do not draw PNGs")
    p.add_argument("--quick", action="store_true", help="a much shorter run (fewer steps, smaller data)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Seeds torch, sets the CPU threads, returns the device the flags ask for."""
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


# --- data: noisy sums of sinusoids (time series, generation, training tricks) -----------------

def sinusoid_params(batch: int, generator: torch.Generator, components: int = 2,
                    min_period: float = 12.0, max_period: float = 60.0) -> Dict[str, Tensor]:
    """Random amplitudes, frequencies (radians per step) and phases, shape (batch, components)."""
    shape = (batch, components)
    period = min_period + (max_period - min_period) * torch.rand(shape, generator=generator)
    return {"amplitude": 0.5 + torch.rand(shape, generator=generator),
            "omega": 2 * math.pi / period,
            "phase": 2 * math.pi * torch.rand(shape, generator=generator)}


def sinusoids(params: Dict[str, Tensor], steps: int, start: int = 0) -> Tensor:
    """The noise-free signal sum_k a_k sin(w_k t + phi_k) for t in [start, start + steps): (B, steps)."""
    t = torch.arange(start, start + steps, dtype=torch.float32).view(1, -1, 1)
    waves = params["amplitude"].unsqueeze(1) * torch.sin(params["omega"].unsqueeze(1) * t
                                                         + params["phase"].unsqueeze(1))
    return waves.sum(dim=2)


def noisy_sinusoids(batch: int, steps: int, generator: torch.Generator, noise: float = 0.1,
                    **kwargs) -> Dict[str, Tensor]:
    """A batch of noisy series: ``series`` (B, steps) = ``clean`` + N(0, noise^2), and ``params``."""
    params = sinusoid_params(batch, generator, **kwargs)
    clean = sinusoids(params, steps)
    series = clean + noise * torch.randn(clean.shape, generator=generator)
    return {"series": series, "clean": clean, "params": params}


def next_step_pairs(series: Tensor) -> Tuple[Tensor, Tensor]:
    """(B, T+1) series -> inputs (B, T, 1) and targets (B, T, 1): predict x[t+1] from x[..t]."""
    return series[:, :-1].unsqueeze(-1), series[:, 1:].unsqueeze(-1)


# --- training ----------------------------------------------------------------------------------

def train(model: nn.Module, step_loss: Callable[[int], Tensor], steps: int, lr: float,
          clip: Optional[float] = None, log_every: int = 0, cosine: bool = True,
          optimizer: Optional[torch.optim.Optimizer] = None) -> List[float]:
    """The training loop of every example: Adam, optional gradient-norm clipping, optional cosine
    learning-rate decay. ``step_loss(step)`` makes a batch and returns its loss; returns the losses."""
    model.train()
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    schedule = (torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
                if cosine else None)
    losses: List[float] = []
    for step in range(steps):
        loss = step_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if schedule is not None:
            schedule.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            recent = losses[-log_every:]
            print(f"  step {step + 1:5d}/{steps}  loss {sum(recent) / len(recent):.4f}", flush=True)
    return losses


# --- plotting (matplotlib optional) ------------------------------------------------------------

def pyplot():
    """matplotlib.pyplot with a file-only backend, or None (with a message) when not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install matplotlib)")
        return None
    return plt


def save_figure(fig, out: str, name: str) -> str:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clf()
    import matplotlib.pyplot as plt
    plt.close(fig)
    print(f"saved {path}")
    return path


def pad(sequences: Sequence[Sequence[int]], value: int = 0) -> Tuple[Tensor, Tensor]:
    """Lists of token ids -> a (B, T) padded int64 batch and its lengths (B,)."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    batch = torch.full((len(sequences), int(lengths.max())), value, dtype=torch.int64)
    for row, seq in enumerate(sequences):
        batch[row, :len(seq)] = torch.as_tensor(seq, dtype=torch.int64)
    return batch, lengths
