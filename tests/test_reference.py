"""The oracle itself is checked against torch.nn, against hand-written formulas where torch has no
such cell (peepholes, GRU reset_after=False), and with gradcheck."""
import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fused_rnn import reference

F64 = torch.float64
TIGHT = dict(rtol=1e-10, atol=1e-10)
T, B, I, H = 5, 4, 3, 6

# kind -> how the torch module is built; "lstm_proj" is an LSTM with proj_size 2.
KINDS = ["tanh", "relu", "lstm", "lstm_proj", "gru"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _module(kind, bidirectional=True):
    common = dict(bidirectional=bidirectional, dtype=F64)
    if kind in ("tanh", "relu"):
        return nn.RNN(I, H, nonlinearity=kind, **common)
    if kind.startswith("lstm"):
        return nn.LSTM(I, H, proj_size=2 if kind == "lstm_proj" else 0, **common)
    return nn.GRU(I, H, **common)


def _initial_state(module, batch):
    """Random (h0,) or (h0, c0), each (directions, batch, size), as torch.nn expects them."""
    dirs = 2 if module.bidirectional else 1
    out_size = getattr(module, "proj_size", 0) or module.hidden_size
    h0 = torch.randn(dirs, batch, out_size, dtype=F64)
    if isinstance(module, nn.LSTM):
        return h0, torch.randn(dirs, batch, module.hidden_size, dtype=F64)
    return (h0,)


def _run_torch(module, x, state, lengths=None):
    """torch.nn on padded x, through pack/pad when lengths are given. Returns (y, state tuple)."""
    hx = state if isinstance(module, nn.LSTM) else state[0]
    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    y, hn = module(inp, hx)
    if lengths is not None:
        y, _ = pad_packed_sequence(y, total_length=x.size(0))
    return y, (hn if isinstance(hn, tuple) else (hn,))


def _run_reference_direction(module, x, state, suffix, **kw):
    """One direction of ``module`` through reference, with that direction's parameters."""
    w = [getattr(module, f"{name}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    if isinstance(module, nn.LSTM):
        y, h, c = reference.lstm(x, *state, *w, w_hr=getattr(module, f"weight_hr{suffix}", None), **kw)
        return y, (h, c)
    if isinstance(module, nn.GRU):
        y, h = reference.gru(x, *state, *w, **kw)
    else:
        y, h = reference.rnn(x, *state, *w, nonlinearity=module.nonlinearity, **kw)
    return y, (h,)


def _run_reference(module, x, state, lengths=None):
    """Both directions through reference, laid out like a bidirectional torch module's result."""
    fwd = _run_reference_direction(module, x, [s[0] for s in state], "_l0", lengths=lengths)
    rev = _run_reference_direction(module, x, [s[1] for s in state], "_l0_reverse",
                                   lengths=lengths, reverse=True)
    y = torch.cat([fwd[0], rev[0]], dim=-1)
    return y, tuple(torch.stack([f, r]) for f, r in zip(fwd[1], rev[1]))


def _assert_same(actual, expected, **tol):
    (y_a, s_a), (y_e, s_e) = actual, expected
    torch.testing.assert_close(y_a, y_e, **tol)
    assert len(s_a) == len(s_e)
    for a, e in zip(s_a, s_e):
        torch.testing.assert_close(a, e, **tol)


# ---------------------------------------------------------------- sequences vs torch.nn

@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_sequence_matches_torch_both_directions(kind):
    module = _module(kind)
    x = torch.randn(T, B, I, dtype=F64)
    state = _initial_state(module, B)
    _assert_same(_run_reference(module, x, state), _run_torch(module, x, state), **TIGHT)


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_lengths_match_packed_sequence(kind):
    module = _module(kind)
    x = torch.randn(T, B, I, dtype=F64)
    state = _initial_state(module, B)
    lengths = torch.tensor([2, T, 1, 4])  # unsorted, one full length
    _assert_same(_run_reference(module, x, state, lengths), _run_torch(module, x, state, lengths), **TIGHT)


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_zero_lengths_pass_the_state_through(kind):
    # pack_padded_sequence refuses length 0, so torch only checks the non-empty rows.
    module = _module(kind)
    x = torch.randn(T, B, I, dtype=F64)
    state = _initial_state(module, B)
    lengths = torch.tensor([3, 0, T, 0])
    y, final = _run_reference(module, x, state, lengths)

    rows = lengths > 0
    expected = _run_torch(module, x[:, rows], tuple(s[:, rows] for s in state), lengths[rows])
    _assert_same((y[:, rows], tuple(f[:, rows] for f in final)), expected, **TIGHT)
    assert torch.all(y[:, ~rows] == 0)
    for f, s in zip(final, state):
        assert torch.equal(f[:, ~rows], s[:, ~rows])


@torch.no_grad()
def test_lengths_padding_is_ignored_and_any_integer_form_works():
    module = _module("lstm")
    x = torch.randn(T, B, I, dtype=F64)
    state = _initial_state(module, B)
    lengths = [3, 1, T, 0]
    base = _run_reference(module, x, state, torch.tensor(lengths))
    noisy = x.clone()
    for b, n in enumerate(lengths):
        noisy[n:, b] = 1e3  # garbage in the padding must not leak anywhere
    for form in (lengths, torch.tensor(lengths, dtype=torch.int32)):
        _assert_same(_run_reference(module, noisy, state, form), base, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [[1, 2, 3, T + 1], [-1, 0, 0, 0], [1, 2, 3], [1.0, 2.0, 3.0, 4.0]])
def test_bad_lengths_raise(bad):
    x, h0 = torch.randn(T, B, I, dtype=F64), torch.zeros(B, H, dtype=F64)
    w_ih, w_hh = torch.randn(H, I, dtype=F64), torch.randn(H, H, dtype=F64)
    with pytest.raises(ValueError):
        reference.rnn(x, h0, w_ih, w_hh, lengths=torch.tensor(bad))


def test_empty_sequence_returns_initial_state():
    h0, c0 = torch.randn(B, H, dtype=F64), torch.randn(B, H, dtype=F64)
    w_ih, w_hh = torch.randn(4 * H, I, dtype=F64), torch.randn(4 * H, H, dtype=F64)
    y, h_n, c_n = reference.lstm(torch.empty(0, B, I, dtype=F64), h0, c0, w_ih, w_hh)
    assert y.shape == (0, B, H) and y.dtype == F64
    assert torch.equal(h_n, h0) and torch.equal(c_n, c0)


def test_bad_nonlinearity_raises():
    x, h0 = torch.randn(T, B, I, dtype=F64), torch.zeros(B, H, dtype=F64)
    with pytest.raises(ValueError, match="nonlinearity"):
        reference.rnn(x, h0, torch.randn(H, I, dtype=F64), torch.randn(H, H, dtype=F64),
                      nonlinearity="sigmoid")


# ---------------------------------------------------------------- cells vs torch.nn

@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@torch.no_grad()
def test_rnn_cell_matches_torch(nonlinearity):
    cell = nn.RNNCell(I, H, nonlinearity=nonlinearity, dtype=F64)
    x, h = torch.randn(B, I, dtype=F64), torch.randn(B, H, dtype=F64)
    ours = reference.rnn_cell(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, nonlinearity)
    torch.testing.assert_close(ours, cell(x, h), **TIGHT)


@torch.no_grad()
def test_lstm_cell_matches_torch():
    cell = nn.LSTMCell(I, H, dtype=F64)
    x, h, c = torch.randn(B, I, dtype=F64), torch.randn(B, H, dtype=F64), torch.randn(B, H, dtype=F64)
    ours = reference.lstm_cell(x, h, c, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    expected = cell(x, (h, c))
    torch.testing.assert_close(ours[0], expected[0], **TIGHT)
    torch.testing.assert_close(ours[1], expected[1], **TIGHT)


@torch.no_grad()
def test_gru_cell_matches_torch():
    cell = nn.GRUCell(I, H, dtype=F64)
    x, h = torch.randn(B, I, dtype=F64), torch.randn(B, H, dtype=F64)
    ours = reference.gru_cell(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    torch.testing.assert_close(ours, cell(x, h), **TIGHT)


def test_cells_without_biases_match_zero_biases():
    x, h, c = torch.randn(B, I, dtype=F64), torch.randn(B, H, dtype=F64), torch.randn(B, H, dtype=F64)
    for g, fn, extra in ((1, reference.rnn_cell, ()), (3, reference.gru_cell, ()),
                         (4, reference.lstm_cell, (c,))):
        w_ih, w_hh = torch.randn(g * H, I, dtype=F64), torch.randn(g * H, H, dtype=F64)
        zero = torch.zeros(g * H, dtype=F64)
        args = (x, h, *extra, w_ih, w_hh)
        torch.testing.assert_close(fn(*args), fn(*args, zero, zero), rtol=0, atol=0)


# ---------------------------------------------------------------- cells torch does not have

def _sig(v):
    return 1.0 / (1.0 + math.exp(-v))


def test_peephole_lstm_with_zero_peepholes_is_lstm():
    x = torch.randn(T, B, I, dtype=F64)
    h0, c0 = torch.randn(B, 2, dtype=F64), torch.randn(B, H, dtype=F64)
    w_ih, w_hh = torch.randn(4 * H, I, dtype=F64), torch.randn(4 * H, 2, dtype=F64)
    w_hr = torch.randn(2, H, dtype=F64)
    b_ih, b_hh = torch.randn(4 * H, dtype=F64), torch.randn(4 * H, dtype=F64)
    kw = dict(w_hr=w_hr, lengths=torch.tensor([T, 2, 0, 4]), reverse=True)
    plain = reference.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, **kw)
    peep = reference.peephole_lstm(x, h0, c0, w_ih, w_hh, torch.zeros(3 * H, dtype=F64), b_ih, b_hh, **kw)
    for a, e in zip(peep, plain):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_peephole_lstm_one_step_by_hand():
    # One unit, one input, written out in scalars: the peepholes of i and f see c, o sees c'.
    x, h, c = 0.7, -0.3, 0.5
    a = {"i": 0.1, "f": -0.2, "g": 0.3, "o": 0.4}        # w_ih; w_hh is 0.5 * w_ih, biases 0
    p = {"i": 0.9, "f": -1.1, "o": 1.3}
    pre = {k: v * x + 0.5 * v * h for k, v in a.items()}
    i, f = _sig(pre["i"] + p["i"] * c), _sig(pre["f"] + p["f"] * c)
    c_new = f * c + i * math.tanh(pre["g"])
    h_new = _sig(pre["o"] + p["o"] * c_new) * math.tanh(c_new)

    w_ih = torch.tensor([[a[k]] for k in "ifgo"], dtype=F64)
    w_ch = torch.tensor([p[k] for k in "ifo"], dtype=F64)
    x_seq = torch.tensor([[[x]]], dtype=F64)  # (T=1, B=1, I=1)
    h0, c0 = torch.tensor([[h]], dtype=F64), torch.tensor([[c]], dtype=F64)
    y, h_n, c_n = reference.peephole_lstm(x_seq, h0, c0, w_ih, 0.5 * w_ih, w_ch)
    assert c_n.item() == pytest.approx(c_new, abs=1e-14)
    assert h_n.item() == pytest.approx(h_new, abs=1e-14)
    assert y.item() == h_n.item()


def test_gru_reset_before_one_step_by_hand():
    # One unit: n = tanh(W_in x + b_in + W_hn (r h) + b_hn), against reset_after's r (W_hn h + b_hn).
    x, h = 0.8, -0.6
    w_ir, w_iz, w_in = 0.3, -0.5, 0.7
    w_hr, w_hz, w_hn = 0.2, 0.4, -0.9
    b_ir, b_iz, b_in, b_hr, b_hz, b_hn = 0.1, -0.1, 0.2, 0.3, 0.05, 0.6
    r = _sig(w_ir * x + b_ir + w_hr * h + b_hr)
    z = _sig(w_iz * x + b_iz + w_hz * h + b_hz)
    n_before = math.tanh(w_in * x + b_in + w_hn * (r * h) + b_hn)
    n_after = math.tanh(w_in * x + b_in + r * (w_hn * h + b_hn))

    args = [torch.tensor([[x]], dtype=F64), torch.tensor([[h]], dtype=F64),
            torch.tensor([[w_ir], [w_iz], [w_in]], dtype=F64),
            torch.tensor([[w_hr], [w_hz], [w_hn]], dtype=F64),
            torch.tensor([b_ir, b_iz, b_in], dtype=F64), torch.tensor([b_hr, b_hz, b_hn], dtype=F64)]
    before = reference.gru_cell(*args, reset_after=False).item()
    after = reference.gru_cell(*args, reset_after=True).item()
    assert before == pytest.approx((1 - z) * n_before + z * h, abs=1e-14)
    assert after == pytest.approx((1 - z) * n_after + z * h, abs=1e-14)
    assert abs(before - after) > 1e-3  # the two variants are really different cells

    _, h_n = reference.gru(args[0][None], *args[1:], reset_after=False)
    assert h_n.item() == before


# ---------------------------------------------------------------- gradients

def _params(*shapes):
    return [torch.randn(*s, dtype=F64, requires_grad=True) for s in shapes]


def _seq_kw(variant):
    return {"plain": {}, "reverse": dict(reverse=True),
            "lengths": dict(lengths=torch.tensor([3, 0, 2])),
            "lengths_reverse": dict(lengths=torch.tensor([3, 0, 2]), reverse=True)}[variant]


VARIANTS = ["plain", "reverse", "lengths", "lengths_reverse"]
GT, GB, GI, GH, GP = 3, 3, 2, 2, 1  # tiny shapes for gradcheck: steps, batch, input, hidden, proj


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_gradcheck_rnn(variant, nonlinearity):
    args = _params((GT, GB, GI), (GB, GH), (GH, GI), (GH, GH), (GH,), (GH,))
    assert torch.autograd.gradcheck(
        lambda *a: reference.rnn(*a, nonlinearity=nonlinearity, **_seq_kw(variant)), args)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reset_after", [True, False])
def test_gradcheck_gru(variant, reset_after):
    args = _params((GT, GB, GI), (GB, GH), (3 * GH, GI), (3 * GH, GH), (3 * GH,), (3 * GH,))
    assert torch.autograd.gradcheck(
        lambda *a: reference.gru(*a, reset_after=reset_after, **_seq_kw(variant)), args)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_lstm_with_projection(variant):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = _params(
        (GT, GB, GI), (GB, GP), (GB, GH), (4 * GH, GI), (4 * GH, GP), (4 * GH,), (4 * GH,), (GP, GH))
    assert torch.autograd.gradcheck(
        lambda *a: reference.lstm(*a[:-1], w_hr=a[-1], **_seq_kw(variant)),
        (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr))


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_peephole_lstm(variant):
    args = _params((GT, GB, GI), (GB, GH), (GB, GH), (4 * GH, GI), (4 * GH, GH), (3 * GH,),
                   (4 * GH,), (4 * GH,))
    assert torch.autograd.gradcheck(lambda *a: reference.peephole_lstm(*a, **_seq_kw(variant)), args)


def test_gradcheck_cells():
    x, h, c = _params((GB, GI), (GB, GH), (GB, GH))
    assert torch.autograd.gradcheck(reference.rnn_cell, (x, h, *_params((GH, GI), (GH, GH), (GH,), (GH,))))
    gru_params = _params((3 * GH, GI), (3 * GH, GH), (3 * GH,), (3 * GH,))
    assert torch.autograd.gradcheck(lambda *a: reference.gru_cell(*a, reset_after=False), (x, h, *gru_params))
    lstm_params = _params((4 * GH, GI), (4 * GH, GH), (4 * GH,), (4 * GH,), (3 * GH,))  # last: w_ch
    assert torch.autograd.gradcheck(reference.lstm_cell, (x, h, c, *lstm_params))


# ---------------------------------------------------------------- half types

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_lstm_keeps_cell_state_in_float32(dtype):
    # f = i = 1 and g = 2^-13 each step: c grows 1 -> 1 + 128 * 2^-13 = 1 + 2^-6. Each increment
    # is below half an ulp of 1 in both half types, so a cell state stored in the half type
    # would stay at 1 and miss the result by 2^-6.
    steps = 128
    w_ih = torch.tensor([[0.0], [0.0], [2.0 ** -13], [0.0]], dtype=dtype)
    b_ih = torch.tensor([20.0, 20.0, 0.0, 0.0], dtype=dtype)
    x, h0 = torch.ones(steps, 1, 1, dtype=dtype), torch.zeros(1, 1, dtype=dtype)
    c0 = torch.ones(1, 1, dtype=dtype)
    args = [x, h0, c0, w_ih, torch.zeros(4, 1, dtype=dtype), b_ih]  # w_hh = 0
    y, h_n, c_n = reference.lstm(*args)
    _, h_ref, c_ref = reference.lstm(*[a.to(F64) for a in args])
    assert y.dtype == h_n.dtype == c_n.dtype == dtype
    assert c_ref.item() == pytest.approx(1 + 2.0 ** -6, abs=1e-4)
    assert c_n.item() == pytest.approx(c_ref.item(), abs=2.0 ** -10)
    assert h_n.item() == pytest.approx(h_ref.item(), abs=2.0 ** -8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["tanh", "lstm_proj", "gru"])
@torch.no_grad()
def test_half_types_close_to_float64(kind, dtype):
    module = _module(kind)
    x = torch.randn(T, B, I, dtype=F64)
    state = _initial_state(module, B)
    lengths = torch.tensor([2, T, 0, 4])
    x, state = x.to(dtype), tuple(s.to(dtype) for s in state)
    y, final = _run_reference(module.to(dtype), x, state, lengths)
    # float64 on the very same (rounded) values: only the arithmetic differs.
    expected = _run_reference(copy.deepcopy(module).to(F64), x.to(F64), tuple(s.to(F64) for s in state),
                              lengths)
    assert y.dtype == dtype and all(f.dtype == dtype for f in final)
    tol = dict(rtol=0, atol=3e-2 if dtype == torch.bfloat16 else 5e-3)
    _assert_same((y.to(F64), tuple(f.to(F64) for f in final)), expected, **tol)


# ---------------------------------------------------------------- devices

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@torch.no_grad()
def test_cuda_matches_cpu_with_lengths_on_cpu():
    module = _module("lstm_proj")
    x = torch.randn(T, B, I, dtype=F64)
    state = _initial_state(module, B)
    lengths = torch.tensor([2, T, 0, 4])  # stays on the CPU: the oracle accepts it on any device
    expected = _run_reference(module, x, state, lengths)
    y, final = _run_reference(module.cuda(), x.cuda(), tuple(s.cuda() for s in state), lengths)
    _assert_same((y.cpu(), tuple(f.cpu() for f in final)), expected, **TIGHT)
