"""The examples in examples/ run end to end and learn: a few training steps each (their main()
with small flags, as a user would call them), asserting that the loss goes down. Also the parity
check of examples/time_series.py against torch.nn.LSTM, and fused_rnn.training's TBPTT helpers.
"""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import fused_rnn
from fused_rnn.training import detach_state, tbptt_chunks

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))  # the examples import their sibling common.py

import date_translation  # noqa: E402
import generation  # noqa: E402
import sentiment_embeddings  # noqa: E402
import time_series  # noqa: E402
import training_tricks  # noqa: E402

CPU = ["--device", "cpu"]


def decreased(losses, k=5, factor=0.9):
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    return last < factor * first, f"loss {first:.4f} (first {k} steps) -> {last:.4f} (last {k})"


def has_matplotlib():
    return importlib.util.find_spec("matplotlib") is not None


def test_time_series_learns():
    result = time_series.main(CPU + ["--steps", "40", "--batch", "16", "--length", "30", "--hidden", "32",
                                     "--no-plot"])
    ok, message = decreased(result["losses"])
    assert ok, message
    assert 0 < result["ratio"] < 1.0  # test MSE / variance: far from the 0.1 target after 40 steps


def test_time_series_parity_with_torch_lstm():
    """Issue 8, item 8: example 1's model trained with fused_rnn.LSTM and with torch.nn.LSTM from
    the same weights on the same batches has the same loss curve (float64: to ~1e-15)."""
    torch.manual_seed(0)
    fused = time_series.NextStepModel(32, rnn=fused_rnn.LSTM).double()
    reference = time_series.NextStepModel(32, rnn=nn.LSTM).double()
    reference.load_state_dict(fused.state_dict())
    generator = torch.Generator().manual_seed(1)
    batches = [time_series.make_batch(16, 50, generator, dtype=torch.float64) for _ in range(50)]
    losses_fused = time_series.fit(fused, lambda step: batches[step], 50)
    losses_torch = time_series.fit(reference, lambda step: batches[step], 50)
    assert losses_fused[-1] < 0.5 * losses_fused[0]  # it does train
    torch.testing.assert_close(torch.tensor(losses_fused, dtype=torch.float64),
                               torch.tensor(losses_torch, dtype=torch.float64), rtol=1e-9, atol=0)
    for (name, a), b in zip(fused.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=f"{name} differs after training")


def test_generation_learns_and_generates(tmp_path):
    result = generation.main(CPU + ["--steps", "30", "--batch", "16", "--length", "30", "--hidden", "32",
                                    "--seed-length", "20", "--generate", "40", "--out", str(tmp_path)])
    ok, message = decreased(result["losses"])
    assert ok, message
    generated = result["generated"]
    assert all(g.shape == (40,) and torch.isfinite(g).all() for g in generated.values())
    assert not torch.equal(generated["seed: series A"], generated["seed: series B"])  # the seed matters
    if has_matplotlib():
        assert (tmp_path / "generation.png").stat().st_size > 0


def test_generation_cell_matches_module():
    """The LSTMCell built from the module's weights steps exactly like the module."""
    torch.manual_seed(0)
    model = time_series.NextStepModel(16)
    cell = generation.lstm_cell_from(model.rnn)
    x = torch.randn(3, 7, 1)
    out, (h, c) = model.rnn(x)
    state = None
    for t in range(7):
        state = cell(x[:, t], state)
        torch.testing.assert_close(state[0], out[:, t])
    torch.testing.assert_close(state[1], c[0])


def test_digits_classification_learns():
    pytest.importorskip("sklearn")
    import digits_classification
    results = digits_classification.main(CPU + ["--steps", "60", "--hidden", "32", "--lr", "0.01",
                                                 "--no-plot"])
    assert set(results) == {"LSTM x1", "LSTM x2", "GRU x1", "GRU x2"}
    for name, result in results.items():
        ok, message = decreased(result["losses"])
        assert ok, f"{name}: {message}"


def test_sentiment_preprocessing():
    vocab = sentiment_embeddings.Vocabulary(["the film was great", "the film was great"], min_count=2)
    assert sentiment_embeddings.tokenize("Paid 12 dollars, in 2024!") == ["paid", "[NUM]", "dollars", ",",
                                                                          "in", "[NUM]", "!"]
    assert vocab.decode(vocab.encode("the 3 films was great")) == "the [NUM] [UNK] was great"


def test_sentiment_learns_with_lengths():
    result = sentiment_embeddings.main(CPU + ["--quick", "--steps", "40", "--batch", "32", "--no-plot"])
    ok, message = decreased(result["losses"])
    assert ok, message
    assert result["padding_effect"] < 1e-6  # lengths= masks the padding: more of it changes nothing


def test_date_translation_learns():
    result = date_translation.main(CPU + ["--steps", "40", "--batch", "32", "--hidden", "32",
                                          "--test-size", "16", "--no-plot"])
    ok, message = decreased(result["losses"])
    assert ok, message


def test_date_data_and_decoding():
    pairs = date_translation.make_pairs(200, seed=3)
    assert {len(iso) for _, iso in pairs} == {7, 10, 16}  # YYYY-MM, YYYY-MM-DD, YYYY-MM-DDTHH:MM
    batch = date_translation.encode_batch(pairs[:2])
    text = pairs[0][0]
    assert date_translation.SOURCE.decode(batch["source"][0, :len(text)].tolist()) == text[::-1]
    assert batch["target_out"][0, len(pairs[0][1])] == date_translation.EOS
    zero, one = date_translation.TARGET.encode("01")
    eos = date_translation.EOS
    tokens = torch.tensor([[zero, one, eos, one], [zero, zero, zero, zero]])  # the 2nd never ends
    assert date_translation.strings(tokens) == ["01", "0000…"]


def test_training_tricks_learns():
    result = training_tricks.main(CPU + ["--steps", "40", "--length", "120", "--batch", "8", "--chunk", "20",
                                         "--no-plot"])
    ok, message = decreased(result["losses"])
    assert ok, message
    assert result["train_diff"] > 0 and result["eval_diff"] == 0  # dropout only in train()
    assert result["ratio"]["carried"] == pytest.approx(result["ratio"]["whole"], rel=1e-5)


# --- fused_rnn.training ------------------------------------------------------------------------

def test_tbptt_chunks_split_and_lengths():
    x, y = torch.randn(2, 10, 3), torch.randn(2, 10, 1)
    chunks = list(tbptt_chunks(x, y, chunk_size=4, lengths=torch.tensor([10, 5]), batch_first=True))
    assert [c[0][0].shape[1] for c in chunks] == [4, 4, 2]
    assert [c[1].tolist() for c in chunks] == [[4, 4], [4, 1], [2, 0]]
    torch.testing.assert_close(torch.cat([c[0][1] for c in chunks], dim=1), y)
    ((x0,), none), = list(tbptt_chunks(x, chunk_size=10))[:1]  # time-major: dim 0 has 2 steps
    assert x0.shape == x.shape and none is None
    with pytest.raises(ValueError):
        list(tbptt_chunks(x, torch.randn(2, 9, 1), chunk_size=4, batch_first=True))
    with pytest.raises(ValueError):
        list(tbptt_chunks(x, chunk_size=0))


@pytest.mark.parametrize("module", [fused_rnn.LSTM, fused_rnn.GRU])
def test_tbptt_carried_state_equals_whole_sequence(module):
    """Chunks with the state carried compute exactly the whole sequence, lengths included: a
    sequence that ended in an earlier chunk (chunk length 0) keeps its final state."""
    torch.manual_seed(0)
    rnn = module(3, 5, num_layers=2, batch_first=True)
    x = torch.randn(3, 11, 3)
    lengths = torch.tensor([11, 4, 7])
    whole, final = rnn(x, lengths=lengths)
    outputs, state = [], None
    for (chunk,), chunk_lengths in tbptt_chunks(x, chunk_size=4, lengths=lengths, batch_first=True):
        out, state = rnn(chunk, detach_state(state), lengths=chunk_lengths)
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, dim=1), whole)
    as_tuple = lambda s: s if isinstance(s, tuple) else (s,)  # noqa: E731
    for a, b in zip(as_tuple(state), as_tuple(final)):
        torch.testing.assert_close(a, b)


def test_detach_state():
    h = torch.randn(2, 3, requires_grad=True) * 2
    c = torch.randn(2, 3, requires_grad=True) * 2
    assert detach_state(None) is None
    assert not detach_state(h).requires_grad
    pair = detach_state((h, c))
    assert isinstance(pair, tuple) and not any(s.requires_grad for s in pair)
    with pytest.raises(TypeError):
        detach_state("h")
