"""Creative RNN (the seed's section 8): give the model a seed sequence, let it predict the next
value, append the prediction, and repeat, generating 300 steps.

The next-step model of examples/time_series.py is trained as there (a fused_rnn.LSTM over the
whole series in one call), here on noisy sinusoids of random period, amplitude and phase (one
component by default: a model trained by next-step MSE on two-component mixtures hedges towards
the mean when it runs free, and its generations fade; try --components 2). Generation then
  1. runs the seed sequence through the trained LSTM module in one call -> its state (h, c);
  2. copies the module's weights into a fused_rnn.LSTMCell (same parameter layout: weight_ih_l0
     of the module is weight_ih of the cell) and steps it 300 times, feeding each prediction
     back as the next input and carrying (h, c) from step to step.
The seed matters: a window of one series continues that series' rhythm, a window of another
series continues another, and a flat seed of zeros (the seed tutorial's choice) yields whatever
the model makes of silence.

    python examples/generation.py --out plots
"""
from __future__ import annotations

import os
import sys
from typing import Dict, Optional

import torch
from torch import Tensor, nn

import fused_rnn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import time_series  # noqa: E402  (the model, its batches and its training loop)


def lstm_cell_from(module: nn.LSTM, layer: int = 0) -> fused_rnn.LSTMCell:
    """A fused_rnn.LSTMCell holding one layer of a (fused_rnn or torch.nn) LSTM's weights."""
    w_ih = getattr(module, f"weight_ih_l{layer}")
    cell = fused_rnn.LSTMCell(w_ih.size(1), module.hidden_size, bias=module.bias,
                              device=w_ih.device, dtype=w_ih.dtype)
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if module.bias else [])
    cell.load_state_dict({n: getattr(module, f"{n}_l{layer}") for n in names})
    return cell


@torch.no_grad()
def generate(model: time_series.NextStepModel, seed: Tensor, steps: int) -> Tensor:
    """Continues each seed series (B, S) by ``steps`` values, autoregressively: (B, steps)."""
    model.eval()
    assert model.rnn.num_layers == 1, "one LSTMCell per layer would be needed otherwise"
    cell = lstm_cell_from(model.rnn)
    # 1. The seed in one fused call: predictions for every seed step and the state after it.
    predictions, (h, c) = model(seed.unsqueeze(-1))
    state = (h[0], c[0])  # (num_layers=1, B, H) -> (B, H)
    value = predictions[:, -1]  # the prediction of the first value after the seed, (B, 1)
    generated = []
    # 2. Step by step: the last prediction is the next input; (h, c) is carried along.
    for _ in range(steps):
        generated.append(value)
        state = cell(value, state)
        value = model.head(state[0])
    return torch.cat(generated, dim=1)


def plot(seeds: Dict[str, Tensor], generated: Dict[str, Tensor], truth: Dict[str, Optional[Tensor]],
         out: str) -> Optional[str]:
    plt = common.pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(len(seeds), 1, figsize=(10, 2.4 * len(seeds)), sharex=True)
    for ax, name in zip(axes, seeds):
        seed, gen = seeds[name].cpu(), generated[name].cpu()
        s = seed.numel()
        ax.plot(range(s), seed, color="tab:blue", lw=1.5, label="seed sequence")
        if truth[name] is not None:
            ax.plot(range(s, s + gen.numel()), truth[name].cpu(), color="0.6", lw=1,
                    label="true continuation (noise-free)")
        ax.plot(range(s, s + gen.numel()), gen, color="tab:red", lw=1.5, label="generated")
        ax.axvline(s - 0.5, color="0.3", ls=":", lw=1)
        ax.set_title(name, fontsize=9)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("t")
    fig.suptitle("Generating 300 steps with a fused_rnn.LSTMCell from different seed sequences")
    return common.save_figure(fig, out, "generation.png")


def main(argv=None) -> Dict[str, object]:
    p = common.parser(__doc__.splitlines()[0], steps=800)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=100, help="time steps per training series")
    p.add_argument("--seed-length", type=int, default=60, help="length of the seed sequences")
    p.add_argument("--generate", type=int, default=300, help="steps to generate")
    p.add_argument("--components", type=int, default=1, help="sinusoids per series (default 1)")
    p.add_argument("--lr", type=float, default=1e-2)
    args = p.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 300)
    device = common.setup(args)
    print(f"generation: training the next-step LSTM for {args.steps} steps on {device}")

    model = time_series.NextStepModel(args.hidden).to(device)
    train_gen = torch.Generator().manual_seed(args.seed)
    with common.Timer() as timer:
        losses = time_series.fit(model, lambda step: time_series.make_batch(
                                     args.batch, args.length, train_gen, device, components=args.components),
                                 args.steps, args.lr, log_every=max(args.steps // 5, 1))

    # Seed sequences: windows of two test series (with their true continuations) and zeros.
    total = args.seed_length + args.generate
    test = common.noisy_sinusoids(64, total, torch.Generator().manual_seed(20_000 + args.seed),
                                  components=args.components)
    s = args.seed_length
    seeds = {"seed: series A": test["series"][0, :s], "seed: series B": test["series"][1, :s],
             "seed: zeros": torch.zeros(s)}
    truth = {"seed: series A": test["clean"][0, s:], "seed: series B": test["clean"][1, s:],
             "seed: zeros": None}
    generated = {name: generate(model, seed.view(1, -1).to(device), args.generate)[0].cpu()
                 for name, seed in seeds.items()}

    # Quality over many seeds: error of the generated continuation against the true one.
    many = generate(model, test["series"][:, :s].to(device), args.generate).cpu()
    variance = test["clean"].var().item()
    error = (many - test["clean"][:, s:]).pow(2).mean(dim=0) / variance  # per generated step
    first50 = error[:50].mean().item()
    whole = error.mean().item()
    # Does the generation keep its amplitude? std of the last 50 generated vs true values.
    amplitude = (many[:, -50:].std(dim=1).mean() / test["clean"][:, -50:].std(dim=1).mean()).item()
    print(f"trained in {timer.seconds:.1f} s; final training loss {losses[-1]:.4f}")
    print(f"generated {args.generate} steps from {many.size(0)} test seeds: MSE against the true "
          f"continuation = {100 * first50:.1f}% of the signal variance over the first 50 steps, "
          f"{100 * whole:.1f}% over all {args.generate} (errors grow as the phase drifts); amplitude "
          f"kept over the last 50 steps: {100 * amplitude:.0f}%")
    gap = (generated["seed: series A"] - generated["seed: series B"]).abs().mean().item()
    print(f"the seed changes the result: mean |series A - series B| over the generated steps = {gap:.2f}; "
          f"from zeros the generation has std {generated['seed: zeros'].std().item():.2f}")
    path = None if args.no_plot else plot(seeds, generated, truth, args.out)
    return {"losses": losses, "first50": first50, "whole": whole, "amplitude": amplitude, "generated": generated,
            "seconds": timer.seconds, "plot": path}


if __name__ == "__main__":
    main()
