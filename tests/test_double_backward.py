"""Second derivatives through the fused ops: a backward run with create_graph=True is itself
differentiable (fused_rnn/_double_backward.py), for every cell, with lengths, in reverse, with
recurrent-state dropout, for both algorithms, through functional, the modules and the cells."""
import contextlib
import os
import subprocess
import sys

import pytest
import torch
from torch.autograd import gradgradcheck

import fused_rnn
import fused_rnn.functional as F

T, B, I = 3, 3, 2
LENGTHS = torch.tensor([3, 0, 2])

# cell -> (gates G, whether it has c0)
CELLS = {
    "rnn_tanh": (1, False), "rnn_relu": (1, False), "lstm": (4, True), "lstm_proj": (4, True),
    "peephole_lstm": (4, True), "gru": (3, False), "gru_reset_before": (3, False),
}


def _case(cell, hidden, *, lengths=None, reverse=False, state_mask=False, bias=True,
          algo="stepwise", backend="fused", dtype=torch.float64, seed=0):
    """(function of the differentiable inputs -> outputs, the inputs) for one layer-direction."""
    generator = torch.Generator().manual_seed(seed)
    gates, has_c = CELLS[cell]
    state = hidden - 1 if cell == "lstm_proj" else hidden

    def rand(*shape, scale=0.5):
        return (torch.randn(*shape, generator=generator, dtype=dtype) * scale).requires_grad_()

    inputs = {"x": rand(T, B, I, scale=1.0), "h0": rand(B, state)}
    if has_c:
        inputs["c0"] = rand(B, hidden)
    inputs.update(w_ih=rand(gates * hidden, I), w_hh=rand(gates * hidden, state))
    if bias:
        inputs.update(b_ih=rand(gates * hidden), b_hh=rand(gates * hidden))
    if cell == "lstm_proj":
        inputs["w_hr"] = rand(state, hidden)
    if cell == "peephole_lstm":
        inputs["w_ch"] = rand(3 * hidden)
    mask = None
    if state_mask:
        mask = (torch.rand(B, state, generator=generator) > 0.5).to(dtype) * 2
    names = list(inputs)
    common = dict(lengths=lengths, reverse=reverse, state_mask=mask, algo=algo, backend=backend)

    def run(*args):
        a = dict(zip(names, args))
        if cell.startswith("rnn"):
            return F.rnn(a["x"], a["h0"], a["w_ih"], a["w_hh"], a.get("b_ih"), a.get("b_hh"),
                         nonlinearity=cell[4:], **common)
        if cell.startswith("gru"):
            return F.gru(a["x"], a["h0"], a["w_ih"], a["w_hh"], a.get("b_ih"), a.get("b_hh"),
                         reset_after=cell == "gru", **common)
        return F.peephole_lstm(a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a.get("w_ch"),
                               a.get("b_ih"), a.get("b_hh"), w_hr=a.get("w_hr"), **common)

    return run, tuple(inputs.values())


VARIANTS = {
    "plain": {},
    "lengths_reverse": dict(lengths=LENGTHS, reverse=True),
    "lengths": dict(lengths=LENGTHS),
    "state_mask": dict(state_mask=True),
    "no_bias": dict(bias=False),  # an absent optional input in the middle of the inputs
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_gradgradcheck_stepwise(cell, variant):
    run, inputs = _case(cell, 3, **VARIANTS[variant])
    assert gradgradcheck(run, inputs, fast_mode=True)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_gradgradcheck_slow_mode(cell):
    """Every entry of the second-order Jacobian, not a random projection of it."""
    run, inputs = _case(cell, 2, lengths=LENGTHS, reverse=True, state_mask=True)
    assert gradgradcheck(run, inputs)


def test_gradgradcheck_of_the_forward_op_with_leaf_inputs():
    """Called directly, x_proj is a leaf: its second-order gradients reach its .grad."""
    generator = torch.Generator().manual_seed(1)
    H = 2
    x_proj, h0, c0 = (torch.randn(*s, generator=generator, dtype=torch.float64).requires_grad_()
                      for s in ((T, B, 4 * H), (B, H), (B, H)))
    w_hh = (torch.randn(4 * H, H, generator=generator, dtype=torch.float64) * 0.5).requires_grad_()

    def run(x_proj, h0, c0, w_hh):
        return torch.ops.fused_rnn.lstm_forward(x_proj, h0, c0, w_hh, None, None, None, LENGTHS,
                                                None, False, True, "stepwise")[:3]

    assert gradgradcheck(run, (x_proj, h0, c0, w_hh), fast_mode=True)


# ------------------------------------------------------------------------- algo="persistent"
# On the CPU the persistent loop runs float32 with hidden sizes that are multiples of 16, no
# projection, no state dropout and only the reset_after GRU: its second derivatives are checked
# against the reference backend's in float64, to float32's precision of the largest entry.
PERSISTENT_CELLS = ["rnn_tanh", "rnn_relu", "lstm", "peephole_lstm", "gru"]


def _penalty_second_derivatives(run, inputs):
    """The gradients of a gradient penalty, Σ‖∂L/∂input‖², L = Σ y² + Σ h_n."""
    outputs = run(*inputs)
    loss = outputs[0].pow(2).sum() + outputs[1].sum()
    grads = torch.autograd.grad(loss, inputs, create_graph=True)
    penalty = sum(g.pow(2).sum() for g in grads)
    return torch.autograd.grad(penalty, inputs)


@pytest.mark.parametrize("cell", PERSISTENT_CELLS)
def test_persistent_matches_reference(cell):
    case = dict(lengths=LENGTHS, reverse=True)
    run, inputs = _case(cell, 16, algo="persistent", dtype=torch.float32, **case)
    reference_run, _ = _case(cell, 16, backend="reference", **case)
    got = _penalty_second_derivatives(run, inputs)
    expected = _penalty_second_derivatives(
        reference_run, [t.detach().double().requires_grad_() for t in inputs])
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-5 * e.abs().max().item())


# --------------------------------------------------------------- modules and cells against torch
# A gradient penalty's second derivatives through fused_rnn's modules and cells equal those
# through torch.nn's (float64 on the CPU, where torch's RNNs are differentiable twice).
def _penalty_gradients(module, forward, x):
    params = list(module.parameters())
    loss = forward(module, x)
    grads = torch.autograd.grad(loss, [x, *params], create_graph=True)
    penalty = sum(g.pow(2).sum() for g in grads)
    return torch.autograd.grad(penalty, [x, *params])


def _sequence_loss(module, x, lengths=None):
    """torch.nn's modules take lengths as a PackedSequence, fused_rnn's as `lengths=`."""
    if lengths is None:
        y, state = module(x)
    elif type(module).__module__.startswith("torch."):
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        y, state = module(packed)
        y = torch.nn.utils.rnn.pad_packed_sequence(y, total_length=x.shape[0])[0]
    else:
        y, state = module(x, lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    return y.pow(2).sum() + sum(s.sin().sum() for s in states)


MODULES = {
    "lstm": lambda lib: lib.LSTM(I, 3, num_layers=2, bidirectional=True, dtype=torch.float64),
    "lstm_proj": lambda lib: lib.LSTM(I, 3, proj_size=2, bidirectional=True, dtype=torch.float64),
    "gru": lambda lib: lib.GRU(I, 3, num_layers=2, bidirectional=True, dtype=torch.float64),
    "rnn_relu": lambda lib: lib.RNN(I, 3, nonlinearity="relu", bidirectional=True,
                                    dtype=torch.float64),
}


@pytest.mark.parametrize("lengths", [None, LENGTHS.clamp(min=1)], ids=["full", "lengths"])
@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_double_backward_matches_torch(name, lengths):
    torch.manual_seed(0)
    ours, theirs = MODULES[name](fused_rnn), MODULES[name](torch.nn)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    got = _penalty_gradients(ours, lambda m, x: _sequence_loss(m, x, lengths), x)
    expected = _penalty_gradients(theirs, lambda m, x: _sequence_loss(m, x, lengths), x)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_persistent_module_double_backward_matches_torch(name):
    """algo="persistent" (float32, hidden 16) against torch.nn in float64."""
    torch.manual_seed(0)
    ours = getattr(fused_rnn, name)(I, 16, bidirectional=True, algo="persistent")
    theirs = getattr(torch.nn, name)(I, 16, bidirectional=True, dtype=torch.float64)
    theirs.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    x = torch.randn(T, B, I, requires_grad=True)
    x64 = x.detach().double().requires_grad_()
    got = _penalty_gradients(ours, lambda m, x: _sequence_loss(m, x, LENGTHS.clamp(min=1)), x)
    expected = _penalty_gradients(theirs, lambda m, x: _sequence_loss(m, x, LENGTHS.clamp(min=1)),
                                  x64)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-5 * e.abs().max().item())


def _cell_loss(cell, x):
    """Two steps of a cell, the second from the first's state."""
    state = None
    for t in range(x.shape[0]):
        state = cell(x[t], state)
    states = state if isinstance(state, tuple) else (state,)
    return sum(s.pow(2).sum() for s in states)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_double_backward_matches_torch(name):
    torch.manual_seed(0)
    ours = getattr(fused_rnn, name)(I, 3, dtype=torch.float64)
    theirs = getattr(torch.nn, name)(I, 3, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, B, I, dtype=torch.float64, requires_grad=True)
    got = _penalty_gradients(ours, _cell_loss, x)
    expected = _penalty_gradients(theirs, _cell_loss, x)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-8)


# ------------------------------------------------------------------------------ the two paths
def _ops_run(create_graph):
    lstm = fused_rnn.LSTM(I, 16)
    x = torch.randn(T, B, I, requires_grad=True)
    with torch.profiler.profile() as prof:
        torch.autograd.grad(lstm(x)[0].sum(), [x, *lstm.parameters()], create_graph=create_graph)
    return {event.name for event in prof.events()}


def test_first_order_backward_runs_the_kernel():
    """Without create_graph the backward is the kernel's, as before: no recomputation."""
    names = _ops_run(create_graph=False)
    assert "fused_rnn::lstm_backward" in names
    assert "fused_rnn::lstm_backward_differentiable" not in names


def test_create_graph_backward_runs_the_differentiable_op():
    names = _ops_run(create_graph=True)
    assert "fused_rnn::lstm_backward_differentiable" in names
    assert "fused_rnn::lstm_backward" not in names


def test_saved_tensor_hooks():
    """Through save_on_cpu's hooks the saved inputs keep their autograd history."""
    torch.manual_seed(0)
    lstm = fused_rnn.LSTM(I, 3, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)

    def second(hooks):
        with hooks:
            y, _ = lstm(x)
        return _penalty_gradients(lstm, lambda m, x: y.pow(2).sum(), x)

    for a, b in zip(second(torch.autograd.graph.save_on_cpu()), second(contextlib.nullcontext())):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_third_derivative():
    """The rerun is plain autograd: differentiable to any order."""
    run, inputs = _case("lstm", 2, lengths=LENGTHS)
    x = inputs[0]
    g, = torch.autograd.grad(run(*inputs)[0].pow(2).sum(), x, create_graph=True)
    gg, = torch.autograd.grad(g.pow(2).sum(), x, create_graph=True)
    ggg, = torch.autograd.grad(gg.sin().sum(), x)
    ref_run, _ = _case("lstm", 2, lengths=LENGTHS, backend="reference")
    r, = torch.autograd.grad(ref_run(*inputs)[0].pow(2).sum(), x, create_graph=True)
    rr, = torch.autograd.grad(r.pow(2).sum(), x, create_graph=True)
    rrr, = torch.autograd.grad(rr.sin().sum(), x)
    torch.testing.assert_close(ggg, rrr, rtol=0, atol=1e-10)


def test_a_backward_op_called_directly_has_no_derivative():
    """The backward ops themselves stay first-order: differentiating one raises (autograd's
    fallback would give zeros, with only a warning)."""
    torch.manual_seed(0)
    x_proj = torch.randn(3, 2, 16, requires_grad=True)
    h0, w_hh = torch.zeros(2, 16), torch.randn(16, 16)
    y, h_n = torch.ops.fused_rnn.elman_forward(x_proj, h0, w_hh, None, None, None, False, False)
    grad_x, *_ = torch.ops.fused_rnn.elman_backward(torch.ones_like(y), torch.zeros_like(h_n),
                                                    y, h0, w_hh.requires_grad_(), None, None,
                                                    False, False)
    with pytest.raises(RuntimeError, match="backward ops have no derivative"):
        torch.autograd.grad(grad_x.sum(), w_hh)


def test_without_the_python_package_a_second_derivative_raises_clearly():
    """The op library loaded from C++ alone has no implementation of the differentiable ops."""
    script = f"""
import torch
torch.ops.load_library({fused_rnn._ops._C.__file__!r})
x_proj = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
h0, w_hh = torch.zeros(2, 4, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
y, _ = torch.ops.fused_rnn.elman_forward(x_proj, h0, w_hh, None, None, None, False, False)
try:
    torch.autograd.grad(y.sum(), x_proj, create_graph=True)
except RuntimeError as error:
    print(error)
"""
    env = dict(os.environ, PYTHONPATH="")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         cwd="/", timeout=120)
    assert "needs the Python package" in out.stdout, out.stdout + out.stderr
