"""Time-series prediction (the seed's section 7): predict the next value of a noisy series at
every step.

Each series is a random sum of two sinusoids plus Gaussian noise. The model reads x[0..t] and
predicts x[t+1] at every step t: an LSTM over the whole series, then ONE linear layer applied to
the output of every step. That linear layer over all outputs is what the seed builds by hand
(reshape to [-1, n_neurons], dense, reshape back) instead of TF1's OutputProjectionWrapper; in
PyTorch nn.Linear already maps the last dimension of a (B, T, H) tensor.

    python examples/time_series.py            # 800 steps; prints the test MSE / variance
    python examples/time_series.py --quick --out plots

Target: test MSE <= 10% of the series variance (the noise alone is about 1%).
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

import fused_rnn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


class NextStepModel(nn.Module):
    """RNN over the series + a linear head on every step's output: (B, T, 1) -> (B, T, 1).

    ``rnn`` is the recurrent module class: fused_rnn.LSTM here, torch.nn.LSTM in the parity test
    (tests/test_examples.py), which trains both from the same weights.
    """

    def __init__(self, hidden_size: int = 64, num_layers: int = 1, rnn=fused_rnn.LSTM) -> None:
        super().__init__()
        self.rnn = rnn(1, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: Tensor, state=None):
        outputs, state = self.rnn(x, state)  # outputs (B, T, H): every step, not just the last
        return self.head(outputs), state


def make_batch(batch: int, steps: int, generator: torch.Generator, device=None, dtype=torch.float32,
               **series):
    """Inputs and next-step targets (B, steps, 1) from fresh random series, plus the clean signal.
    ``series`` goes to common.noisy_sinusoids (noise, components, periods)."""
    data = common.noisy_sinusoids(batch, steps + 1, generator, **series)
    x, y = common.next_step_pairs(data["series"])
    clean = data["clean"][:, 1:].unsqueeze(-1)
    return [t.to(device=device, dtype=dtype) for t in (x, y, clean)]


def fit(model: nn.Module, batches, steps: int, lr: float = 1e-2, log_every: int = 0) -> List[float]:
    """Trains on ``batches(step) -> (x, y)`` with MSE; returns the loss of every step."""
    def step_loss(step: int) -> Tensor:
        x, y = batches(step)[:2]
        prediction, _ = model(x)
        return nn.functional.mse_loss(prediction, y)
    return common.train(model, step_loss, steps, lr, clip=1.0, log_every=log_every)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, clean: Tensor) -> Dict[str, float]:
    model.eval()
    prediction, _ = model(x)
    mse = nn.functional.mse_loss(prediction, y).item()
    variance = y.var().item()
    return {"mse": mse, "variance": variance, "ratio": mse / variance,
            "mse_vs_clean": nn.functional.mse_loss(prediction, clean).item(),
            "ratio_after_10": nn.functional.mse_loss(prediction[:, 10:], y[:, 10:]).item() / variance,
            "prediction": prediction}


def plot(x: Tensor, y: Tensor, clean: Tensor, prediction: Tensor, out: str) -> Optional[str]:
    plt = common.pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    steps = torch.arange(1, y.size(1) + 1)
    for row, ax in enumerate(axes):
        ax.plot(steps, y[row, :, 0].cpu(), ".", ms=3, color="0.5", label="noisy series (target)")
        ax.plot(steps, clean[row, :, 0].cpu(), "-", lw=1, color="0.2", label="noise-free signal")
        ax.plot(steps, prediction[row, :, 0].cpu(), "-", lw=1.5, color="tab:red",
                label="prediction of x[t] from x[..t-1]")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[0].set_title("fused_rnn.LSTM: next-step prediction on test series")
    axes[-1].set_xlabel("t")
    return common.save_figure(fig, out, "time_series.png")


def main(argv=None) -> Dict[str, object]:
    p = common.parser(__doc__.splitlines()[0], steps=800)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=100, help="time steps per training series")
    p.add_argument("--lr", type=float, default=1e-2)
    args = p.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 300)
    device = common.setup(args)
    print(f"time series: {args.steps} steps on {device}")

    model = NextStepModel(args.hidden).to(device)
    train_gen = torch.Generator().manual_seed(args.seed)
    test_x, test_y, test_clean = make_batch(512, 100, torch.Generator().manual_seed(10_000 + args.seed), device)

    with common.Timer() as timer:
        losses = fit(model, lambda step: make_batch(args.batch, args.length, train_gen, device),
                     args.steps, args.lr, log_every=max(args.steps // 10, 1))
    result = evaluate(model, test_x, test_y, test_clean)
    print(f"trained in {timer.seconds:.1f} s")
    print(f"test MSE {result['mse']:.4f} = {100 * result['ratio']:.1f}% of the series variance "
          f"{result['variance']:.3f} (target <= 10%; {100 * result['ratio_after_10']:.1f}% after the "
          f"first 10 steps; MSE against the noise-free signal {result['mse_vs_clean']:.4f})")
    path = None if args.no_plot else plot(test_x, test_y, test_clean, result.pop("prediction"), args.out)
    result.pop("prediction", None)
    return {**result, "losses": losses, "seconds": timer.seconds, "plot": path}


if __name__ == "__main__":
    main()
