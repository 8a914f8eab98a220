"""Autocast: inside a torch.autocast region the recurrence runs in the region's dtype whatever the
parameters' dtype (weights cast per call, as torch casts its own RNNs), outputs come back in that
dtype, gradients reach the float32 parameters; outside a region nothing changes.

Oracles: the same fused module run on explicitly cast copies (bf16 inputs and weights, no
autocast), which the autocast path must equal exactly, and the float64 reference, which it must
approach within the autocast dtype's rounding.
"""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from cases import CELLS, make_case

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.bfloat16, torch.float16]


def make_module(kind: str, **kwargs) -> nn.Module:
    size, hidden = 6, 16
    if kind == "rnn_tanh":
        return fused_rnn.RNN(size, hidden, **kwargs)
    if kind == "rnn_relu":
        return fused_rnn.RNN(size, hidden, nonlinearity="relu", **kwargs)
    if kind == "lstm":
        return fused_rnn.LSTM(size, hidden, **kwargs)
    if kind == "lstm_proj":
        return fused_rnn.LSTM(size, hidden, proj_size=5, **kwargs)
    if kind == "peephole_lstm":
        return fused_rnn.PeepholeLSTM(size, hidden, **kwargs)
    if kind == "gru":
        return fused_rnn.GRU(size, hidden, **kwargs)
    return fused_rnn.GRU(size, hidden, reset_after=False, **kwargs)


def initial_state(module, batch, device):
    size = module.proj_size or module.hidden_size
    layers = module.num_layers * (2 if module.bidirectional else 1)
    h0 = torch.randn(layers, batch, size, device=device)
    if isinstance(module, fused_rnn.LSTM):
        return h0, torch.randn(layers, batch, module.hidden_size, device=device)
    return h0


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("inputs", ["plain", "lengths", "packed", "hx"])
def test_module_under_autocast_equals_explicitly_cast_module(device, kind, inputs):
    """The autocast region gives exactly what the module gives on cast copies, in that dtype;
    gradients reach the float32 parameters, equal to the cast copy's (rounded back)."""
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    torch.manual_seed(0)
    module = make_module(kind, num_layers=2, bidirectional=True).to(device)
    cast = copy.deepcopy(module).to(dtype)
    steps, batch = 7, 3
    x = torch.randn(steps, batch, 6, device=device)
    lengths = torch.tensor([7, 4, 1])
    hx = initial_state(module, batch, device) if inputs == "hx" else None

    def call(m, x, hx):
        if inputs == "packed":
            out, state = m(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
            return (out.data,) + as_tuple(state)
        out, state = m(x, hx, lengths=lengths if inputs == "lengths" else None)
        return (out,) + as_tuple(state)

    with torch.autocast(device, dtype=dtype):
        got = call(module, x, hx)
    cast_hx = None if hx is None else tuple(s.to(dtype) for s in as_tuple(hx))
    if cast_hx is not None and len(cast_hx) == 1:
        cast_hx = cast_hx[0]
    expected = call(cast, x.to(dtype), cast_hx)
    for g, e in zip(got, expected):
        assert g.dtype == dtype
        torch.testing.assert_close(g, e, rtol=0, atol=0)

    sum(o.float().sum() for o in got).backward()
    sum(o.float().sum() for o in expected).backward()
    for (name, p), q in zip(module.named_parameters(), cast.parameters()):
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        torch.testing.assert_close(p.grad, q.grad.float(), rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_functional_under_autocast_is_close_to_float64(device, dtype, cell):
    """Float32 inputs and weights under autocast: results in the autocast dtype, within its
    rounding of the float64 reference; the reference backend casts the same way."""
    torch.manual_seed(1)
    case = make_case(cell, 9, 4, 5, 16, dtype=torch.float32, device=device,
                     lengths=torch.tensor([9, 3, 6, 0]), reverse=True)
    exact = case.converted(torch.float64).run("reference")
    with torch.autocast(device, dtype=dtype):
        fused = case.run("fused")
        ref = case.run("reference")
    tolerance = 4e-2 if dtype == torch.bfloat16 else 5e-3
    for f, r, e in zip(fused, ref, exact):
        assert f.dtype == dtype and r.dtype == dtype
        torch.testing.assert_close(f.double(), e, rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(r.double(), e, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "peephole_lstm"])
def test_linear_then_rnn_under_autocast(device, kind):
    """The usual model: a Linear (whose output autocast makes bf16) feeding the recurrent
    module, on any shape, trains with float32 parameters."""
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 6), make_module(kind)).to(device)
    for steps, batch in [(7, 3), (50, 32)]:
        x = torch.randn(steps, batch, 4, device=device)
        with torch.autocast(device, dtype=dtype):
            out, _ = model(x)
        assert out.dtype == dtype
        out.float().pow(2).mean().backward()
        for name, p in model.named_parameters():
            assert p.dtype == torch.float32 and p.grad.dtype == torch.float32, name
            assert torch.isfinite(p.grad).all(), name
        model.zero_grad()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell_type", [fused_rnn.RNNCell, fused_rnn.GRUCell, fused_rnn.LSTMCell,
                                       fused_rnn.PeepholeLSTMCell])
@pytest.mark.parametrize("with_hx", [False, True])
def test_cells_under_autocast(device, cell_type, with_hx):
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    torch.manual_seed(3)
    linear, cell = nn.Linear(4, 6).to(device), cell_type(6, 8).to(device)
    cast = copy.deepcopy(cell).to(dtype)
    x = torch.randn(5, 4, device=device)
    hx = None
    if with_hx:
        h = torch.randn(5, 8, device=device)
        hx = (h, torch.randn(5, 8, device=device)) if "LSTM" in cell_type.__name__ else h
    with torch.autocast(device, dtype=dtype):
        features = linear(x)
        got = as_tuple(cell(features, hx))
    cast_hx = None if hx is None else tuple(s.to(dtype) for s in as_tuple(hx))
    if cast_hx is not None and len(cast_hx) == 1:
        cast_hx = cast_hx[0]
    expected = as_tuple(cast(features.detach().to(dtype), cast_hx))
    for g, e in zip(got, expected):
        assert g.dtype == dtype
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    got[0].float().sum().backward()
    assert cell.weight_ih.grad.dtype == torch.float32 and linear.weight.grad is not None


def test_outside_autocast_nothing_changes():
    """No region: float32 stays float32, and mixed dtypes are still refused."""
    module = fused_rnn.LSTM(6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        out, (h, c) = module(torch.randn(4, 2, 6))
    assert out.dtype == h.dtype == c.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        module(torch.randn(4, 2, 6, dtype=torch.bfloat16))


def test_autocast_under_torch_compile():
    """The casts are ops under the Autocast key, so a compiled graph has them too."""
    torch.manual_seed(4)
    module = fused_rnn.GRU(6, 8)

    def run(x, lengths):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return module(x, lengths=lengths)[0]

    compiled = torch.compile(run, backend="eager", fullgraph=True, dynamic=True)
    x, lengths = torch.randn(5, 3, 6), torch.tensor([5, 2, 4])
    got = compiled(x, lengths)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, run(x, lengths), rtol=0, atol=0)
