"""Training tricks of the seed's sections 10-11 with fused_rnn: dropout switched by train()/eval(),
gradient clipping, and truncated backpropagation through time with the state carried across
chunks.

The task: next-value prediction (as in examples/time_series.py) on LONG noisy sinusoids, up to
1000 steps, of unequal lengths in one padded batch.

* Dropout. TF1 needs DropoutWrapper(input_keep_prob=, output_keep_prob=, state_keep_prob=)
  around each cell and a hand-made is_training switch (the seed builds two graphs). Here the
  module takes ``input_dropout`` / ``output_dropout`` / ``state_dropout`` (variational: one mask
  per sequence, held over all steps; the state's inside the fused op) and torch's ``dropout``
  (between layers, a fresh mask every step); ``model.train()`` turns all of them on and
  ``model.eval()`` off. (No input_dropout here: with one input feature it would blank whole series.)
* Gradient clipping: ``torch.nn.utils.clip_grad_norm_`` after backward, before the step; it
  returns the norm before clipping, which the example counts.
* Truncated BPTT (fused_rnn.training.tbptt_chunks / detach_state): each 1000-step batch is cut
  into chunks of 50 steps, one optimizer step per chunk, the state carried (detached) from one
  chunk into the next. ``lengths`` go along: a series that ended keeps its state, masked.

At test time the model runs over whole test series three ways: in one call, chunk by chunk with
the state carried (the same numbers: carrying the state IS running the whole sequence), and chunk
by chunk with the state reset to zero at every chunk (worse: it has to rediscover the rhythm
every 50 steps).

    python examples/training_tricks.py --out plots
"""
from __future__ import annotations

import os
import sys
from typing import Dict, Optional

import torch
from torch import Tensor, nn

import fused_rnn
from fused_rnn.training import detach_state, tbptt_chunks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


class Model(nn.Module):
    def __init__(self, hidden_size: int = 64, num_layers: int = 2, dropout: float = 0.1,
                 output_dropout: float = 0.1, state_dropout: float = 0.1) -> None:
        super().__init__()
        self.rnn = fused_rnn.LSTM(1, hidden_size, num_layers, batch_first=True, dropout=dropout,
                                  output_dropout=output_dropout, state_dropout=state_dropout)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: Tensor, state=None, lengths: Optional[Tensor] = None):
        out, state = self.rnn(x, state, lengths=lengths)
        return self.head(out), state


def long_batch(batch: int, max_steps: int, generator: torch.Generator, min_steps: Optional[int] = None):
    """Inputs / targets (B, max_steps, 1), padded with zeros past each series' length, the lengths,
    and the noise-free targets."""
    data = common.noisy_sinusoids(batch, max_steps + 1, generator)
    x, y = common.next_step_pairs(data["series"])
    low = max_steps if min_steps is None else min_steps
    lengths = torch.randint(low, max_steps + 1, (batch,), generator=generator)
    valid = (torch.arange(max_steps) < lengths.unsqueeze(1)).unsqueeze(-1)
    return x * valid, y * valid, lengths, data["clean"][:, 1:].unsqueeze(-1)


def masked_mse(prediction: Tensor, target: Tensor, lengths: Tensor) -> Tensor:
    valid = (torch.arange(target.size(1), device=target.device) < lengths.to(target.device).unsqueeze(1))
    valid = valid.unsqueeze(-1).to(target.dtype)
    return ((prediction - target) ** 2 * valid).sum() / valid.sum().clamp(min=1)


def train_tbptt(model: Model, batches, steps: int, chunk_size: int, lr: float, clip: float,
                device, log_every: int = 0) -> Dict[str, object]:
    """``steps`` optimizer steps, one per chunk; a new long batch whenever one is used up."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()  # dropout on
    losses, norms = [], []
    while len(losses) < steps:
        x, y, lengths, _ = batches()
        state = None  # a new batch of series starts from zeros
        for (x_chunk, y_chunk), chunk_lengths in tbptt_chunks(x.to(device), y.to(device), chunk_size=chunk_size,
                                                              lengths=lengths.to(device), batch_first=True):
            prediction, state = model(x_chunk, detach_state(state), lengths=chunk_lengths)
            loss = masked_mse(prediction, y_chunk, chunk_lengths)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # through this chunk only: the state came in detached
            norms.append(nn.utils.clip_grad_norm_(model.parameters(), clip).item())  # norm before clipping
            optimizer.step()
            losses.append(loss.item())
            if log_every and len(losses) % log_every == 0:
                print(f"  step {len(losses):5d}/{steps}  loss {sum(losses[-log_every:]) / log_every:.4f}  "
                      f"grad norm (before clipping) {sum(norms[-log_every:]) / log_every:.2f}", flush=True)
            if len(losses) == steps:
                break
    return {"losses": losses, "grad_norms": norms}


@torch.no_grad()
def predict_chunked(model: Model, x: Tensor, chunk_size: int, carry: bool) -> Tensor:
    model.eval()
    predictions, state = [], None
    for (chunk,), _ in tbptt_chunks(x, chunk_size=chunk_size, batch_first=True):
        prediction, new_state = model(chunk, state if carry else None)
        predictions.append(prediction)
        state = new_state
    return torch.cat(predictions, dim=1)


def plot(x: Tensor, y: Tensor, carried: Tensor, reset: Tensor, chunk_size: int, out: str) -> Optional[str]:
    plt = common.pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.5))
    span = slice(0, 4 * chunk_size)
    t = torch.arange(x.size(1))[span]
    axes[0].plot(t, y[0, span, 0].cpu(), ".", ms=3, color="0.5", label="target")
    axes[0].plot(t, carried[0, span, 0].cpu(), color="tab:blue", lw=1.5, label="state carried across chunks")
    axes[0].plot(t, reset[0, span, 0].cpu(), color="tab:red", lw=1, label="state reset every chunk")
    for b in range(chunk_size, 4 * chunk_size, chunk_size):
        axes[0].axvline(b - 0.5, color="0.3", ls=":", lw=1)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[0].set_title("the first 4 chunks of a test series", fontsize=9)
    err_carried = ((carried - y) ** 2).mean(dim=(0, 2)).view(-1, chunk_size).mean(dim=0).cpu()
    err_reset = ((reset - y) ** 2).mean(dim=(0, 2)).view(-1, chunk_size).mean(dim=0).cpu()
    axes[1].plot(err_carried, color="tab:blue", label="carried")
    axes[1].plot(err_reset, color="tab:red", label="reset")
    axes[1].set_xlabel("step within the chunk")
    axes[1].set_ylabel("test MSE")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=8)
    axes[1].set_title("error by position in the chunk, averaged over all chunks", fontsize=9)
    return common.save_figure(fig, out, "training_tricks.png")


def main(argv=None) -> Dict[str, object]:
    p = common.parser(__doc__.splitlines()[0], steps=1200)
    p.add_argument("--chunk", type=int, default=50, help="TBPTT chunk length (default 50)")
    p.add_argument("--length", type=int, default=1000, help="max steps per training series")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--clip", type=float, default=0.25, help="max gradient norm (default 0.25)")
    p.add_argument("--lr", type=float, default=5e-3)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.length = min(args.steps, 200), min(args.length, 500)
    device = common.setup(args)
    print(f"training tricks: {args.steps} TBPTT steps of {args.chunk} on {device}")

    model = Model().to(device)
    generator = torch.Generator().manual_seed(args.seed)
    with common.Timer() as timer:
        trained = train_tbptt(model, lambda: long_batch(args.batch, args.length, generator, args.length // 2),
                              args.steps, args.chunk, args.lr, args.clip, device,
                              log_every=max(args.steps // 6, 1))
    clipped = sum(n > args.clip for n in trained["grad_norms"])
    print(f"trained in {timer.seconds:.1f} s; gradient norm clipped to {args.clip} in {clipped} of "
          f"{len(trained['grad_norms'])} steps (largest {max(trained['grad_norms']):.1f})")

    # Dropout: active in train(), off in eval().
    x, y, _, clean = (t.to(device) for t in long_batch(256, args.length, torch.Generator().manual_seed(10_000)))
    probe = x[:8, :100]
    model.train()
    with torch.no_grad():
        train_diff = (model(probe)[0] - model(probe)[0]).abs().max().item()
    model.eval()
    with torch.no_grad():
        eval_diff = (model(probe)[0] - model(probe)[0]).abs().max().item()
    print(f"dropout: two calls on the same input differ by {train_diff:.3f} in train(), "
          f"{eval_diff:.1e} in eval()")

    # Whole sequence in one call vs chunks with carried state vs chunks with state reset.
    with torch.no_grad():
        model.eval()
        whole = model(x)[0]
    carried = predict_chunked(model, x, args.chunk, carry=True)
    reset = predict_chunked(model, x, args.chunk, carry=False)
    variance = y.var().item()
    ratio = {name: nn.functional.mse_loss(pred, y).item() / variance
             for name, pred in (("whole", whole), ("carried", carried), ("reset", reset))}
    print(f"test MSE / series variance over {x.size(1)} steps: whole sequence {100 * ratio['whole']:.2f}%, "
          f"chunks with the state carried {100 * ratio['carried']:.2f}% (max |difference| to whole "
          f"{(carried - whole).abs().max().item():.1e}), chunks with the state reset "
          f"{100 * ratio['reset']:.2f}%")
    path = None if args.no_plot else plot(x, y, carried, reset, args.chunk, args.out)
    return {**trained, "ratio": ratio, "train_diff": train_diff, "eval_diff": eval_diff,
            "seconds": timer.seconds, "plot": path}


if __name__ == "__main__":
    main()
