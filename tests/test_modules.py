"""fused_rnn.RNN / LSTM / GRU / PeepholeLSTM against torch.nn with identical weights.

Numbers are compared in float64 (differences are rounding only). The big grid samples
num_layers x bidirectional x batch_first x proj_size x input kind x hx so that every pair of
values meets; each case checks outputs, final states and every gradient (parameters, input, hx).
"""
from __future__ import annotations

import copy
import itertools
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fused_rnn
from fused_rnn import reference


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
BACKENDS = ["fused", "reference"]  # fused: the compiled ops (the default); reference: the oracle
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
TIGHT = dict(rtol=1e-9, atol=1e-10)
F64 = torch.float64

# kind -> (fused_rnn class, torch class, extra constructor kwargs)
KINDS = {
    "rnn_tanh": (fused_rnn.RNN, nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (fused_rnn.RNN, nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (fused_rnn.LSTM, nn.LSTM, {}),
    "gru": (fused_rnn.GRU, nn.GRU, {}),
}
T, B, I, H, P = 5, 4, 3, 5, 2
LENGTHS_UNSORTED = [2, 5, 1, 4]  # includes 1 and T
LENGTHS_SORTED = [5, 4, 2, 1]


def flat_tensors(*items):
    """Outputs/states (tensors, tuples, PackedSequences) -> list of tensors."""
    out = []
    for item in items:
        if isinstance(item, PackedSequence):
            out.append(item.data)
        elif isinstance(item, (tuple, list)):
            out.extend(flat_tensors(*item))
        else:
            out.append(item)
    return out


def weighted_sum(tensors, seed: int = 123):
    """A scalar loss with a fixed random weight per element, so every output gets a gradient."""
    gen = torch.Generator().manual_seed(seed)
    return sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)).sum() for t in tensors)


def assert_grads_close(ours: nn.Module, theirs: nn.Module, **tol) -> None:
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        torch.testing.assert_close(p.grad, theirs_params[name].grad, **tol, msg=lambda m: f"grad of {name}: {m}")


def make_pair(kind, backend, device, dtype=F64, **kwargs):
    """(fused_rnn module, torch.nn module) with identical weights."""
    ours_cls, torch_cls, extra = KINDS[kind]
    ours = ours_cls(I, H, **extra, **kwargs, backend=backend, device=device, dtype=dtype)
    theirs = torch_cls(I, H, **extra, **kwargs, device=device, dtype=dtype)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def make_hx(module, batch, device, dtype=F64, unbatched=False):
    d = 2 if module.bidirectional else 1
    shape = (module.num_layers * d,) + (() if unbatched else (batch,))
    h = torch.randn(shape + (module.proj_size or module.hidden_size,), dtype=dtype, device=device)
    if isinstance(module, (nn.LSTM, fused_rnn.LSTM)):
        return h, torch.randn(shape + (module.hidden_size,), dtype=dtype, device=device)
    return h


def leaf_copy(obj):
    if obj is None:
        return None
    if isinstance(obj, tuple):
        return tuple(leaf_copy(o) for o in obj)
    return obj.detach().clone().requires_grad_(True)


# --------------------------------------------------------------------------------------------
# The grid against torch.nn
# --------------------------------------------------------------------------------------------

def _grid():
    cases = []
    for kind in KINDS:
        product = itertools.product(["plain", "padded", "packed_sorted", "packed_unsorted"],
                                    [True, False], [False, True], [1, 2, 3])
        for i, (input_kind, with_hx, bidirectional, layers) in enumerate(product):
            if kind == "rnn_relu" and i % 3:  # the Elman code path is covered by rnn_tanh
                continue
            batch_first = i % 2 == 1
            proj = P if kind == "lstm" and i % 4 in (1, 2) else 0  # meets every batch_first
            bias = i % 5 != 0
            case_id = (f"{kind}-{input_kind}-L{layers}-{'bi' if bidirectional else 'uni'}-"
                       f"{'bf' if batch_first else 'tf'}-P{proj}-{'hx' if with_hx else 'nohx'}"
                       f"{'' if bias else '-nobias'}")
            cases.append(pytest.param(kind, input_kind, layers, bidirectional, batch_first, proj, bias,
                                      with_hx, id=case_id))
    return cases


def _run(module, x, hx, input_kind, lengths, batch_first, is_ours):
    steps = x.size(1) if batch_first else x.size(0)
    if input_kind == "plain":
        return module(x, hx)
    if input_kind == "padded":
        if is_ours:
            return module(x, hx, lengths=lengths)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=batch_first, enforce_sorted=False)
        out, state = module(packed, hx)
        return pad_packed_sequence(out, batch_first=batch_first, total_length=steps)[0], state
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=batch_first,
                                  enforce_sorted=input_kind == "packed_sorted")
    return module(packed, hx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,input_kind,layers,bidirectional,batch_first,proj,bias,with_hx", _grid())
def test_matches_torch(kind, input_kind, layers, bidirectional, batch_first, proj, bias, with_hx,
                       backend, device):
    torch.manual_seed(0)
    kwargs = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    if proj:
        kwargs["proj_size"] = proj
    ours, theirs = make_pair(kind, backend, device, **kwargs)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=F64, device=device)
    hx = make_hx(ours, B, device) if with_hx else None
    lengths = torch.tensor(LENGTHS_SORTED if input_kind == "packed_sorted" else LENGTHS_UNSORTED)
    if device == "cuda" and batch_first:
        lengths = lengths.to(device)  # lengths on the input's device are accepted too

    results = {}
    for module, is_ours in ((ours, True), (theirs, False)):
        x_leaf, hx_leaf = leaf_copy(x), leaf_copy(hx)
        out, state = _run(module, x_leaf, hx_leaf, input_kind, lengths, batch_first, is_ours)
        weighted_sum(flat_tensors(out, state)).backward()
        results[is_ours] = (out, state, x_leaf, hx_leaf)

    (out, state, x_ours, hx_ours), (out_t, state_t, x_t, hx_t) = results[True], results[False]
    assert type(out) is type(out_t) and type(state) is type(state_t)
    if isinstance(out_t, PackedSequence):
        assert torch.equal(out.batch_sizes, out_t.batch_sizes)
        for a, b in ((out.sorted_indices, out_t.sorted_indices), (out.unsorted_indices, out_t.unsorted_indices)):
            assert (a is None and b is None) or torch.equal(a, b)
    for a, b in zip(flat_tensors(out, state), flat_tensors(out_t, state_t), strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **TIGHT)
    torch.testing.assert_close(x_ours.grad, x_t.grad, **TIGHT)
    if with_hx:
        for a, b in zip(flat_tensors(hx_ours), flat_tensors(hx_t), strict=True):
            torch.testing.assert_close(a.grad, b.grad, **TIGHT)
    assert_grads_close(ours, theirs, **TIGHT)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_float32_matches_torch(kind, backend, device):
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, backend, device, dtype=torch.float32, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, device=device)
    lengths = torch.tensor(LENGTHS_UNSORTED)
    out, state = ours(x, lengths=lengths)
    theirs = theirs.cpu()  # torch on the CPU: cuDNN may use TF32 in float32
    packed_out, state_t = theirs(pack_padded_sequence(x.cpu(), lengths, enforce_sorted=False))
    out_t = pad_packed_sequence(packed_out, total_length=T)[0]
    for a, b in zip(flat_tensors(out, state), flat_tensors(out_t, state_t), strict=True):
        torch.testing.assert_close(a.cpu(), b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("with_hx", [True, False])
def test_unbatched_matches_torch(kind, with_hx, backend, device):
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, backend, device, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(T, I, dtype=F64, device=device)
    hx = make_hx(ours, None, device, unbatched=True) if with_hx else None
    out, state = ours(x, hx)
    out_t, state_t = theirs(x, hx)
    assert out.shape == (T, 2 * H)
    for a, b in zip(flat_tensors(out, state), flat_tensors(out_t, state_t), strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **TIGHT)
    # Unbatched input with a length: the same as the batch of one with that length.
    out_len, state_len = ours(x, hx, lengths=3)
    hx_b = None if hx is None else tuple(h.unsqueeze(1) for h in flat_tensors(hx))
    hx_b = hx_b if hx_b is None or kind == "lstm" else hx_b[0]
    out_b, state_b = ours(x.unsqueeze(0), hx_b, lengths=torch.tensor([3]))
    torch.testing.assert_close(out_len, out_b.squeeze(0), **TIGHT)
    for a, b in zip(flat_tensors(state_len), flat_tensors(state_b), strict=True):
        torch.testing.assert_close(a, b.squeeze(1), **TIGHT)
    assert torch.all(out_len[3:] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_zero_lengths_pass_the_state_through(kind, backend):
    """lengths may contain 0 (torch's packing cannot): zero output, h_n == h_0, others unaffected."""
    torch.manual_seed(0)
    ours, theirs = make_pair(kind, backend, "cpu", num_layers=2, bidirectional=True)
    x = torch.randn(T, 3, I, dtype=F64)
    hx = make_hx(ours, 3, "cpu")
    out, state = ours(x, hx, lengths=torch.tensor([4, 0, 2]))
    assert torch.all(out[:, 1] == 0)
    for s, s0 in zip(flat_tensors(state), flat_tensors(hx), strict=True):
        torch.testing.assert_close(s[:, 1], s0[:, 1], rtol=0, atol=0)
    # The others as if the empty sequence were not there.
    keep = torch.tensor([0, 2])
    hx_keep = tuple(h[:, keep] for h in flat_tensors(hx))
    out_t, state_t = theirs(pack_padded_sequence(x[:, keep], torch.tensor([4, 2])),
                            hx_keep if kind == "lstm" else hx_keep[0])
    torch.testing.assert_close(out[:, keep], pad_packed_sequence(out_t, total_length=T)[0], **TIGHT)
    for a, b in zip(flat_tensors(state), flat_tensors(state_t), strict=True):
        torch.testing.assert_close(a[:, keep], b, **TIGHT)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru", "peephole"])
def test_one_op_call_per_layer_and_direction(kind, device):
    """No per-step work outside the compiled ops: per layer and direction exactly one sequence
    op and one input projection (fused_rnn::linear)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class CountFusedOps(TorchDispatchMode):
        calls = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "fused_rnn":
                name = func.__name__.split(".")[0]
                CountFusedOps.calls["linear" if name == "linear" else "sequence"] += 1
            return func(*args, **(kwargs or {}))

    module = (fused_rnn.PeepholeLSTM(I, H, 3, bidirectional=True, device=device) if kind == "peephole"
              else make_pair(kind, "fused", device, dtype=torch.float32, num_layers=3, bidirectional=True)[0])
    x = torch.randn(T, B, I, device=device)
    with CountFusedOps():
        module(x, lengths=torch.tensor(LENGTHS_UNSORTED))
    assert CountFusedOps.calls == {"sequence": 3 * 2, "linear": 3 * 2}


# --------------------------------------------------------------------------------------------
# Parameters, state_dict, repr: exactly torch's
# --------------------------------------------------------------------------------------------

STRUCTURES = [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=3, bias=False, batch_first=True, dropout=0.25),
]


@pytest.mark.parametrize("kwargs", STRUCTURES + [dict(num_layers=2, proj_size=2, bidirectional=True)],
                         ids=["default", "bi", "nobias", "proj"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_parameters_and_state_dict_like_torch(kind, kwargs):
    if "proj_size" in kwargs and kind != "lstm":
        pytest.skip("proj_size is LSTM only")
    ours_cls, torch_cls, extra = KINDS[kind]
    torch.manual_seed(7)
    theirs = torch_cls(I, H, **extra, **kwargs)
    torch.manual_seed(7)
    ours = ours_cls(I, H, **extra, **kwargs)
    # Same names, order, shapes and, from the same seed, the same initial values.
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (n, p), (n_t, p_t) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        assert n == n_t and p.shape == p_t.shape and torch.equal(p, p_t)
        assert p.abs().max() <= 1 / H ** 0.5
    assert [[tuple(w.shape) for w in ws] for ws in ours.all_weights] == \
           [[tuple(w.shape) for w in ws] for ws in theirs.all_weights]
    assert ours._all_weights == theirs._all_weights
    assert repr(ours) == repr(theirs)
    # state_dicts load both ways (strict).
    other = torch_cls(I, H, **extra, **kwargs)
    other.load_state_dict(ours.state_dict())
    fresh = ours_cls(I, H, **extra, **kwargs)
    fresh.load_state_dict(theirs.state_dict())
    for p, q in zip(other.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)
    # flatten_parameters is a no-op; reset_parameters re-draws every weight within the bound.
    assert ours.flatten_parameters() is None
    before = [p.detach().clone() for p in ours.parameters()]
    ours.reset_parameters()
    assert all(not torch.equal(a, b) for a, b in zip(before, ours.parameters()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_utilities(backend):
    """.to(), deepcopy, pickle, functional_call keep working (weights are used by name)."""
    torch.manual_seed(0)
    model = fused_rnn.LSTM(I, H, 2, bidirectional=True, proj_size=2, backend=backend).double()
    assert all(p.dtype == F64 for p in model.parameters())
    x = torch.randn(T, B, I, dtype=F64)
    out, _ = model(x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(clone(x)[0], out)
    zeroed = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    out_zero, (h, c) = torch.func.functional_call(model, zeroed, (x,))
    assert torch.all(out_zero == 0) and torch.all(h == 0) and torch.all(c == 0)
    assert torch.equal(model(x)[0], out)


def test_repr_shows_extras():
    model = fused_rnn.GRU(3, 4, 2, reset_after=False, input_dropout=0.1, output_dropout=0.2,
                          backend="reference")
    assert repr(model) == ("GRU(3, 4, num_layers=2, input_dropout=0.1, output_dropout=0.2, "
                           "backend='reference', reset_after=False)")
    assert repr(fused_rnn.RNN(3, 4, 1, "relu")) == repr(nn.RNN(3, 4, 1, "relu"))
    assert repr(fused_rnn.LSTM(10, 20, 2)) == "LSTM(10, 20, num_layers=2)"


def test_positional_arguments_like_torch():
    rnn = fused_rnn.RNN(10, 20, 2, "relu", False, True, 0.0, True)
    assert (rnn.nonlinearity, rnn.bias, rnn.batch_first, rnn.bidirectional) == ("relu", False, True, True)
    lstm = fused_rnn.LSTM(10, 20, 2, True, False, 0.0, True, 5)
    assert lstm.proj_size == 5 and lstm.weight_hr_l1_reverse.shape == (5, 20)
    gru = fused_rnn.GRU(10, 20, 2, True, False, 0.0, False, False)
    assert gru.reset_after is False
    assert rnn.backend == lstm.backend == gru.backend == "fused"  # the compiled ops by default


# --------------------------------------------------------------------------------------------
# GRU(reset_after=False) and PeepholeLSTM: against a step-by-step oracle over fused_rnn.reference
# --------------------------------------------------------------------------------------------

def oracle(module, x, hx=None, lengths=None):
    """Layers x directions x time steps, one reference cell call per step (time-major x)."""
    steps, batch, _ = x.shape
    d = 2 if module.bidirectional else 1
    is_lstm = isinstance(module, fused_rnn.LSTM)
    h_size = module.proj_size or module.hidden_size
    if hx is None:
        hx = torch.zeros(module.num_layers * d, batch, h_size, dtype=x.dtype)
        if is_lstm:
            hx = (hx, torch.zeros(module.num_layers * d, batch, module.hidden_size, dtype=x.dtype))
    hs, cs = (hx if is_lstm else (hx, hx))
    lengths = torch.full((batch,), steps) if lengths is None else lengths
    h_n, c_n, layer_input = [], [], x
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(d):
            sfx = f"_l{layer}" + ("_reverse" if direction else "")
            w = {name: getattr(module, name + sfx, None)
                 for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "weight_ch")}
            h, c = hs[layer * d + direction], cs[layer * d + direction]
            ys = [None] * steps
            for t in (reversed(range(steps)) if direction else range(steps)):
                valid = (t < lengths).unsqueeze(1)
                args = (layer_input[t], h)
                if is_lstm:
                    h_new, c_new = reference.lstm_cell(*args, c, w["weight_ih"], w["weight_hh"], w["bias_ih"],
                                                       w["bias_hh"], w["weight_ch"], w["weight_hr"])
                    c = torch.where(valid, c_new, c)
                else:
                    h_new = reference.gru_cell(*args, w["weight_ih"], w["weight_hh"], w["bias_ih"],
                                               w["bias_hh"], module.reset_after)
                h = torch.where(valid, h_new, h)
                ys[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
            outputs.append(torch.stack(ys))
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outputs, dim=2)
    state = (torch.stack(h_n), torch.stack(c_n)) if is_lstm else torch.stack(h_n)
    return layer_input, state


ORACLE_CASES = [
    dict(num_layers=1),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, bidirectional=True, proj_size=2),
    dict(num_layers=3, bias=False),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs", ORACLE_CASES, ids=["L1", "L2-bi", "L2-bi-proj", "L3-nobias"])
@pytest.mark.parametrize("kind", ["gru_reset_before", "peephole"])
def test_against_reference_oracle(kind, kwargs, backend, device):
    if kind == "gru_reset_before" and "proj_size" in kwargs:
        pytest.skip("proj_size is LSTM only")
    torch.manual_seed(0)
    if kind == "peephole":
        model = fused_rnn.PeepholeLSTM(I, H, **kwargs, backend=backend, dtype=F64)
    else:
        model = fused_rnn.GRU(I, H, **kwargs, reset_after=False, backend=backend, dtype=F64)
    x = torch.randn(T, B, I, dtype=F64)
    hx = make_hx(model, B, "cpu")
    lengths = torch.tensor(LENGTHS_UNSORTED)
    expected = oracle(model, x, hx, lengths)
    model_dev = copy.deepcopy(model).to(device)
    x_dev, hx_dev = leaf_copy(x.to(device)), leaf_copy(tuple(h.to(device) for h in flat_tensors(hx)))
    got = model_dev(x_dev, hx_dev if kind == "peephole" else hx_dev[0], lengths=lengths)
    for a, b in zip(flat_tensors(got), flat_tensors(expected), strict=True):
        torch.testing.assert_close(a.cpu(), b, **TIGHT)
    # Gradients against the oracle's autograd.
    weighted_sum(flat_tensors(got)).backward()
    weighted_sum(flat_tensors(expected)).backward()
    for (n, p), q in zip(model_dev.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p.grad.cpu(), q.grad, **TIGHT, msg=lambda m: f"grad of {n}: {m}")


def test_gru_reset_after_variants_differ():
    torch.manual_seed(0)
    after = fused_rnn.GRU(I, H, backend="reference", dtype=F64)
    before = fused_rnn.GRU(I, H, reset_after=False, backend="reference", dtype=F64)
    before.load_state_dict(after.state_dict())
    x = torch.randn(T, B, I, dtype=F64)
    assert not torch.allclose(after(x)[0], before(x)[0])


def test_peephole_parameters():
    torch.manual_seed(0)
    model = fused_rnn.PeepholeLSTM(I, H, 2, bidirectional=True, proj_size=2)
    lstm_names = list(nn.LSTM(I, H, 2, bidirectional=True, proj_size=2).state_dict())
    names = list(model.state_dict())
    assert [n for n in names if not n.startswith("weight_ch")] == lstm_names
    assert names[:6] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_hr_l0",
                         "weight_ch_l0"]
    assert [w.shape for w in model.all_weights[3]][-1] == (3 * H,)
    for sfx in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        w_ch = getattr(model, "weight_ch" + sfx)
        assert isinstance(w_ch, nn.Parameter) and w_ch.shape == (3 * H,)
        assert 0 < w_ch.abs().max() <= 1 / H ** 0.5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_peephole_zero_is_lstm(backend, device):
    torch.manual_seed(0)
    lstm = nn.LSTM(I, H, 2, bidirectional=True, proj_size=2, dtype=F64, device=device)
    model = fused_rnn.PeepholeLSTM(I, H, 2, bidirectional=True, proj_size=2, backend=backend, dtype=F64,
                                   device=device)
    missing, unexpected = model.load_state_dict(lstm.state_dict(), strict=False)
    assert sorted(missing) == sorted(n for n in model.state_dict() if n.startswith("weight_ch"))
    assert not unexpected
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith("weight_ch"):
                p.zero_()
    x = torch.randn(T, B, I, dtype=F64, device=device)
    for a, b in zip(flat_tensors(model(x)), flat_tensors(lstm(x)), strict=True):
        torch.testing.assert_close(a, b, **TIGHT)


# --------------------------------------------------------------------------------------------
# Dropout: torch's between layers, and the variational input/output dropout
# --------------------------------------------------------------------------------------------

def _pass_through_rnn(layers, backend, **kwargs):
    """ReLU RNN whose every layer copies its (positive) input: W_ih = I, W_hh = 0, b = 0.
    Without dropout, output == input; with it, output / input is the product of the masks."""
    size = 8
    model = fused_rnn.RNN(size, size, layers, "relu", backend=backend, dtype=F64, **kwargs)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.eye(size) if name.startswith("weight_ih") else torch.zeros_like(p))
    return model


def _assert_dropped_copy(out, expected, scale):
    """out is expected with some elements zeroed and the others multiplied by scale."""
    zeros = (out == 0) & (expected != 0)
    torch.testing.assert_close(out, torch.where(zeros, torch.zeros_like(expected), expected * scale))
    return zeros


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_between_layers(backend):
    p = 0.3
    torch.manual_seed(0)
    model = _pass_through_rnn(3, backend, dropout=p)
    x = torch.rand(40, 50, 8, dtype=F64) + 0.5  # > 0: a copy is unaffected by the ReLU
    model.eval()
    out_eval, h_eval = model(x)
    torch.testing.assert_close(out_eval, x, rtol=0, atol=0)
    model.train()
    out, _ = model(x)
    keep = (1 - p) ** 2  # two per-step masks: after layers 0 and 1, not after the last
    zeros = _assert_dropped_copy(out, x, 1 / keep)
    assert abs(zeros.double().mean().item() - (1 - keep)) < 0.03
    assert (zeros.any(0) & (~zeros).any(0)).any(), "torch's dropout draws a new mask every step"
    # Exactly deterministic in eval(), and identical to the same model without dropout.
    model.eval()
    again, h_again = model(x)
    assert torch.equal(again, out_eval) and torch.equal(h_again, h_eval)
    no_dropout = _pass_through_rnn(3, backend).eval()
    assert torch.equal(no_dropout(x)[0], out_eval)


@pytest.mark.parametrize("backend", BACKENDS)
def test_variational_input_dropout(backend):
    p = 0.25
    torch.manual_seed(0)
    model = _pass_through_rnn(2, backend, input_dropout=p).train()
    x = torch.rand(20, 400, 8, dtype=F64) + 0.5
    keep = (1 - p) ** 2  # the two layers' input masks
    zeros = _assert_dropped_copy(model(x)[0], x, 1 / keep)
    assert torch.equal(zeros, zeros[:1].expand_as(zeros)), "one mask per sequence, held over time"
    assert abs(zeros[0].double().mean().item() - (1 - keep)) < 0.04
    assert not torch.equal(model(x)[0], model(x)[0]), "a fresh mask at every forward"
    model.eval()
    assert torch.equal(model(x)[0], x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_variational_output_dropout(backend):
    p = 0.4
    torch.manual_seed(0)
    model = _pass_through_rnn(1, backend, output_dropout=p, bidirectional=True).train()
    with torch.no_grad():
        model.weight_ih_l0_reverse.copy_(2 * torch.eye(8))
    x = torch.rand(20, 300, 8, dtype=F64) + 0.5
    lengths = torch.randint(1, 21, (300,))
    out, h_n = model(x, lengths=lengths)
    valid = (torch.arange(20)[:, None] < lengths)[..., None]
    expected = torch.cat([x, 2 * x], dim=2) * valid
    zeros = _assert_dropped_copy(out, expected, 1 / (1 - p))  # padding stays zero too
    assert torch.equal(zeros, zeros[:1].expand_as(zeros) & valid), \
        "one mask per sequence and feature (both directions), held over time"
    assert abs(zeros[0].double().mean().item() - p) < 0.03
    # The final states are not dropped; eval() drops nothing.
    model.eval()
    out_eval, h_eval = model(x, lengths=lengths)
    torch.testing.assert_close(h_n, h_eval, rtol=0, atol=0)
    torch.testing.assert_close(out_eval, expected, rtol=0, atol=0)


@pytest.mark.parametrize("kind", list(KINDS))
def test_dropout_probabilities_validated(kind):
    cls, _, extra = KINDS[kind]
    for arg in ("dropout", "input_dropout", "output_dropout"):
        with pytest.raises(ValueError):
            cls(I, H, 2, **extra, **{arg: 1.5})
    with pytest.raises(ValueError, match="backend"):
        cls(I, H, **extra, backend="cudnn")


# --------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_matches_eager(device):
    torch.manual_seed(0)
    model = fused_rnn.LSTM(I, H, 2, bidirectional=True, device=device)
    x = torch.randn(T, B, I, device=device)
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: the fused ops trace, no graph break
    out_c, (h_c, c_c) = compiled(x)
    weighted_sum([out_c, h_c, c_c]).backward()
    grads_c = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out, (h, c) = model(x)
    weighted_sum([out, h, c]).backward()
    for a, b in zip([out_c, h_c, c_c] + grads_c, [out, h, c] + [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Bad input: the same kind of error torch raises, with a clear message
# --------------------------------------------------------------------------------------------

def _bad_inputs():
    """case -> (call(module), error type, message pattern, whether torch.nn raises it too)."""
    x = torch.randn(T, B, I)
    h = torch.zeros(1, B, H)

    def hx_for(m, h):
        return (h, h) if isinstance(m, (nn.LSTM, fused_rnn.LSTM)) else h

    return {
        "input_size": (lambda m: m(torch.randn(T, B, I + 1)), RuntimeError, "input_size", True),
        "input_4d": (lambda m: m(torch.randn(1, T, B, I)), ValueError, "2D or 3D", True),
        "input_dtype": (lambda m: m(x.double()), ValueError, "dtype", True),
        "hx_shape": (lambda m: m(x, hx_for(m, torch.zeros(1, B + 1, H))), RuntimeError, "size", True),
        "hx_dims": (lambda m: m(x, hx_for(m, h[0])), RuntimeError, "3-D", True),
        "lengths_too_long": (lambda m: m(x, lengths=torch.tensor([T + 1] + [1] * (B - 1))), ValueError,
                             "lengths", False),
        "lengths_negative": (lambda m: m(x, lengths=torch.tensor([-1] + [1] * (B - 1))), ValueError,
                             "lengths", False),
        "lengths_wrong_batch": (lambda m: m(x, lengths=torch.tensor([T] * (B - 1))), ValueError, "lengths",
                                False),
        "lengths_float": (lambda m: m(x, lengths=torch.full((B,), 2.0)), ValueError, "integer", False),
        # torch's packed path fails later, inside the GEMM (RuntimeError); we check up front.
        "packed_dtype": (lambda m: m(pack_padded_sequence(x.double(), torch.tensor(LENGTHS_SORTED))),
                         ValueError, "dtype", False),
        "packed_with_lengths": (lambda m: m(pack_padded_sequence(x, torch.tensor(LENGTHS_SORTED)),
                                            lengths=torch.tensor(LENGTHS_SORTED)), ValueError,
                                "PackedSequence", False),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_bad_input_raises(kind, case):
    cls, torch_cls, extra = KINDS[kind]
    call, error, match, torch_raises_too = _bad_inputs()[case]
    with pytest.raises(error, match=match):
        call(cls(I, H, **extra, backend="reference"))
    if torch_raises_too:
        with pytest.raises(error):
            call(torch_cls(I, H, **extra))


def test_lstm_hx_must_be_a_pair():
    model = fused_rnn.LSTM(I, H, backend="reference")
    with pytest.raises(TypeError, match="tuple"):
        model(torch.randn(T, B, I), torch.zeros(1, B, H))


# ---------------------------------------------------------------------------------------------
# Recurrent-state dropout (state_dropout): runs inside the fused op.
# ---------------------------------------------------------------------------------------------

STATE_DROPOUT_MODULES = {
    "rnn": lambda **kw: fused_rnn.RNN(I, H, 2, bidirectional=True, **kw),
    "lstm_proj": lambda **kw: fused_rnn.LSTM(I, H, 2, proj_size=3, **kw),
    "gru": lambda **kw: fused_rnn.GRU(I, H, 2, **kw),
    "gru_reset_before": lambda **kw: fused_rnn.GRU(I, H, 2, reset_after=False, **kw),
    "peephole": lambda **kw: fused_rnn.PeepholeLSTM(I, H, 2, **kw),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", list(STATE_DROPOUT_MODULES))
def test_state_dropout_matches_the_oracle(kind, device):
    """Same seed, same masks: the fused module in train() equals the reference backend, values
    and gradients, with padded lengths."""
    torch.manual_seed(0)
    ours = STATE_DROPOUT_MODULES[kind](state_dropout=0.5, dtype=F64, device=device)
    oracle_module = copy.deepcopy(ours)
    oracle_module.backend = "reference"
    x = torch.randn(5, 4, I, dtype=F64, device=device, requires_grad=True)
    lengths = torch.tensor([5, 2, 0, 4])
    results = []
    for module in (ours, oracle_module):
        torch.manual_seed(1)
        out, _ = module(x, lengths=lengths)
        grads = torch.autograd.grad(weighted_sum([out]), [x] + list(module.parameters()))
        results.append([out] + list(grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("kind", list(STATE_DROPOUT_MODULES))
def test_state_dropout_is_active_only_in_training(kind):
    torch.manual_seed(0)
    module = STATE_DROPOUT_MODULES[kind](state_dropout=0.5, dtype=F64)
    plain = copy.deepcopy(module)
    plain.state_dropout = 0.0
    x = torch.randn(6, 3, I, dtype=F64)
    module.eval()
    plain.eval()
    torch.testing.assert_close(module(x)[0], plain(x)[0], **TIGHT)
    module.train()
    plain.train()
    assert not torch.allclose(module(x)[0], plain(x)[0])
    assert "state_dropout=0.5" in repr(module)
    with pytest.raises(ValueError, match="state_dropout"):
        fused_rnn.LSTM(I, H, state_dropout=1.5)
