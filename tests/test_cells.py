"""fused_rnn.RNNCell / LSTMCell / GRUCell / PeepholeLSTMCell against torch.nn cells and the reference."""
from __future__ import annotations


import pytest
import torch
from torch import nn

import fused_rnn
from fused_rnn import reference


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
BACKENDS = ["fused", "reference"]  # fused: the compiled ops (the default); reference: the oracle
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
TIGHT = dict(rtol=1e-9, atol=1e-10)
F64 = torch.float64
B, I, H = 3, 4, 5

# kind -> (fused_rnn class, torch class, extra constructor kwargs)
KINDS = {
    "rnn_tanh": (fused_rnn.RNNCell, nn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (fused_rnn.RNNCell, nn.RNNCell, {"nonlinearity": "relu"}),
    "lstm": (fused_rnn.LSTMCell, nn.LSTMCell, {}),
    "gru": (fused_rnn.GRUCell, nn.GRUCell, {}),
}


def as_list(state):
    return list(state) if isinstance(state, tuple) else [state]


def weighted_sum(tensors, seed: int = 123):
    gen = torch.Generator().manual_seed(seed)
    return sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)).sum() for t in tensors)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_hx", [True, False])
@pytest.mark.parametrize("kind", list(KINDS))
def test_cell_matches_torch(kind, with_hx, batched, bias, backend, device):
    ours_cls, torch_cls, extra = KINDS[kind]
    torch.manual_seed(0)
    ours = ours_cls(I, H, bias, **extra, backend=backend, device=device, dtype=F64)
    theirs = torch_cls(I, H, bias, **extra, device=device, dtype=F64)
    theirs.load_state_dict(ours.state_dict())
    batch = (B,) if batched else ()
    x = torch.randn(batch + (I,), dtype=F64, device=device)
    hx = None
    if with_hx:
        hx = tuple(torch.randn(batch + (H,), dtype=F64, device=device) for _ in range(2 if kind == "lstm" else 1))
        hx = hx if kind == "lstm" else hx[0]
    results = []
    for module in (ours, theirs):
        x_leaf = x.clone().requires_grad_(True)
        hx_leaf = None if hx is None else [h.clone().requires_grad_(True) for h in as_list(hx)]
        out = module(x_leaf, None if hx is None else (tuple(hx_leaf) if kind == "lstm" else hx_leaf[0]))
        weighted_sum(as_list(out)).backward()
        results.append((as_list(out), x_leaf, hx_leaf))
    (out, x_o, hx_o), (out_t, x_t, hx_t) = results
    assert len(out) == len(out_t)
    for a, b in zip(out, out_t):
        assert a.shape == b.shape == batch + (H,)
        torch.testing.assert_close(a, b, **TIGHT)
    torch.testing.assert_close(x_o.grad, x_t.grad, **TIGHT)
    for a, b in zip(hx_o or [], hx_t or []):
        torch.testing.assert_close(a.grad, b.grad, **TIGHT)
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs_params[name].grad, **TIGHT, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_cell_float32_matches_torch(kind, backend):
    ours_cls, torch_cls, extra = KINDS[kind]
    torch.manual_seed(0)
    ours = ours_cls(I, H, **extra, backend=backend)
    theirs = torch_cls(I, H, **extra)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(B, I)
    for a, b in zip(as_list(ours(x)), as_list(theirs(x))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", list(KINDS))
def test_cell_parameters_like_torch(kind):
    ours_cls, torch_cls, extra = KINDS[kind]
    for bias in (True, False):
        torch.manual_seed(3)
        theirs = torch_cls(I, H, bias, **extra)
        torch.manual_seed(3)
        ours = ours_cls(I, H, bias, **extra)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        for (n, p), (n_t, p_t) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
            assert n == n_t and torch.equal(p, p_t)  # same names, shapes, order and init
        assert repr(ours) == repr(theirs)
        theirs.load_state_dict(ours.state_dict())
        ours.load_state_dict(theirs.state_dict())


def test_cell_extras_repr():
    assert repr(fused_rnn.GRUCell(3, 4, reset_after=False)) == "GRUCell(3, 4, reset_after=False)"
    assert repr(fused_rnn.LSTMCell(3, 4, backend="reference")) == "LSTMCell(3, 4, backend='reference')"
    assert repr(fused_rnn.RNNCell(3, 4, False, "relu")) == repr(nn.RNNCell(3, 4, False, "relu"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["gru_reset_before", "peephole"])
def test_cell_against_reference(kind, bias, backend, device):
    torch.manual_seed(0)
    if kind == "peephole":
        cell = fused_rnn.PeepholeLSTMCell(I, H, bias, backend=backend, device=device, dtype=F64)
    else:
        cell = fused_rnn.GRUCell(I, H, bias, reset_after=False, backend=backend, device=device, dtype=F64)
    x = torch.randn(B, I, dtype=F64, device=device, requires_grad=True)
    hx = [torch.randn(B, H, dtype=F64, device=device, requires_grad=True) for _ in range(2 if kind == "peephole" else 1)]
    if kind == "peephole":
        got = cell(x, tuple(hx))
        expected = reference.lstm_cell(x, *hx, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh,
                                       cell.weight_ch)
    else:
        got = cell(x, hx[0])
        expected = reference.gru_cell(x, hx[0], cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh,
                                      reset_after=False)
    inputs = [x, *hx, *cell.parameters()]
    grads = torch.autograd.grad(weighted_sum(as_list(got)), inputs)
    grads_expected = torch.autograd.grad(weighted_sum(as_list(expected)), inputs)
    for a, b in zip(as_list(got) + list(grads), as_list(expected) + list(grads_expected), strict=True):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("backend", BACKENDS)
def test_peephole_cell(backend):
    torch.manual_seed(0)
    cell = fused_rnn.PeepholeLSTMCell(I, H, backend=backend, dtype=F64)
    assert list(cell.state_dict()) == ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ch"]
    assert cell.weight_ch.shape == (3 * H,) and 0 < cell.weight_ch.abs().max() <= 1 / H ** 0.5
    # Unbatched, hx None: zeros.
    x = torch.randn(I, dtype=F64)
    h, c = cell(x)
    h_b, c_b = cell(x.unsqueeze(0), (torch.zeros(1, H, dtype=F64),) * 2)
    assert h.shape == c.shape == (H,)
    torch.testing.assert_close(h, h_b[0], **TIGHT)
    torch.testing.assert_close(c, c_b[0], **TIGHT)
    # Zero peepholes: exactly torch.nn.LSTMCell.
    lstm_cell = nn.LSTMCell(I, H, dtype=F64)
    missing, _ = cell.load_state_dict(lstm_cell.state_dict(), strict=False)
    assert missing == ["weight_ch"]
    with torch.no_grad():
        cell.weight_ch.zero_()
    xb, hx = torch.randn(B, I, dtype=F64), (torch.randn(B, H, dtype=F64), torch.randn(B, H, dtype=F64))
    for a, b in zip(cell(xb, hx), lstm_cell(xb, hx)):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lstm", "gru", "peephole"])
def test_cell_steps_equal_module(kind, backend):
    """Stepping the cell over a sequence gives the single-layer module's outputs."""
    torch.manual_seed(0)
    cell_cls, module_cls = {"lstm": (fused_rnn.LSTMCell, fused_rnn.LSTM), "gru": (fused_rnn.GRUCell, fused_rnn.GRU),
                            "peephole": (fused_rnn.PeepholeLSTMCell, fused_rnn.PeepholeLSTM)}[kind]
    extra = {"reset_after": False} if kind == "gru" else {}
    cell = cell_cls(I, H, **extra, backend=backend, dtype=F64)
    module = module_cls(I, H, **extra, backend=backend, dtype=F64)
    module.load_state_dict({f"{n}_l0": p for n, p in cell.state_dict().items()})
    x = torch.randn(6, B, I, dtype=F64)
    state, outputs = None, []
    for t in range(x.size(0)):
        state = cell(x[t], state)
        outputs.append(as_list(state)[0])
    out, final = module(x)
    torch.testing.assert_close(out, torch.stack(outputs), **TIGHT)
    for a, b in zip(as_list(final), as_list(state)):
        torch.testing.assert_close(a[0], b, **TIGHT)


def _bad_cell_inputs():
    """case -> (call(cell), error type, message pattern); torch.nn's cells raise the same type."""
    x = torch.randn(B, I)

    def hx_for(cell, h):
        return (h, h) if isinstance(cell, (nn.LSTMCell, fused_rnn.LSTMCell)) else h

    return {
        "input_3d": (lambda c: c(torch.randn(1, B, I)), ValueError, "1D or 2D"),
        "input_size": (lambda c: c(torch.randn(B, I + 1)), RuntimeError, "input_size"),
        "hx_batch": (lambda c: c(x, hx_for(c, torch.zeros(B + 1, H))), RuntimeError, "batch size"),
        "hx_size": (lambda c: c(x, hx_for(c, torch.zeros(B, H + 1))), RuntimeError, "hidden_size"),
        "hx_3d": (lambda c: c(x, hx_for(c, torch.zeros(1, B, H))), ValueError, "1D or 2D"),
        "hx_1d_input_2d": (lambda c: c(x, hx_for(c, torch.zeros(H))), RuntimeError, "2D like the input"),
        "hx_dtype": (lambda c: c(x, hx_for(c, torch.zeros(B, H, dtype=torch.float64))), RuntimeError,
                     "dtype"),
    }


@pytest.mark.parametrize("case", list(_bad_cell_inputs()))
@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_cell_bad_input_raises(kind, case):
    ours_cls, torch_cls, extra = KINDS[kind]
    call, error, match = _bad_cell_inputs()[case]
    with pytest.raises(error, match=match):
        call(ours_cls(I, H, **extra, backend="reference"))
    with pytest.raises(error):
        call(torch_cls(I, H, **extra))


def test_cell_constructor_checks():
    with pytest.raises(ValueError, match="nonlinearity"):
        fused_rnn.RNNCell(I, H, nonlinearity="gelu")
    with pytest.raises(ValueError, match="backend"):
        fused_rnn.GRUCell(I, H, backend="cudnn")
