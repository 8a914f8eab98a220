"""Every fused module and cell against torch.nn as the oracle, for what PyTorch's own RNN tests
check (unbatched input, default hx, batch_first, PackedSequence round trips, proj_size, dropout in
eval, state_dict both ways, zero batch, non-contiguous input, float64, the meta device), plus:

* bad arguments raise torch's exception type and message (or, where torch's is an accident of
  its implementation, the same type with a message that says what is wrong: ``OURS_DIFFER``);
* NaN/Inf in the padding past ``lengths`` never reaches an output, a state or a gradient.

The PeepholeLSTM (cell) runs with its peepholes zeroed, where it is torch's LSTM (cell). The
reset_before GRU has no torch counterpart; tests/test_modules.py checks it against the reference.
"""
from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fused_rnn

F64 = torch.float64
TIGHT = dict(rtol=1e-9, atol=1e-10)
T, B, I, H, P = 5, 3, 4, 6, 2
BACKENDS = ["fused", "reference"]

# kind -> (fused_rnn module class, torch.nn class, constructor kwargs)
MODULES = {
    "rnn_tanh": (fused_rnn.RNN, nn.RNN, {}),
    "rnn_relu": (fused_rnn.RNN, nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (fused_rnn.LSTM, nn.LSTM, {}),
    "lstm_proj": (fused_rnn.LSTM, nn.LSTM, {"proj_size": P}),
    "gru": (fused_rnn.GRU, nn.GRU, {}),
    "peephole_lstm": (fused_rnn.PeepholeLSTM, nn.LSTM, {}),
}
CELLS = {
    "rnn_tanh": (fused_rnn.RNNCell, nn.RNNCell, {}),
    "rnn_relu": (fused_rnn.RNNCell, nn.RNNCell, {"nonlinearity": "relu"}),
    "lstm": (fused_rnn.LSTMCell, nn.LSTMCell, {}),
    "gru": (fused_rnn.GRUCell, nn.GRUCell, {}),
    "peephole_lstm": (fused_rnn.PeepholeLSTMCell, nn.LSTMCell, {}),
}


def _same_weights(ours: nn.Module, theirs: nn.Module) -> None:
    """Copies ours into theirs; a peephole module's weight_ch (torch has none) is zeroed."""
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "weight_ch" in name:
                p.zero_()
    result = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not result.missing_keys
    assert all("weight_ch" in k for k in result.unexpected_keys)


def module_pair(kind, backend="fused", dtype=F64, device="cpu", **kwargs):
    ours_cls, torch_cls, extra = MODULES[kind]
    torch.manual_seed(0)
    ours = ours_cls(I, H, **extra, **kwargs, backend=backend, dtype=dtype, device=device)
    theirs = torch_cls(I, H, **extra, **kwargs, dtype=dtype, device=device)
    _same_weights(ours, theirs)
    return ours, theirs


def cell_pair(kind, backend="fused", dtype=F64):
    ours_cls, torch_cls, extra = CELLS[kind]
    torch.manual_seed(0)
    ours = ours_cls(I, H, **extra, backend=backend, dtype=dtype)
    theirs = torch_cls(I, H, **extra, dtype=dtype)
    _same_weights(ours, theirs)
    return ours, theirs


def is_lstm(module) -> bool:
    return isinstance(module, (nn.LSTM, fused_rnn.LSTM, nn.LSTMCell, fused_rnn.LSTMCell))


def random_hx(module, batch_shape, dtype=F64):
    """A random initial state for ``module`` with the given leading shape."""
    h_size = getattr(module, "proj_size", 0) or module.hidden_size
    h = torch.randn(*batch_shape, h_size, dtype=dtype)
    if is_lstm(module):
        return h, torch.randn(*batch_shape, module.hidden_size, dtype=dtype)
    return h


def flat(*items):
    """Outputs and states (tensors, tuples, PackedSequences) as one list of tensors."""
    out = []
    for item in items:
        if isinstance(item, PackedSequence):
            out.append(item.data)
        elif isinstance(item, (tuple, list)):
            out.extend(flat(*item))
        elif item is not None:
            out.append(item)
    return out


def leaf(obj):
    """A fresh leaf copy (requiring grad) of a tensor or a tuple of them."""
    if obj is None:
        return None
    if isinstance(obj, tuple):
        return tuple(leaf(o) for o in obj)
    return obj.detach().clone().requires_grad_(True)


def run_with_grads(module, inputs, *args, **kwargs):
    """Calls module(*args, **kwargs); returns its outputs and the gradients of a weighted sum of
    them with respect to ``inputs`` and every parameter (None where a gradient does not exist)."""
    out = module(*args, **kwargs)
    tensors = flat(out)
    gen = torch.Generator().manual_seed(7)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in tensors)
    wrt = flat(inputs) + [p for name, p in module.named_parameters() if "weight_ch" not in name]
    grads = torch.autograd.grad(loss, wrt, allow_unused=True) if loss.requires_grad else []
    return tensors, list(grads)


def assert_all_close(ours, theirs, **tol):
    assert len(ours) == len(theirs)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        if a is None or b is None:
            assert a is None and b is None, f"item {k}"
            continue
        torch.testing.assert_close(a, b, **(tol or TIGHT), msg=lambda m: f"item {k}: {m}")


# ---------------------------------------------------------------------------------------------
# What torch's RNN tests check, against torch.nn
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("kind", list(MODULES))
def test_unbatched_input_is_a_batch_of_one(kind, with_hx, backend):
    ours, theirs = module_pair(kind, backend, num_layers=2, bidirectional=True)
    x = torch.randn(T, I, dtype=F64)
    hx = random_hx(ours, (4,)) if with_hx else None
    out_unbatched, state_unbatched = ours(x, hx)
    assert_all_close(flat(out_unbatched, state_unbatched), flat(theirs(x, hx)))
    # The same sequence as a batch of one gives the same numbers with a batch dimension.
    hx_batched = None if hx is None else (
        tuple(h.unsqueeze(1) for h in hx) if isinstance(hx, tuple) else hx.unsqueeze(1))
    out, state = ours(x.unsqueeze(1), hx_batched)
    assert_all_close([out_unbatched, *flat(state_unbatched)],
                     [out.squeeze(1), *[s.squeeze(1) for s in flat(state)]])


@pytest.mark.parametrize("kind", list(MODULES))
def test_default_hx_is_zeros(kind):
    ours, theirs = module_pair(kind, num_layers=2)
    x = torch.randn(T, B, I, dtype=F64)
    zeros = random_hx(ours, (2, B))
    zeros = tuple(z.zero_() for z in zeros) if isinstance(zeros, tuple) else zeros.zero_()
    assert_all_close(flat(ours(x)), flat(ours(x, zeros)))
    assert_all_close(flat(ours(x)), flat(theirs(x)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(MODULES))
def test_batch_first_with_gradients(kind, backend):
    ours, theirs = module_pair(kind, backend, batch_first=True, bidirectional=True)
    x = torch.randn(B, T, I, dtype=F64)
    hx = random_hx(ours, (2, B))  # hx stays (layers*directions, B, H) with batch_first
    results = [run_with_grads(m, [xl, hl], xl, hl)
               for m, xl, hl in ((ours, leaf(x), leaf(hx)), (theirs, leaf(x), leaf(hx)))]
    assert results[0][0][0].shape[:2] == (B, T)
    assert_all_close(*[outs + grads for outs, grads in results])


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(MODULES))
def test_packed_sequence_round_trip(kind, backend, enforce_sorted):
    ours, theirs = module_pair(kind, backend, num_layers=2, bidirectional=True)
    lengths = torch.tensor([5, 3, 1] if enforce_sorted else [3, 5, 1])
    x = torch.randn(T, B, I, dtype=F64)
    hx = random_hx(ours, (4, B))
    results = []
    for module in (ours, theirs):
        x_leaf, hx_leaf = leaf(x), leaf(hx)
        packed = pack_padded_sequence(x_leaf, lengths, enforce_sorted=enforce_sorted)
        out, state = module(packed, hx_leaf)
        # The output keeps the input's packing: same batch_sizes and permutation.
        assert isinstance(out, PackedSequence)
        assert torch.equal(out.batch_sizes, packed.batch_sizes)
        for got, want in ((out.sorted_indices, packed.sorted_indices),
                          (out.unsorted_indices, packed.unsorted_indices)):
            assert (got is None and want is None) or torch.equal(got, want)
        padded, out_lengths = pad_packed_sequence(out, total_length=T)
        assert torch.equal(out_lengths, lengths)
        outs, grads = run_with_grads(module, [x_leaf, hx_leaf], packed, hx_leaf)
        results.append([padded] + outs + grads)
    assert_all_close(*results)


def test_proj_size_shapes_and_values():
    ours, theirs = module_pair("lstm_proj", num_layers=2, bidirectional=True)
    assert ours.weight_hr_l1_reverse.shape == theirs.weight_hr_l1_reverse.shape == (P, H)
    assert ours.weight_ih_l1.shape == (4 * H, 2 * P)  # the next layer sees both directions' P
    x = torch.randn(T, B, I, dtype=F64)
    out, (h, c) = ours(x)
    assert out.shape == (T, B, 2 * P) and h.shape == (4, B, P) and c.shape == (4, B, H)
    assert_all_close(flat(out, h, c), flat(theirs(x)))
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(4, 3, 2\), got \[4, 3, 6\]"):
        ours(x, (torch.zeros(4, B, H, dtype=F64), c))  # h must be proj_size wide


@pytest.mark.parametrize("kind", list(MODULES))
def test_dropout_only_in_training(kind):
    ours, theirs = module_pair(kind, num_layers=3, dropout=0.5)
    x = torch.randn(T, B, I, dtype=F64)
    ours.eval()
    theirs.eval()
    first = flat(ours(x))
    assert_all_close(first, flat(ours(x)))  # deterministic in eval
    assert_all_close(first, flat(theirs(x)))  # and no dropout at all
    ours.train()
    torch.manual_seed(1)
    assert not torch.allclose(ours(x)[0], first[0])  # dropout between layers in training


@pytest.mark.parametrize("kind", list(MODULES))
def test_dropout_warning_like_torch(kind):
    ours_cls, torch_cls, extra = MODULES[kind]
    caught = []
    for cls in (ours_cls, torch_cls):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            cls(I, H, **extra, dropout=0.3)  # one layer: torch's dropout does nothing
        caught.append([str(m.message) for m in w])
    assert caught[0] == caught[1] and len(caught[0]) == 1


@pytest.mark.parametrize("kind", list(MODULES))
def test_state_dict_loads_both_ways(kind):
    ours_cls, torch_cls, extra = MODULES[kind]
    torch.manual_seed(0)
    theirs = torch_cls(I, H, **extra, num_layers=2, bidirectional=True, dtype=F64)
    ours = ours_cls(I, H, **extra, num_layers=2, bidirectional=True, dtype=F64)
    strict = kind != "peephole_lstm"  # its weight_ch is extra
    result = ours.load_state_dict(theirs.state_dict(), strict=strict)  # torch -> ours
    assert not result.missing_keys or all("weight_ch" in k for k in result.missing_keys)
    if not strict:
        with torch.no_grad():
            for name, p in ours.named_parameters():
                if "weight_ch" in name:
                    p.zero_()
    x = torch.randn(T, B, I, dtype=F64)
    assert_all_close(flat(ours(x)), flat(theirs(x)))
    back = torch_cls(I, H, **extra, num_layers=2, bidirectional=True, dtype=F64)
    back.load_state_dict(ours.state_dict(), strict=strict)  # ours -> torch
    assert_all_close(flat(back(x)), flat(theirs(x)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(MODULES))
def test_zero_batch(kind, backend):
    ours, theirs = module_pair(kind, backend, bidirectional=True)
    x = torch.randn(T, 0, I, dtype=F64, requires_grad=True)
    out, state = ours(x)
    expected = flat(theirs(x))
    assert [t.shape for t in flat(out, state)] == [t.shape for t in expected]
    out.sum().backward()  # an empty batch still has a (zero) backward
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(MODULES))
def test_non_contiguous_input_and_hx(kind, backend):
    ours, theirs = module_pair(kind, backend, num_layers=2)
    x = torch.randn(I, B, T, dtype=F64).permute(2, 1, 0)  # (T, B, I), no dimension contiguous
    hx = random_hx(ours, (B, 2))
    hx = tuple(h.transpose(0, 1) for h in hx) if isinstance(hx, tuple) else hx.transpose(0, 1)
    assert not x.is_contiguous() and not flat(hx)[0].is_contiguous()
    results = [run_with_grads(m, [xl, hl], xl, hl)
               for m, xl, hl in ((ours, leaf(x), leaf(hx)), (theirs, leaf(x), leaf(hx)))]
    assert_all_close(*[outs + grads for outs, grads in results])


@pytest.mark.parametrize("kind", list(MODULES))
def test_float32(kind):
    ours, theirs = module_pair(kind, dtype=torch.float32, bidirectional=True)
    x = torch.randn(T, B, I)
    out = flat(ours(x))
    assert all(t.dtype == torch.float32 for t in out)
    assert_all_close(out, flat(theirs(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", list(MODULES))
def test_meta_module_gives_meta_outputs_like_torch(kind):
    ours, theirs = module_pair(kind, device="meta", num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=F64, device="meta")
    ours_out, theirs_out = flat(ours(x)), flat(theirs(x))
    assert [(t.shape, t.device.type) for t in ours_out] == [(t.shape, t.device.type) for t in theirs_out]
    lengths_out = flat(ours(x, lengths=torch.tensor([5, 2, 0])))  # CPU lengths with meta input
    assert [t.shape for t in lengths_out] == [t.shape for t in theirs_out]
    packed = pack_padded_sequence(x, torch.tensor([2, 5, 1]), enforce_sorted=False)
    ours_packed, theirs_packed = ours(packed), theirs(packed)
    assert ours_packed[0].data.shape == theirs_packed[0].data.shape
    assert [(t.shape, t.device.type) for t in flat(ours_packed)] == \
        [(t.shape, t.device.type) for t in flat(theirs_packed)]


# ---------------------------------------------------------------------------------- cells
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_unbatched_and_batched(kind, backend):
    ours, theirs = cell_pair(kind, backend)
    x = torch.randn(I, dtype=F64)
    hx = random_hx(ours, ())
    for args in ((x,), (x, hx)):
        assert_all_close(flat(ours(*args)), flat(theirs(*args)))
    hx_batched = tuple(h[None] for h in hx) if isinstance(hx, tuple) else hx[None]
    assert_all_close([t[0] for t in flat(ours(x[None], hx_batched))], flat(ours(x, hx)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_gradients_zero_batch_and_strides(kind, backend):
    ours, theirs = cell_pair(kind, backend)
    x = torch.randn(I, B, dtype=F64).t()  # non-contiguous (B, I)
    hx = random_hx(ours, (B,))
    results = [run_with_grads(m, [xl, hl], xl, hl)
               for m, xl, hl in ((ours, leaf(x), leaf(hx)), (theirs, leaf(x), leaf(hx)))]
    assert_all_close(*[outs + grads for outs, grads in results])
    empty = torch.randn(0, I, dtype=F64)
    assert [t.shape for t in flat(ours(empty))] == [t.shape for t in flat(theirs(empty))]


# ---------------------------------------------------------------------------------------------
# Bad arguments: torch's exception type and message
# ---------------------------------------------------------------------------------------------

def _hx(kind, *shapes, **factory):
    states = [torch.zeros(s, **factory) for s in shapes]
    return tuple(states) if "lstm" in kind else states[0]


x3 = torch.randn(T, B, I)
# case -> (call(cls, extra, kind), kinds it applies to or None for all)
MODULE_ERRORS = {
    "proj_size_rnn_gru": (lambda c, e, k: c(I, H, **e, proj_size=2), ("rnn_tanh", "gru")),
    "proj_size_zero_rnn_gru": (lambda c, e, k: c(I, H, **e, proj_size=0), ("rnn_tanh", "gru")),
    "proj_size_negative": (lambda c, e, k: c(I, H, proj_size=-1), ("lstm",)),
    "proj_size_not_smaller": (lambda c, e, k: c(I, H, proj_size=H), ("lstm",)),
    "nonlinearity": (lambda c, e, k: c(I, H, nonlinearity="gelu"), ("rnn_tanh",)),
    "dropout_range": (lambda c, e, k: c(I, H, **e, dropout=1.5), None),
    "dropout_bool": (lambda c, e, k: c(I, H, **e, dropout=True), None),
    "hidden_size_zero": (lambda c, e, k: c(I, 0, **e), None),
    "input_size_zero": (lambda c, e, k: c(0, H, **e), None),
    "input_size_float": (lambda c, e, k: c(4.0, H, **e), None),
    "num_layers_zero": (lambda c, e, k: c(I, H, **e, num_layers=0), None),
    "bias_not_bool": (lambda c, e, k: c(I, H, **e, bias=1), None),
    "batch_first_not_bool": (lambda c, e, k: c(I, H, **e, batch_first=1), None),
    "input_1d": (lambda c, e, k: c(I, H, **e)(torch.randn(I)), None),
    "input_4d": (lambda c, e, k: c(I, H, **e)(x3[None]), None),
    "input_size": (lambda c, e, k: c(I, H, **e)(torch.randn(T, B, I + 1)), None),
    "input_dtype": (lambda c, e, k: c(I, H, **e)(x3.double()), None),
    "input_int": (lambda c, e, k: c(I, H, **e)(x3.long()), None),
    "hx_batch": (lambda c, e, k: c(I, H, **e)(x3, _hx(k, (1, B + 1, H), (1, B, H))), None),
    "hx_size": (lambda c, e, k: c(I, H, **e)(x3, _hx(k, (1, B, H + 1), (1, B, H))), None),
    "hx_layers": (lambda c, e, k: c(I, H, **e, num_layers=2)(x3, _hx(k, (1, B, H), (2, B, H))),
                  None),
    "cx_batch": (lambda c, e, k: c(I, H, **e)(x3, _hx(k, (1, B, H), (1, B + 1, H))), ("lstm",)),
    "cx_size": (lambda c, e, k: c(I, H, **e)(x3, _hx(k, (1, B, H), (1, B, H - 1))), ("lstm",)),
    "hx_2d_batched": (lambda c, e, k: c(I, H, **e)(x3, _hx(k, (B, H), (B, H))), None),
    "hx_3d_unbatched": (lambda c, e, k: c(I, H, **e)(x3[:, 0], _hx(k, (1, 1, H), (1, 1, H))), None),
    "hx_unbatched_size": (lambda c, e, k: c(I, H, **e)(x3[:, 0], _hx(k, (1, H + 1), (1, H))), None),
    "batch_first_hx_batch": (lambda c, e, k: c(I, H, **e, batch_first=True)(
        x3, _hx(k, (1, B, H), (1, B, H))), None),  # with batch_first the batch is x's dim 0 (T)
    "no_time_steps": (lambda c, e, k: c(I, H, **e)(torch.randn(0, B, I)), None),
    "no_time_steps_unbatched": (lambda c, e, k: c(I, H, **e)(torch.randn(0, I)), None),
    "packed_hx_batch": (lambda c, e, k: c(I, H, **e)(
        pack_padded_sequence(x3, [5, 3, 1]), _hx(k, (1, B + 1, H), (1, B, H))), ("rnn_tanh", "gru")),
    "packed_input_size": (lambda c, e, k: c(I, H, **e)(
        pack_padded_sequence(torch.randn(T, B, I + 1), [5, 3, 1])), None),
    # Devices: torch checks the states' device first, then the parameters'.
    "meta_input": (lambda c, e, k: c(I, H, **e)(x3.to("meta")), None),
    "meta_input_and_hx": (lambda c, e, k: c(I, H, **e)(
        x3.to("meta"), _hx(k, (1, B, H), (1, B, H), device="meta")), None),
    "meta_hx": (lambda c, e, k: c(I, H, **e)(x3, _hx(k, (1, B, H), (1, B, H), device="meta")), None),
    "meta_cx": (lambda c, e, k: c(I, H, **e)(x3, (torch.zeros(1, B, H), torch.zeros(1, B, H, device="meta"))),
                ("lstm",)),
    "meta_input_cpu_hx": (lambda c, e, k: c(I, H, **e)(x3.to("meta"), _hx(k, (1, B, H), (1, B, H))),
                          None),
    "meta_module_cpu_input": (lambda c, e, k: c(I, H, **e, device="meta")(x3), None),
    "hx_dtype": (lambda c, e, k: c(I, H, **e)(x3, _hx(k, (1, B, H), (1, B, H), dtype=torch.float64)),
                 None),
}

# Where torch's message is an accident of its implementation (a GEMM's, or an attribute error),
# ours keeps torch's exception type and says what is wrong instead: case -> pattern of ours.
OURS_DIFFER = {
    # torch: "mat1 and mat2 must have the same dtype" / "get_mkldnn_dtype: unsupported data type"
    "hx_dtype": r"hidden(\[0\])? has dtype torch.float64 but the input has dtype torch.float32",
    # torch's packed LSTM without hx skips check_forward_args: "mat1 and mat2 shapes cannot be..."
    ("packed_input_size", "lstm"): r"^input.size\(-1\) must be equal to input_size. Expected 4, got 5$",
}


def outcome(call):
    """(exception type, first line of its message), or None when ``call`` returns."""
    try:
        call()
    except Exception as error:  # noqa: BLE001 - comparing whatever each raises
        return type(error), str(error).splitlines()[0]
    return None


def _module_error_params():
    params = []
    for case, (_, kinds) in MODULE_ERRORS.items():
        for kind in ("rnn_tanh", "lstm", "gru"):
            if kinds is None or kind in kinds:
                params.append(pytest.param(case, kind, id=f"{case}-{kind}"))
    return params


@pytest.mark.parametrize("case,kind", _module_error_params())
def test_module_errors_like_torch(case, kind):
    call, _ = MODULE_ERRORS[case]
    ours_cls, torch_cls, extra = MODULES[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = outcome(lambda: call(torch_cls, extra, kind))
        ours = outcome(lambda: call(ours_cls, extra, kind))
    assert theirs is not None, "torch accepts this: not a bad input"
    assert ours is not None, f"torch raises {theirs}, fused_rnn does not"
    assert ours[0] is theirs[0], (ours, theirs)
    differ = OURS_DIFFER.get((case, kind), OURS_DIFFER.get(case))
    if differ is not None:
        assert re.search(differ, ours[1]), ours
    else:
        assert ours[1] == theirs[1]


def test_proj_size_is_refused_like_torch_for_the_fused_classes_only():
    assert fused_rnn.LSTM(I, H, proj_size=2).proj_size == 2
    assert fused_rnn.PeepholeLSTM(I, H, proj_size=2).proj_size == 2
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM, not RNN or GRU"):
        fused_rnn.GRU(I, H, reset_after=False, proj_size=2)


x2 = torch.randn(B, I)
CELL_ERRORS = {
    "input_0d": lambda c, k: c(torch.tensor(1.0)),
    "input_3d": lambda c, k: c(x2[None]),
    "input_size": lambda c, k: c(torch.randn(B, I + 1)),
    "input_size_unbatched": lambda c, k: c(torch.randn(I + 1)),
    "hx_batch": lambda c, k: c(x2, _hx(k, (B + 1, H), (B, H))),
    "hx_size": lambda c, k: c(x2, _hx(k, (B, H + 1), (B, H))),
    "hx_3d": lambda c, k: c(x2, _hx(k, (1, B, H), (1, B, H))),
    "hx_unbatched_size": lambda c, k: c(x2[0], _hx(k, (H + 1,), (H,))),
    "cx_batch": lambda c, k: c(x2, _hx(k, (B, H), (B + 1, H))),
    "cx_size": lambda c, k: c(x2, _hx(k, (B, H), (B, H + 1))),
    "cx_3d": lambda c, k: c(x2, _hx(k, (B, H), (1, B, H))),
}
CELL_LSTM_ONLY = ("cx_batch", "cx_size", "cx_3d")
# Same exception type as torch's cells, a message that says what is wrong (torch's is a GEMM's,
# a device copy's or a misleading size mismatch): case -> pattern of ours.
CELL_OURS_DIFFER = {
    "input_dtype": (lambda c, k: c(x2.double()),
                    r"input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"),
    "hx_dtype": (lambda c, k: c(x2, _hx(k, (B, H), (B, H), dtype=torch.float64)),
                 "hidden0 has dtype torch.float64 but the input has dtype torch.float32"),
    "hx_1d_batched_input": (lambda c, k: c(x2, _hx(k, (H,), (H,))), "to be 2D like the input"),
    "hx_2d_unbatched_input": (lambda c, k: c(x2[0], _hx(k, (1, H), (1, H))), "to be 1D like the input"),
    "meta_input": (lambda c, k: c(x2.to("meta")),
                   "Input and parameter tensors are not at the same device, found input tensor at "
                   "meta and parameter tensor at cpu"),
    "meta_hx": (lambda c, k: c(x2, _hx(k, (B, H), (B, H), device="meta")),
                "Input and hidden tensors are not at the same device, found input tensor at cpu "
                "and hidden tensor at meta"),
}


def _cell_error_params():
    params = []
    for case in list(CELL_ERRORS) + list(CELL_OURS_DIFFER):
        for kind in ("rnn_tanh", "lstm", "gru"):
            if case not in CELL_LSTM_ONLY or kind == "lstm":
                params.append(pytest.param(case, kind, id=f"{case}-{kind}"))
    return params


@pytest.mark.parametrize("case,kind", _cell_error_params())
def test_cell_errors_like_torch(case, kind):
    ours_cls, torch_cls, extra = CELLS[kind]
    call = CELL_ERRORS[case] if case in CELL_ERRORS else CELL_OURS_DIFFER[case][0]
    theirs = outcome(lambda: call(torch_cls(I, H, **extra), kind))
    ours = outcome(lambda: call(ours_cls(I, H, **extra), kind))
    assert theirs is not None, "torch accepts this: not a bad input"
    assert ours is not None, f"torch raises {theirs}, fused_rnn does not"
    assert ours[0] is theirs[0], (ours, theirs)
    if case in CELL_ERRORS:
        assert ours[1] == theirs[1]
    else:
        assert re.search(CELL_OURS_DIFFER[case][1], ours[1]), ours


@pytest.mark.parametrize("kind", list(CELLS))
def test_meta_cell_gives_meta_outputs(kind):
    ours_cls, torch_cls, extra = CELLS[kind]
    x = torch.randn(B, I, device="meta")
    ours, theirs = ours_cls(I, H, **extra, device="meta"), torch_cls(I, H, **extra, device="meta")
    assert [(t.shape, t.device.type) for t in flat(ours(x))] == \
        [(t.shape, t.device.type) for t in flat(theirs(x))]


# ---------------------------------------------------------------------------------------------
# NaN / Inf in the padding past lengths
# ---------------------------------------------------------------------------------------------

PADDED_KINDS = dict(MODULES)
ALGOS = ["stepwise", "persistent"]


@pytest.mark.parametrize("poison", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(PADDED_KINDS))
def test_poisoned_padding_never_reaches_a_result(kind, backend, algo, poison):
    """Outputs, states and every gradient with NaN/Inf past ``lengths`` equal pack -> torch.nn ->
    pad with zeros there, in both directions, and are finite."""
    hidden = 16  # the persistent CPU loop needs a multiple of 16
    ours_cls, torch_cls, extra = MODULES[kind]
    if algo == "persistent" and kind == "lstm_proj":
        pytest.skip("the persistent loop has no LSTM projection (functional raises)")
    torch.manual_seed(0)
    ours = ours_cls(I, hidden, **extra, bidirectional=True, num_layers=2, backend=backend,
                    algo=algo)
    theirs = torch_cls(I, hidden, **extra, bidirectional=True, num_layers=2)
    _same_weights(ours, theirs)
    lengths = torch.tensor([6, 3, 1])
    clean = torch.randn(6, 3, I)
    for b, n in enumerate(lengths.tolist()):
        clean[n:, b] = 0
    poisoned = clean.clone()
    poisoned[3:, 1] = poison
    poisoned[1:, 2] = poison

    x = poisoned.clone().requires_grad_(True)
    outs, grads = run_with_grads(ours, [x], x, lengths=lengths)
    x_ref = clean.clone().requires_grad_(True)
    packed = pack_padded_sequence(x_ref, lengths, enforce_sorted=False)
    out, state = theirs(packed)
    padded = pad_packed_sequence(out, total_length=6)[0]
    gen = torch.Generator().manual_seed(7)
    expected = flat(padded, state)
    loss = sum((t * torch.randn(t.shape, generator=gen)).sum() for t in expected)
    expected_grads = torch.autograd.grad(loss, [x_ref] + list(theirs.parameters()))
    for t in outs + grads:
        assert torch.isfinite(t).all()
    assert_all_close(outs + grads, expected + list(expected_grads), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_poisoned_padding_functional(backend):
    """fused_rnn.functional zeroes the padding itself, for every caller (here reverse)."""
    torch.manual_seed(0)
    x = torch.randn(4, 2, I, dtype=F64)
    x[2:, 1] = float("nan")
    w_ih = torch.randn(3 * H, I, dtype=F64, requires_grad=True)
    w_hh = torch.randn(3 * H, H, dtype=F64, requires_grad=True)
    h0 = torch.zeros(2, H, dtype=F64)
    y, h = fused_rnn.functional.gru(x, h0, w_ih, w_hh, lengths=torch.tensor([4, 2]), reverse=True,
                                    backend=backend)
    (y.sum() + h.sum()).backward()
    assert torch.isfinite(y).all() and torch.isfinite(w_ih.grad).all()
    x_clean = torch.nan_to_num(x, nan=0.0)
    y_clean, _ = fused_rnn.functional.gru(x_clean, h0, w_ih, w_hh, lengths=torch.tensor([4, 2]),
                                          reverse=True, backend=backend)
    torch.testing.assert_close(y, y_clean, **TIGHT)
