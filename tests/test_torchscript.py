"""TorchScript: torch.jit.script and torch.jit.trace of every module and cell give the eager
module's numbers (oracle: the eager fused module, itself tested against torch.nn), and a scripted
model saved and loaded in a fresh process gives them too."""
import subprocess
import sys
import textwrap

import pytest
import torch

import fused_rnn

MODULES = {
    "lstm": lambda: fused_rnn.LSTM(3, 8, num_layers=2, bidirectional=True),
    "lstm_proj": lambda: fused_rnn.LSTM(3, 8, proj_size=4, batch_first=True),
    "peephole_lstm": lambda: fused_rnn.PeepholeLSTM(3, 8, num_layers=2),
    "gru": lambda: fused_rnn.GRU(3, 8, bidirectional=True, batch_first=True),
    "gru_reset_before": lambda: fused_rnn.GRU(3, 8, reset_after=False),
    "rnn_relu": lambda: fused_rnn.RNN(3, 8, nonlinearity="relu", num_layers=2),
}
CELLS = {
    "lstm": lambda: fused_rnn.LSTMCell(3, 8), "peephole_lstm": lambda: fused_rnn.PeepholeLSTMCell(3, 8),
    "gru": lambda: fused_rnn.GRUCell(3, 8), "gru_reset_before": lambda: fused_rnn.GRUCell(3, 8, reset_after=False),
    "rnn": lambda: fused_rnn.RNNCell(3, 8, nonlinearity="relu"),
}


def random_state(module, batch, unbatched=False):
    layers = module.num_layers * (2 if module.bidirectional else 1)
    shape = (layers,) if unbatched else (layers, batch)
    h = torch.randn(*shape, module.proj_size or module.hidden_size)
    if isinstance(module, torch.nn.LSTM):
        return h, torch.randn(*shape, module.hidden_size)
    return h


def flat(result):
    out, state = result
    return [out] + (list(state) if isinstance(state, tuple) else [state])


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("mode", ["plain", "lengths_hx", "unbatched", "train_dropout"])
def test_scripted_module_matches_eager(kind, mode):
    torch.manual_seed(0)
    module = MODULES[kind]()
    scripted = torch.jit.script(module)
    assert set(scripted.state_dict()) == set(module.state_dict())
    steps, batch = 6, 3
    x = torch.randn((batch, steps, 3) if module.batch_first else (steps, batch, 3))
    if mode == "plain":
        args, kwargs = (x,), {}
    elif mode == "lengths_hx":
        args, kwargs = (x, random_state(module, batch)), {"lengths": torch.tensor([6, 2, 0])}
    elif mode == "unbatched":
        args, kwargs = (torch.randn(steps, 3), random_state(module, 1, unbatched=True)), {}
    else:  # dropouts are drawn from the same generator state in both
        module = fused_rnn.LSTM(3, 8, num_layers=2, dropout=0.3, input_dropout=0.2,
                                state_dropout=0.4, output_dropout=0.1).train()
        scripted = torch.jit.script(module)
        args, kwargs = (x,), {}
    torch.manual_seed(5)
    got = flat(scripted(*args, **kwargs))
    torch.manual_seed(5)
    expected = flat(module(*args, **kwargs))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("batched", [True, False])
def test_scripted_cell_matches_eager(kind, with_hx, batched):
    torch.manual_seed(1)
    cell = CELLS[kind]()
    scripted = torch.jit.script(cell)
    x = torch.randn(4, 3) if batched else torch.randn(3)
    hx = None
    if with_hx:
        shape = (4, 8) if batched else (8,)
        hx = (torch.randn(shape), torch.randn(shape)) if "lstm" in kind else torch.randn(shape)
    got, expected = scripted(x, hx), cell(x, hx)
    for g, e in zip(got if isinstance(got, tuple) else (got,),
                    expected if isinstance(expected, tuple) else (expected,)):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_scripted_module_trains():
    """Gradients flow through the scripted module to the (shared) parameters."""
    torch.manual_seed(2)
    module = fused_rnn.GRU(3, 8, num_layers=2)
    scripted = torch.jit.script(module)
    x = torch.randn(5, 2, 3)
    scripted(x)[0].sum().backward()
    got = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    module(x)[0].sum().backward()
    for g, p in zip(got, module.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_scripted_module_checks_its_inputs():
    scripted = torch.jit.script(fused_rnn.LSTM(3, 8))
    with pytest.raises(Exception, match="lengths must lie in"):
        scripted(torch.randn(4, 2, 3), None, torch.tensor([5, 1]))
    with pytest.raises(Exception, match=r"Expected hidden\[0\] size"):
        scripted(torch.randn(4, 2, 3), (torch.zeros(1, 3, 8), torch.zeros(1, 2, 8)))


def test_unscriptable_configurations_say_why():
    with pytest.raises(ValueError, match="backend='fused'"):
        torch.jit.script(fused_rnn.LSTM(3, 8, backend="reference"))


@pytest.mark.parametrize("kind", list(MODULES))
def test_traced_module_matches_eager_at_other_sizes(kind):
    torch.manual_seed(3)
    module = MODULES[kind]()
    shape = (lambda t, b: (b, t, 3)) if module.batch_first else (lambda t, b: (t, b, 3))
    traced = torch.jit.trace(module, (torch.randn(shape(5, 2)),), check_trace=False)
    x = torch.randn(shape(7, 4))
    for g, e in zip(flat(traced(x)), flat(module(x))):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


@pytest.mark.parametrize("kind", list(CELLS))
def test_traced_cell_matches_eager(kind):
    torch.manual_seed(4)
    cell = CELLS[kind]()
    traced = torch.jit.trace(cell, (torch.randn(2, 3),), check_trace=False)
    x = torch.randn(5, 3)
    got, expected = traced(x), cell(x)
    for g, e in zip(got if isinstance(got, tuple) else (got,),
                    expected if isinstance(expected, tuple) else (expected,)):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_saved_scripted_model_in_a_fresh_process(tmp_path):
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), fused_rnn.LSTM(3, 8, num_layers=2))
    path = tmp_path / "model.pt"
    torch.jit.script(model).save(str(path))
    x = torch.randn(6, 2, 4)
    torch.save((x, model(x)[0]), tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import torch, fused_rnn  # fused_rnn registers the ops the saved model calls
        x, expected = torch.load({str(tmp_path / 'io.pt')!r})
        model = torch.jit.load({str(path)!r})
        torch.testing.assert_close(model(x)[0], expected, rtol=0, atol=0)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
