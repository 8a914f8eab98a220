"""Layer placement (module.place_layers) and time-chunk pipelining against the unplaced module.

In float64 on the CPU: placement over ["cpu", "cpu"], chunked vs unchunked runs of every module
(lengths, hx, batch_first, unbatched and PackedSequence inputs, gradients), one functional call per
layer and chunk, variational dropout, state_dict names, .to() interaction and argument checks.
With a GPU (skipped visibly otherwise): mixed ["cpu", "cuda:0"] placements, and two GPUs.
"""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from fused_rnn import placement

F64 = torch.float64
TIGHT = dict(rtol=1e-9, atol=1e-10)
T, B, I, H = 7, 5, 3, 4
LENGTHS = [7, 0, 3, 4, 1]  # T, empty, ends inside a chunk and on a chunk boundary (chunks of 4+3)



@pytest.fixture(autouse=True)
def chunk_on_one_device(monkeypatch):
    """Most tests here place every layer on the CPU: make those runs chunk anyway, so that the
    chunking is what they test (a real placement chunks only across devices)."""
    monkeypatch.setattr(placement, "_CHUNK_ON_ONE_DEVICE", True)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="fewer than 2 CUDA devices")

# name -> (constructor, kwargs)
MODULES = {
    "lstm": (fused_rnn.LSTM, {}),
    "lstm_proj": (fused_rnn.LSTM, {"proj_size": 2}),
    "peephole_lstm": (fused_rnn.PeepholeLSTM, {}),
    "gru": (fused_rnn.GRU, {}),
    "gru_reset_before": (fused_rnn.GRU, {"reset_after": False}),
    "rnn_tanh": (fused_rnn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (fused_rnn.RNN, {"nonlinearity": "relu"}),
}


def make(name, layers=3, **kwargs):
    cls, extra = MODULES[name]
    torch.manual_seed(0)
    return cls(I, H, num_layers=layers, dtype=F64, **extra, **kwargs)


def make_hx(module, batch=B, device="cpu", unbatched=False):
    d = 2 if module.bidirectional else 1
    shape = (module.num_layers * d,) + (() if unbatched else (batch,))
    h = torch.randn(shape + (module.proj_size or module.hidden_size,), dtype=F64, device=device)
    if isinstance(module, fused_rnn.LSTM):
        return h, torch.randn(shape + (module.hidden_size,), dtype=F64, device=device)
    return h


def flat(*items):
    out = []
    for item in items:
        if isinstance(item, (tuple, list)):
            out.extend(flat(*item))
        elif isinstance(item, nn.utils.rnn.PackedSequence):
            out.append(item.data)
        else:
            out.append(item)
    return out


def leaf(obj, device=None):
    if obj is None:
        return None
    if isinstance(obj, tuple):
        return tuple(leaf(o, device) for o in obj)
    return obj.detach().to(device or obj.device).requires_grad_(True)


def run_and_grad(module, x, hx, **kwargs):
    """Output, states and the gradients of a fixed random loss w.r.t. input, hx and parameters."""
    module.zero_grad()
    x, hx = leaf(x), leaf(hx)
    out, state = module(x, hx, **kwargs)
    results = flat(out, state)
    gen = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)).sum() for t in results)
    loss.backward()
    grads = [x.grad] + [h.grad for h in flat(hx)] if hx is not None else [x.grad]
    grads += [p.grad for _, p in module.named_parameters()]
    return results, grads


def assert_all_close(ours, theirs, device="cpu"):
    assert len(ours) == len(theirs)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a.to(device), b.to(device), **TIGHT, msg=lambda m: f"tensor {k}: {m}")


# --------------------------------------------------------------------------------------------
# CPU: placement over ["cpu", ...] and chunking
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_chunked_matches_unchunked(name, chunks):
    """Outputs, final states and every gradient, with lengths and hx, equal the unplaced run."""
    plain = make(name)
    placed = copy.deepcopy(plain).place_layers(["cpu"] * 3, pipeline_chunks=chunks)
    x = torch.randn(T, B, I, dtype=F64)
    hx = make_hx(plain)
    lengths = torch.tensor(LENGTHS)
    theirs = run_and_grad(plain, x, hx, lengths=lengths)
    ours = run_and_grad(placed, x, hx, lengths=lengths)
    assert_all_close(ours[0], theirs[0])
    assert_all_close(ours[1], theirs[1])


@pytest.mark.parametrize("chunks", [2, T, T + 3])  # T + 3: more chunks than steps -> T chunks of 1
@pytest.mark.parametrize("batch_first", [False, True])
def test_chunk_counts_and_batch_first(chunks, batch_first):
    plain = make("lstm", layers=2, batch_first=batch_first)
    placed = copy.deepcopy(plain).place_layers(["cpu", "cpu"], pipeline_chunks=chunks)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=F64)
    lengths = torch.tensor(LENGTHS)
    assert_all_close(run_and_grad(placed, x, None, lengths=lengths)[0],
                     run_and_grad(plain, x, None, lengths=lengths)[0])
    assert_all_close(run_and_grad(placed, x, None)[1], run_and_grad(plain, x, None)[1])


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_unbatched_and_packed(name):
    plain = make(name, layers=2)
    placed = copy.deepcopy(plain).place_layers(["cpu", "cpu"], pipeline_chunks=3)
    x = torch.randn(T, I, dtype=F64)
    hx = make_hx(plain, unbatched=True)
    assert_all_close(run_and_grad(placed, x, hx)[0], run_and_grad(plain, x, hx)[0])
    padded = torch.randn(T, B, I, dtype=F64)
    packed = pack_padded_sequence(padded, torch.tensor([7, 2, 3, 4, 1]), enforce_sorted=False)
    ours, theirs = placed(packed), plain(packed)
    assert isinstance(ours[0], nn.utils.rnn.PackedSequence)
    assert torch.equal(ours[0].unsorted_indices, theirs[0].unsorted_indices)
    assert_all_close(flat(ours), flat(theirs))


def record_run_calls(monkeypatch, module):
    """A list that fills with (layer, steps) for every functional call of the module's class."""
    calls = []
    original = type(module)._run

    def counting(self, x, state, layer, direction, lengths, state_mask=None):
        calls.append((layer, x.size(0)))
        return original(self, x, state, layer, direction, lengths, state_mask)

    monkeypatch.setattr(type(module), "_run", counting)
    return calls


def test_one_functional_call_per_layer_and_chunk(monkeypatch):
    module = make("gru").place_layers(["cpu"] * 3, pipeline_chunks=4)
    calls = record_run_calls(monkeypatch, module)
    module(torch.randn(10, B, I, dtype=F64))
    assert len(calls) == 3 * 4
    # The wavefront order: step s runs layer l on chunk s - l; chunks of 3, 3, 2, 2 steps.
    assert calls[:4] == [(0, 3), (0, 3), (1, 3), (0, 2)]
    assert sorted(calls) == sorted((layer, size) for layer in range(3) for size in (3, 3, 2, 2))


def test_one_device_runs_unchunked(monkeypatch):
    """Layers all on one device cannot overlap, so pipeline_chunks does not chunk them: one call
    per layer over the whole sequence (the chunks would only cost time)."""
    monkeypatch.setattr(placement, "_CHUNK_ON_ONE_DEVICE", False)
    plain = make("lstm")
    module = copy.deepcopy(plain).place_layers(["cpu"] * 3, pipeline_chunks=4)
    assert module.pipeline_chunks == 4
    calls = record_run_calls(monkeypatch, module)
    x = torch.randn(10, B, I, dtype=F64)
    y = module(x)[0]
    assert calls == [(0, 10), (1, 10), (2, 10)]
    torch.testing.assert_close(y, plain(x)[0], **TIGHT)


def test_chunk_bounds():
    assert placement.chunk_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert placement.chunk_bounds(3, 5) == [(0, 1), (1, 2), (2, 3)]
    assert placement.chunk_bounds(0, 4) == [(0, 0)]


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_variational_dropout_draws_like_unplaced(name):
    """input/output/state dropout: one mask per layer (and direction) and call, drawn in the same
    order and held across chunks, so with the same seed the chunked run equals the unplaced one
    in training mode too."""
    plain = make(name, layers=2, input_dropout=0.3, output_dropout=0.4, state_dropout=0.5)
    placed = copy.deepcopy(plain).place_layers(["cpu", "cpu"], pipeline_chunks=3)
    x = torch.randn(T, B, I, dtype=F64)
    torch.manual_seed(5)
    theirs = flat(plain(x))
    torch.manual_seed(5)
    ours = flat(placed(x))
    assert_all_close(ours, theirs)


def test_bidirectional_placed_but_not_pipelined():
    plain = make("gru", layers=2, bidirectional=True)
    placed = copy.deepcopy(plain).place_layers(["cpu", "cpu"])
    x = torch.randn(T, B, I, dtype=F64)
    hx = make_hx(plain)
    lengths = torch.tensor(LENGTHS)
    ours = run_and_grad(placed, x, hx, lengths=lengths)
    theirs = run_and_grad(plain, x, hx, lengths=lengths)
    assert_all_close(ours[0], theirs[0])
    assert_all_close(ours[1], theirs[1])
    with pytest.raises(ValueError, match="bidirectional"):
        placed.place_layers(["cpu", "cpu"], pipeline_chunks=2)


def test_state_dict_names_and_torch_checkpoint():
    plain = make("lstm_proj")
    placed = copy.deepcopy(plain).place_layers(["cpu"] * 3, pipeline_chunks=2)
    assert list(placed.state_dict()) == list(nn.LSTM(I, H, 3, proj_size=2).state_dict())
    reference = nn.LSTM(I, H, 3, proj_size=2, dtype=F64)
    placed.load_state_dict(reference.state_dict())
    x = torch.randn(T, B, I, dtype=F64)
    assert_all_close(flat(placed(x)), flat(reference(x)))
    assert placed.layer_devices == (torch.device("cpu"),) * 3 and placed.pipeline_chunks == 2


def test_to_and_undo():
    module = make("gru", layers=2).place_layers(["cpu", "cpu"], pipeline_chunks=2)
    params = list(module.parameters())
    module.float()  # dtype conversions keep the placement
    assert module.layer_devices == (torch.device("cpu"),) * 2 and module.pipeline_chunks == 2
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert [id(p) for p in module.parameters()] == [id(p) for p in params]
    module.to("cpu")  # every layer already there: the placement still describes the module
    assert module.pipeline_chunks == 2
    copied = pickle.loads(pickle.dumps(module))
    assert copied.layer_devices == module.layer_devices and copied.pipeline_chunks == 2
    assert "layer_devices=[cpu, cpu], pipeline_chunks=2" in repr(module)
    module.to("meta")  # moving the layers elsewhere drops the placement (a GPU test does .cuda())
    assert module.layer_devices is None and module.pipeline_chunks == 1
    assert "layer_devices" not in repr(module)
    other = make("gru", layers=2).place_layers(["cpu", "cpu"], pipeline_chunks=2)
    assert other.place_layers(None) is other
    assert other.layer_devices is None and other.pipeline_chunks == 1


def test_training_step_with_optimizer():
    module = make("lstm", layers=2).place_layers(["cpu", "cpu"], pipeline_chunks=2)
    reference = copy.deepcopy(module).place_layers(None)
    for m in (module, reference):
        optimizer = torch.optim.SGD(m.parameters(), lr=0.1)
        for _ in range(2):
            optimizer.zero_grad()
            out, _ = m(torch.ones(T, B, I, dtype=F64))
            out.square().mean().backward()
            optimizer.step()
    for a, b in zip(module.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, **TIGHT)


def test_argument_checks():
    module = make("lstm", layers=2)
    with pytest.raises(ValueError, match="one device per layer"):
        module.place_layers(["cpu"])
    with pytest.raises(TypeError, match="sequence with one device per layer"):
        module.place_layers("cpu")
    with pytest.raises(ValueError, match="pipeline_chunks"):
        module.place_layers(["cpu", "cpu"], pipeline_chunks=0)
    with pytest.raises(ValueError, match="pipeline_chunks"):
        module.place_layers(["cpu", "cpu"], pipeline_chunks=True)
    with pytest.raises(ValueError, match="needs a placement"):
        module.place_layers(None, pipeline_chunks=2)
    with pytest.raises(ValueError, match=r"devices\[1\]"):
        module.place_layers(["cpu", "nonsense"])
    assert module.layer_devices is None


def test_benchmark_runs():
    from benchmarks.pipeline import run_pipeline_benchmark
    result = run_pipeline_benchmark("cpu", repeats=1, shape=(6, 2, 3, 4), layers=2, chunks=(2,))
    assert {"unplaced", "placed", "pipelined_2"} <= set(result["variants"])
    assert all(v["forward_backward_ms"] > 0 for v in result["variants"].values())


# --------------------------------------------------------------------------------------------
# GPU: mixed CPU/CUDA placement
# --------------------------------------------------------------------------------------------

MIXED = [["cpu", "cuda:0", "cpu"], ["cuda:0", "cpu", "cuda:0"], ["cuda:0"] * 3]


@needs_cuda
@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("devices", MIXED, ids=lambda d: "-".join(x.replace(":", "") for x in d))
@pytest.mark.parametrize("chunks", [1, 3])
def test_mixed_cpu_cuda(name, devices, chunks):
    plain = make(name)
    placed = copy.deepcopy(plain).place_layers(devices, pipeline_chunks=chunks)
    x = torch.randn(T, B, I, dtype=F64, device="cuda")  # on another device than layer 0 for some
    hx = tuple(h.to("cuda") for h in flat(make_hx(plain)))  # hx on any device
    hx = hx if len(hx) == 2 else hx[0]
    lengths = torch.tensor(LENGTHS)
    ours = run_and_grad(placed, x, hx, lengths=lengths)
    theirs = run_and_grad(plain, x.cpu(), leaf(hx, "cpu"), lengths=lengths)
    last = torch.device(devices[-1])
    assert all(t.device == last for t in ours[0]), "output and states come back on the last layer's device"
    for layer, device in enumerate(devices):
        assert getattr(placed, f"weight_hh_l{layer}").device == torch.device(device)
    assert_all_close(ours[0], theirs[0])
    assert_all_close(ours[1], theirs[1])


@needs_cuda
def test_mixed_lengths_on_cuda_and_packed():
    plain = make("lstm", layers=2)
    placed = copy.deepcopy(plain).place_layers(["cuda:0", "cpu"], pipeline_chunks=2)
    x = torch.randn(T, B, I, dtype=F64)
    lengths = torch.tensor(LENGTHS)
    assert_all_close(flat(placed(x.cuda(), lengths=lengths.cuda())), flat(plain(x, lengths=lengths)))
    packed = pack_padded_sequence(x, torch.tensor([7, 2, 3, 4, 1]), enforce_sorted=False)
    ours = placed(packed.to("cuda"))
    assert ours[0].data.device.type == "cpu" and ours[0].unsorted_indices.device.type == "cpu"
    assert_all_close(flat(ours), flat(plain(packed)))


@needs_cuda
def test_cuda_call_drops_placement():
    module = make("gru", layers=2).place_layers(["cpu", "cuda:0"], pipeline_chunks=2)
    module.float()
    assert module.pipeline_chunks == 2
    module.cuda()
    assert module.layer_devices is None and module.pipeline_chunks == 1
    assert all(p.is_cuda for p in module.parameters())
    module.place_layers(["cuda:0", "cpu"]).place_layers(None)  # undo gathers on layer 0's device
    assert all(p.is_cuda for p in module.parameters())


@needs_two_gpus
def test_two_gpus_pipelined():
    plain = make("lstm", layers=4)
    placed = copy.deepcopy(plain).place_layers(["cuda:0", "cuda:0", "cuda:1", "cuda:1"], pipeline_chunks=3)
    x = torch.randn(T, B, I, dtype=F64)
    hx = make_hx(plain)
    lengths = torch.tensor(LENGTHS)
    ours = run_and_grad(placed, x.to("cuda:1"), leaf(hx, "cuda:0"), lengths=lengths)
    theirs = run_and_grad(plain, x, hx, lengths=lengths)
    assert all(t.device == torch.device("cuda:1") for t in ours[0])
    assert_all_close(ours[0], theirs[0])
    assert_all_close(ours[1], theirs[1])
