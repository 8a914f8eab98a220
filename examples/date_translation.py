"""Encoder-decoder with attention (the seed's section 16): translate human-readable dates into
ISO 8601, one character at a time.

    "Tuesday, March 3, 2021"           -> "2021-03-03"
    "mar. 1987"                        -> "1987-03"
    "3rd of JULY 2001 at 5:07 pm"      -> "2001-07-03T17:07"

The seed's machine-translation recipe, on a task that needs no downloads:
  * the encoder (a fused_rnn.GRU) reads the source REVERSED, as the seed does (its last step is
    then the first character, the one the first output characters depend on most); each
    reversed source is padded at the end and its length goes to ``lengths=``, so padding never
    enters the encoder's state or the attention;
  * the decoder (another fused_rnn.GRU, started from the encoder's final state) is trained with
    teacher forcing: its input is [BOS] + the true target, its target the true target + [EOS],
    all steps in one fused call;
  * Luong attention: at every output step the decoder's output scores every encoder output,
    the softmax-weighted sum of the encoder outputs (the context) joins the decoder output in
    the prediction. The seed's tutorial only points at attention; this is a minimal version;
  * outputs have different lengths (7, 10 or 16 characters) and end with [EOS]; at test time
    decoding is greedy: feed the argmax back, one step at a time with the decoder's state
    carried, until every sequence has emitted [EOS].

    python examples/date_translation.py --out plots

Target: >= 95% exact match on unseen dates.
"""
from __future__ import annotations

import datetime
import os
import random
import string
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

import fused_rnn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september",
          "october", "november", "december"]
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
FIRST_DAY, DAYS = datetime.date(1950, 1, 1), 365 * 100 + 25  # 1950-01-01 .. 2049-12-31


def ordinal(day: int) -> str:
    return f"{day}{'th' if 10 <= day % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th')}"


def human_date(rng: random.Random) -> Tuple[str, str]:
    """One (human-readable, ISO 8601) pair: a full date, a month of a year, or a date with time."""
    date = FIRST_DAY + datetime.timedelta(days=rng.randrange(DAYS))
    d, y = date.day, date.year
    month, mon, weekday = MONTHS[date.month - 1], MONTHS[date.month - 1][:3], WEEKDAYS[date.weekday()]
    kind = rng.random()
    if kind < 0.15:  # a month of a year -> YYYY-MM
        text = rng.choice([f"{month} {y}", f"{mon} {y}", f"{mon}. {y}", f"{month}, {y}"])
        iso = f"{y:04d}-{date.month:02d}"
    else:
        text = rng.choice([f"{d} {month} {y}", f"{month} {d}, {y}", f"{weekday}, {month} {d}, {y}",
                           f"{ordinal(d)} of {month} {y}", f"{mon} {d} {y}", f"{d:02d}.{date.month:02d}.{y}",
                           f"{weekday[:3]} {d} {mon} {y}", f"{y}/{date.month:02d}/{d:02d}",
                           f"{month} {ordinal(d)}, {y}"])
        iso = date.isoformat()
        if kind > 0.85:  # with a time of day -> YYYY-MM-DDTHH:MM
            hour, minute = rng.randrange(24), rng.randrange(60)
            if rng.random() < 0.5:
                h12 = hour % 12 or 12
                text += f" at {h12}:{minute:02d} {'am' if hour < 12 else 'pm'}"
            else:
                text += f" {hour:02d}:{minute:02d}"
            iso += f"T{hour:02d}:{minute:02d}"
    case = rng.random()
    text = text.upper() if case < 0.1 else string.capwords(text) if case < 0.4 else text
    return text, iso


def make_pairs(n: int, seed: int) -> List[Tuple[str, str]]:
    rng = random.Random(seed)
    return [human_date(rng) for _ in range(n)]


class Characters:
    """Characters <-> ids, with the special tokens first (0 is padding)."""

    def __init__(self, alphabet: str, specials: Sequence[str]) -> None:
        self.symbols = list(specials) + sorted(set(alphabet))
        self.index = {s: i for i, s in enumerate(self.symbols)}

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, text: str) -> List[int]:
        return [self.index[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.symbols[i] for i in ids)


PAD, BOS, EOS = 0, 1, 2
SOURCE = Characters("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,./:", ["<pad>"])
TARGET = Characters("0123456789-T:", ["<pad>", "<bos>", "<eos>"])


def encode_batch(pairs: Sequence[Tuple[str, str]]) -> Dict[str, Tensor]:
    """Padded tensors: the reversed source and its lengths, decoder inputs and targets."""
    source, source_lengths = common.pad([SOURCE.encode(text[::-1]) for text, _ in pairs])  # reversed
    target_in, _ = common.pad([[BOS] + TARGET.encode(iso) for _, iso in pairs])
    target_out, _ = common.pad([TARGET.encode(iso) + [EOS] for _, iso in pairs])
    return {"source": source, "lengths": source_lengths, "target_in": target_in, "target_out": target_out}


class DateTranslator(nn.Module):
    def __init__(self, embedding_dim: int = 32, hidden_size: int = 128) -> None:
        super().__init__()
        self.source_embedding = nn.Embedding(len(SOURCE), embedding_dim, padding_idx=PAD)
        self.encoder = fused_rnn.GRU(embedding_dim, hidden_size, batch_first=True)
        self.target_embedding = nn.Embedding(len(TARGET), embedding_dim, padding_idx=PAD)
        self.decoder = fused_rnn.GRU(embedding_dim, hidden_size, batch_first=True)
        self.score = nn.Linear(hidden_size, hidden_size, bias=False)  # Luong's "general" score
        self.combine = nn.Linear(2 * hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, len(TARGET))

    def encode(self, source: Tensor, lengths: Tensor):
        """-> memory (B, S, H) (zero past each length), its mask (B, S), the final state (1, B, H)."""
        memory, state = self.encoder(self.source_embedding(source), lengths=lengths)
        mask = torch.arange(source.size(1), device=source.device) < lengths.to(source.device).unsqueeze(1)
        return memory, mask, state

    def decode(self, tokens: Tensor, state: Tensor, memory: Tensor, mask: Tensor):
        """Decoder steps for the given input tokens (B, T) from ``state``: logits (B, T, V), the new
        state, and the attention weights (B, T, S)."""
        outputs, state = self.decoder(self.target_embedding(tokens), state)
        scores = self.score(outputs) @ memory.transpose(1, 2)  # (B, T, S)
        weights = scores.masked_fill(~mask.unsqueeze(1), float("-inf")).softmax(dim=-1)
        context = weights @ memory  # (B, T, H)
        logits = self.out(torch.tanh(self.combine(torch.cat([outputs, context], dim=-1))))
        return logits, state, weights

    def forward(self, source: Tensor, lengths: Tensor, target_in: Tensor) -> Tensor:
        """Teacher forcing: the decoder reads the true previous characters, all steps at once."""
        memory, mask, state = self.encode(source, lengths)
        return self.decode(target_in, state, memory, mask)[0]

    @torch.no_grad()
    def greedy(self, source: Tensor, lengths: Tensor, max_length: int = 24):
        """Greedy decoding, one step at a time with the decoder state carried: token ids
        (B, <= max_length) and the attention weights (B, steps, S)."""
        memory, mask, state = self.encode(source, lengths)
        token = torch.full((source.size(0), 1), BOS, dtype=torch.int64, device=source.device)
        tokens, attention = [], []
        finished = torch.zeros(source.size(0), dtype=torch.bool, device=source.device)
        for _ in range(max_length):
            logits, state, weights = self.decode(token, state, memory, mask)
            token = logits.argmax(dim=-1)  # (B, 1)
            tokens.append(token)
            attention.append(weights)
            finished |= token[:, 0] == EOS
            if bool(finished.all()):
                break
        return torch.cat(tokens, dim=1), torch.cat(attention, dim=1)


def strings(tokens: Tensor) -> List[str]:
    """Token ids -> text up to the first [EOS] (no [EOS]: everything; never an exact match then)."""
    result = []
    for row in tokens.tolist():
        ids = row[:row.index(EOS)] if EOS in row else row + [PAD]
        result.append(TARGET.decode(i for i in ids if i != PAD) + ("" if EOS in row else "…"))
    return result


def translate(model: DateTranslator, texts: Sequence[str], device, batch: int = 500):
    model.eval()
    predictions, attention = [], []
    for start in range(0, len(texts), batch):
        data = encode_batch([(t, "") for t in texts[start:start + batch]])
        tokens, weights = model.greedy(data["source"].to(device), data["lengths"].to(device))
        predictions += strings(tokens.cpu())
        attention.append(weights.cpu())
    return predictions, attention


def plot_attention(model: DateTranslator, texts: Sequence[str], device, out: str) -> Optional[str]:
    plt = common.pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(texts), figsize=(5.2 * len(texts), 4.2))
    for ax, text in zip(axes, texts):
        (prediction,), (weights,) = translate(model, [text], device)
        n_out = len(prediction) + 1  # + [EOS]
        w = weights[0, :n_out, :len(text)].flip(-1)  # the encoder read it reversed: flip back
        ax.imshow(w, cmap="Greys", aspect="auto", vmin=0, vmax=1)
        ax.set_xticks(range(len(text)), list(text), fontsize=7)
        ax.set_yticks(range(n_out), list(prediction) + ["<eos>"], fontsize=7)
        ax.set_title(f"{text!r} -> {prediction!r}", fontsize=8)
    fig.suptitle("attention weights: which source characters each output character looks at", fontsize=10)
    return common.save_figure(fig, out, "date_translation_attention.png")


def main(argv=None) -> Dict[str, object]:
    p = common.parser(__doc__.splitlines()[0], steps=1200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--test-size", type=int, default=1000)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.test_size = min(args.steps, 400), 300
    device = common.setup(args)
    print(f"dates: {args.steps} steps of {args.batch} fresh random pairs on {device}; e.g.")
    for text, iso in make_pairs(4, seed=args.seed + 1):
        print(f"  {text!r:38} -> {iso!r}")

    model = DateTranslator(hidden_size=args.hidden).to(device)
    rng = random.Random(args.seed)

    def step_loss(step: int) -> Tensor:
        data = {k: v.to(device) for k, v in encode_batch([human_date(rng) for _ in range(args.batch)]).items()}
        logits = model(data["source"], data["lengths"], data["target_in"])
        return nn.functional.cross_entropy(logits.flatten(0, 1), data["target_out"].flatten(),
                                           ignore_index=PAD)

    with common.Timer() as timer:
        losses = common.train(model, step_loss, args.steps, args.lr, clip=1.0,
                              log_every=max(args.steps // 6, 1))
    test = make_pairs(args.test_size, seed=10_000 + args.seed)
    predictions, _ = translate(model, [text for text, _ in test], device)
    correct = [p == iso for p, (_, iso) in zip(predictions, test)]
    accuracy = sum(correct) / len(test)
    print(f"trained in {timer.seconds:.1f} s")
    print(f"exact match on {len(test)} unseen dates: {100 * accuracy:.1f}% (target >= 95%)")
    for (text, iso), p, ok in list(zip(test, predictions, correct))[:6]:
        print(f"  {text!r:38} -> {p!r:20} {'ok' if ok else 'expected ' + repr(iso)}")
    wrong = [(t, p, iso) for (t, iso), p, ok in zip(test, predictions, correct) if not ok]
    for text, p, iso in wrong[:3]:
        print(f"  wrong: {text!r} -> {p!r}, expected {iso!r}")
    path = None
    if not args.no_plot:
        path = plot_attention(model, ["Tuesday, March 3, 2021", "3rd of july 2001 at 5:07 pm"], device, args.out)
    return {"accuracy": accuracy, "losses": losses, "seconds": timer.seconds, "plot": path}


if __name__ == "__main__":
    main()
