"""Embeddings + RNN (the seed's section 15): sentiment of generated movie reviews.

The seed's recipe for text: split a sentence into words, replace what the vocabulary cannot know
by tokens (numbers -> [NUM], unknown words -> [UNK]), map each word to its id, look the ids up in
a trained embedding matrix, and run the RNN over the vectors.

The reviews are generated from templates: one opinion clause ("the acting was brilliant", "i want
my 12 dollars back", "it was not bad") hidden among neutral clauses about names, prices, years
and places, so the opinion may come first and be followed by many unrelated words (the seed's
"memory" example in section 11). Names and places are made up fresh for every review and some
neutral words carry typos, so they fall outside the vocabulary: [UNK]. Every number is [NUM].

Reviews have different lengths; each batch is padded to its longest review and the true lengths
go to the RNN: ``gru(embedded, lengths=lengths)``. fused_rnn masks the padding (no
pack_padded_sequence needed), so the final state h_n is each review's state after its own last
word, and the reverse direction of the bidirectional GRU starts there too. The example checks that
extra padding changes nothing.

    python examples/sentiment_embeddings.py

Target: >= 90% test accuracy. No plot: a 2-D picture of the learned embeddings says little here
(the bidirectional GRU, not the embedding geometry, resolves "not bad" vs "not good").
"""
from __future__ import annotations

import os
import random
import re
import sys
from collections import Counter
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

import fused_rnn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

PAD, UNK, NUM = "[PAD]", "[UNK]", "[NUM]"

POSITIVE = ["i loved this movie", "the film was great", "what a wonderful story",
            "the acting was brilliant", "it was fun from start to finish", "i would happily watch it again",
            "a real masterpiece", "highly recommended", "the best film i have seen in {num} years",
            "worth every one of the {num} dollars", "the film was not bad at all", "it was not boring"]
NEGATIVE = ["i hated this movie", "the film was terrible", "what a dull story",
            "the acting was awful", "it was boring from start to finish", "i would never watch it again",
            "a complete waste of time", "not recommended", "the worst film i have seen in {num} years",
            "i want my {num} dollars back", "the film was not good at all", "it was not fun"]
NEUTRAL = ["i watched it with {name} on {day}", "the tickets cost {num} dollars", "it runs for {num} minutes",
           "{name} directed it in {year}", "we sat in row {num}", "the cinema was quite full",
           "{name} plays the lead", "the popcorn was {snack}", "one scene is set in {place}",
           "the sequel comes out in {year}", "my friend {name} brought {num} snacks",
           "it is based on a book by {name}", "the music is by {name} and {name}"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
SNACKS = ["salty", "sweet", "cold", "warm", "expensive"]
SYLLABLES = ["ka", "ro", "li", "mu", "te", "san", "vo", "ri", "na", "bel", "dor", "fi", "gu", "zan"]
JOINERS = [" , ", " and ", " . ", " ; "]


def made_up_word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(3, 5)))


def typo(word: str, rng: random.Random) -> str:
    """Replaces one letter by a random one: 'cinema' -> 'cinxma'."""
    if len(word) < 4 or not word.isalpha():
        return word
    k = rng.randrange(1, len(word))
    return word[:k] + rng.choice("abcdefghijklmnopqrstuvwxyz") + word[k + 1:]


def fill(template: str, rng: random.Random) -> str:
    text = re.sub(r"\{(\w+)\}", lambda m: {
        "num": lambda: str(rng.randint(1, 500)), "year": lambda: str(rng.randint(1950, 2030)),
        "name": lambda: made_up_word(rng), "place": lambda: made_up_word(rng),
        "day": lambda: rng.choice(DAYS), "snack": lambda: rng.choice(SNACKS)}[m.group(1)](), template)
    return text


def make_review(rng: random.Random, typo_rate: float = 0.05) -> Tuple[str, int]:
    """One review and its label (1 positive, 0 negative)."""
    label = rng.randint(0, 1)
    opinion = fill(rng.choice(POSITIVE if label else NEGATIVE), rng)
    neutral = [" ".join(typo(w, rng) if rng.random() < typo_rate else w for w in fill(t, rng).split())
               for t in rng.sample(NEUTRAL, rng.randint(0, 6))]
    clauses = neutral[:]
    clauses.insert(rng.randint(0, len(neutral)), opinion)
    text = clauses[0]
    for clause in clauses[1:]:
        text += rng.choice(JOINERS) + clause
    return text, label


def make_reviews(n: int, seed: int) -> List[Tuple[str, int]]:
    rng = random.Random(seed)
    return [make_review(rng) for _ in range(n)]


# --- the seed's preprocessing: words -> tokens -> ids ----------------------------------------

TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[a-z]+(?:'[a-z]+)?|[^\sa-z\d]")


def tokenize(text: str) -> List[str]:
    """Lower-case words and punctuation; every number becomes [NUM]."""
    return [NUM if t[0].isdigit() else t for t in TOKEN.findall(text.lower())]


class Vocabulary:
    """Words seen at least ``min_count`` times in the training texts; the rest map to [UNK]."""

    def __init__(self, texts: Sequence[str], min_count: int = 3) -> None:
        counts = Counter(t for text in texts for t in tokenize(text))
        self.words = [PAD, UNK, NUM] + sorted(w for w, c in counts.items() if c >= min_count and w != NUM)
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> List[int]:
        return [self.index.get(t, self.index[UNK]) for t in tokenize(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.words[i] for i in ids)


# --- the model ---------------------------------------------------------------------------------

class SentimentModel(nn.Module):
    """Embedding -> bidirectional fused_rnn.GRU over the real words only (lengths=) -> linear."""

    def __init__(self, vocab_size: int, embedding_dim: int = 32, hidden_size: int = 64) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.rnn = fused_rnn.GRU(embedding_dim, hidden_size, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden_size, 2)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        _, h_n = self.rnn(self.embedding(ids), lengths=lengths)  # h_n (2 directions, B, H)
        return self.head(torch.cat([h_n[0], h_n[1]], dim=1))


def batches(encoded: List[List[int]], labels: Tensor, batch: int, generator: torch.Generator):
    """Endless shuffled padded batches: (ids (B, T_max of the batch), lengths (B,), labels (B,))."""
    while True:
        for idx in torch.randperm(len(encoded), generator=generator).split(batch):
            ids, lengths = common.pad([encoded[i] for i in idx])
            yield ids, lengths, labels[idx]


@torch.no_grad()
def predict(model: SentimentModel, encoded: List[List[int]], device, batch: int = 256,
            extra_padding: int = 0) -> Tensor:
    model.eval()
    out = []
    for start in range(0, len(encoded), batch):
        ids, lengths = common.pad(encoded[start:start + batch])
        if extra_padding:
            ids = nn.functional.pad(ids, (0, extra_padding))  # more [PAD] columns: must not matter
        out.append(model(ids.to(device), lengths.to(device)).cpu())
    return torch.cat(out)


def main(argv=None) -> Dict[str, object]:
    p = common.parser(__doc__.splitlines()[0], steps=400)
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-3)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.train_size, args.test_size = min(args.steps, 200), 1000, 300
    device = common.setup(args)

    train = make_reviews(args.train_size, seed=args.seed)
    test = make_reviews(args.test_size, seed=10_000 + args.seed)
    vocab = Vocabulary([text for text, _ in train])
    train_ids = [vocab.encode(text) for text, _ in train]
    test_ids = [vocab.encode(text) for text, _ in test]
    train_labels = torch.tensor([label for _, label in train])
    test_labels = torch.tensor([label for _, label in test])
    lengths = [len(ids) for ids in train_ids]
    unknown = sum(i == vocab.index[UNK] for ids in test_ids for i in ids) / sum(map(len, test_ids))
    print(f"sentiment: {len(train)} training / {len(test)} test reviews of {min(lengths)}-{max(lengths)} "
          f"tokens; vocabulary {len(vocab)} words; {100 * unknown:.1f}% of test tokens are [UNK]; on {device}")
    print(f"  e.g. {test[0][0]!r}\n    -> {vocab.decode(test_ids[0])!r} (label {test[0][1]})")

    model = SentimentModel(len(vocab)).to(device)
    stream = batches(train_ids, train_labels, args.batch, torch.Generator().manual_seed(args.seed))

    def step_loss(step: int) -> Tensor:
        ids, lengths, labels = (t.to(device) for t in next(stream))
        return nn.functional.cross_entropy(model(ids, lengths), labels)

    with common.Timer() as timer:
        losses = common.train(model, step_loss, args.steps, args.lr, clip=1.0,
                              log_every=max(args.steps // 5, 1))
    logits = predict(model, test_ids, device)
    accuracy = (logits.argmax(dim=1) == test_labels).float().mean().item()
    padding_effect = (predict(model, test_ids[:256], device, extra_padding=7) - logits[:256]).abs().max().item()
    print(f"trained in {timer.seconds:.1f} s")
    print(f"test accuracy {100 * accuracy:.1f}% (target >= 90%); 7 extra [PAD] columns change the "
          f"logits by at most {padding_effect:.1e}")
    return {"accuracy": accuracy, "losses": losses, "padding_effect": padding_effect,
            "seconds": timer.seconds}


if __name__ == "__main__":
    main()
