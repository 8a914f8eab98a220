"""Sequence classification (the seed's section 6, with section 9's multi-layer RNN): classify
images by reading them row by row.

The seed reads 28x28 MNIST as 28 time steps of 28 pixels. With no downloads allowed, this uses
scikit-learn's bundled 8x8 digits (1797 images): 8 time steps of 8 pixels. The classifier is the
last layer's final hidden state h_n[-1] -> a linear layer -> 10 logits, with single- and
two-layer fused_rnn.LSTM and fused_rnn.GRU (TF1: BasicLSTMCell / GRUCell, stacked with
MultiRNNCell; here num_layers=2). With 1438 training images the models overfit; output_dropout
(fused_rnn's variational dropout on each layer's output, one mask per image) makes the 95% safer
across data splits.

    python examples/digits_classification.py                  # all four models
    python examples/digits_classification.py --cell gru --layers 2

Needs scikit-learn (pip install scikit-learn). Target: >= 95% test accuracy for each model.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

import fused_rnn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CELLS = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU, "rnn": fused_rnn.RNN}


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """sklearn's 8x8 digits as sequences (N, 8 rows, 8 pixels) in [0, 1]: x_train, y_train, x_test, y_test."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:
        raise SystemExit("this example needs scikit-learn: pip install scikit-learn") from error
    digits = sklearn_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # (1797, 8, 8): row t = step t
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(labels) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


class RowClassifier(nn.Module):
    """Reads an image one row per time step; classifies from the last layer's final state."""

    def __init__(self, cell: str = "lstm", num_layers: int = 1, hidden_size: int = 128,
                 rows: int = 8, classes: int = 10, output_dropout: float = 0.0) -> None:
        super().__init__()
        self.rnn = CELLS[cell](rows, hidden_size, num_layers, batch_first=True,
                               output_dropout=output_dropout)
        self.head = nn.Linear(hidden_size, classes)

    def forward(self, images: Tensor) -> Tensor:
        _, state = self.rnn(images)  # images (B, rows=T, pixels=I)
        h_n = state[0] if isinstance(state, tuple) else state  # LSTM: (h_n, c_n)
        return self.head(h_n[-1])  # the top layer's state after the last row


def fit(model: nn.Module, x: Tensor, y: Tensor, steps: int, batch: int = 64, lr: float = 3e-3,
        seed: int = 0, log_every: int = 0) -> List[float]:
    """Minibatch training with cross-entropy, reshuffling every epoch; returns the losses."""
    generator = torch.Generator().manual_seed(seed)
    order: List[Tensor] = []

    def step_loss(step: int) -> Tensor:
        if not order:
            order.extend(torch.randperm(len(y), generator=generator).split(batch))
        idx = order.pop().to(x.device)
        return nn.functional.cross_entropy(model(x[idx]), y[idx])
    return common.train(model, step_loss, steps, lr, log_every=log_every)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return (model(x).argmax(dim=1) == y).float().mean().item()


def plot(model: nn.Module, name: str, x: Tensor, y: Tensor, out: str):
    plt = common.pyplot()
    if plt is None:
        return None
    with torch.no_grad():
        model.eval()
        predicted = model(x[:24]).argmax(dim=1).cpu()
    fig, axes = plt.subplots(3, 8, figsize=(8, 3.6))
    for k, ax in enumerate(axes.flat):
        ax.imshow(x[k].cpu(), cmap="gray_r")
        good = bool(predicted[k] == y[k].cpu())
        ax.set_title(f"{predicted[k].item()}", color="tab:green" if good else "tab:red", fontsize=10)
        ax.axis("off")
    fig.suptitle(f"test digits read row by row by the {name}; title = predicted class", fontsize=10)
    return common.save_figure(fig, out, "digits_classification.png")


def main(argv=None) -> Dict[str, object]:
    p = common.parser(__doc__.splitlines()[0], steps=1000)
    p.add_argument("--cell", choices=["lstm", "gru", "rnn", "all"], default="all",
                   help="all = single- and two-layer LSTM and GRU (default)")
    p.add_argument("--layers", type=int, default=None,
                   help="num_layers (default: 1 and 2 with --cell all, else 1)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dropout", type=float, default=0.3, help="output_dropout of the RNN (default 0.3)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 300)
    device = common.setup(args)
    x_train, y_train, x_test, y_test = [t.to(device) for t in load_digits(seed=args.seed)]
    print(f"digits: {len(y_train)} training and {len(y_test)} test images of 8 rows x 8 pixels, on {device}")
    if args.cell == "all":
        configs = [(c, n) for c in ("lstm", "gru") for n in ((args.layers,) if args.layers else (1, 2))]
    else:
        configs = [(args.cell, args.layers or 1)]

    results = {}
    for cell, layers in configs:
        torch.manual_seed(args.seed)
        model = RowClassifier(cell, layers, args.hidden, output_dropout=args.dropout).to(device)
        with common.Timer() as timer:
            losses = fit(model, x_train, y_train, args.steps, lr=args.lr, seed=args.seed)
        acc = accuracy(model, x_test, y_test)
        name = f"{cell.upper()} x{layers}"
        results[name] = {"accuracy": acc, "losses": losses, "seconds": timer.seconds}
        print(f"  {name:8s} test accuracy {100 * acc:5.1f}%  (final loss {losses[-1]:.3f}, "
              f"{timer.seconds:.1f} s){'' if acc >= 0.95 else '  < 95% target'}")
    if not args.no_plot:
        plot(model, name, x_test, y_test, args.out)
    return results


if __name__ == "__main__":
    main()
