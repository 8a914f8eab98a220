"""The stepwise CUDA loops, forward and backward, replayed from graphs captured inside the ops
(FUSED_RNN_STEPWISE_GRAPHS=1, csrc/sequence/graphed_loop.h) against the eager loops: every cell
they serve, bfloat16 and float16 (float32 keeps the eager loop), lengths and
reverse, forward and backward, and calls after the first (new inputs through the same captured
graph)."""
import pytest
import torch

import fused_rnn

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]

MODULES = {
    "rnn_tanh": lambda *args, **kw: fused_rnn.RNN(*args, nonlinearity="tanh", **kw),
    "rnn_relu": lambda *args, **kw: fused_rnn.RNN(*args, nonlinearity="relu", **kw),
    "lstm": fused_rnn.LSTM,
    "peephole_lstm": fused_rnn.PeepholeLSTM,
    "gru": fused_rnn.GRU,
}
TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 3e-2}


def _set_graphs(monkeypatch, on):
    if on:
        monkeypatch.setenv("FUSED_RNN_STEPWISE_GRAPHS", "1")
    else:
        monkeypatch.delenv("FUSED_RNN_STEPWISE_GRAPHS", raising=False)


def _outputs_and_grads(module, x, lengths):
    x = x.detach().requires_grad_()
    output, state = module(x, lengths=lengths)
    states = list(state) if isinstance(state, tuple) else [state]
    loss = output.float().square().sum() + sum(s.float().sum() for s in states)
    grads = torch.autograd.grad(loss, [x, *module.parameters()])
    return [output.detach(), *[s.detach() for s in states]], list(grads)


def _relative_error(result, expected):
    return ((result.double() - expected.double()).norm()
            / expected.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
@pytest.mark.parametrize("cell", sorted(MODULES))
def test_graphed_forward_matches_eager(cell, bidirectional, dtype, monkeypatch):
    """Three calls through one captured graph per direction (the first captures it), each with
    new inputs and lengths, against the eager loop on the same inputs."""
    torch.manual_seed(31)
    steps, batch, inputs, hidden = 7, 5, 6, 24
    module = MODULES[cell](inputs, hidden, bidirectional=bidirectional, algo="stepwise")
    module = module.to(device="cuda", dtype=dtype)
    for call in range(3):
        x = torch.randn(steps, batch, inputs, device="cuda", dtype=dtype)
        lengths = torch.tensor([7, 3, 0, 6, 7]) if call != 1 else None
        _set_graphs(monkeypatch, True)
        graphed = _outputs_and_grads(module, x, lengths)
        _set_graphs(monkeypatch, False)
        eager = _outputs_and_grads(module, x, lengths)
        for kind in (0, 1):
            for i, (ours, theirs) in enumerate(zip(graphed[kind], eager[kind])):
                assert _relative_error(ours, theirs) < TOLERANCE[dtype], (call, kind, i)


def _launches(module, x, training):
    """(kernel launches, graph launches) of one forward (training: and backward), from the
    profiler's runtime events."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        if training:
            module(x.requires_grad_())[0].float().sum().backward()
        else:
            with torch.no_grad():
                module(x)
        torch.cuda.synchronize()
    names = [event.name for event in prof.events()]
    # cudaLaunchKernel(ExC), and cuLaunchKernel(Ex) where cuBLAS launches through the driver.
    return (sum("LaunchKernel" in name for name in names),
            sum(name.startswith("cudaGraphLaunch") for name in names))


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("dtype, graphed", [(torch.bfloat16, True), (torch.float32, False)],
                         ids=["bf16", "fp32_stays_eager"])
def test_replays_instead_of_launching_per_step(dtype, graphed, training, monkeypatch):
    """After the capturing call, a bfloat16 forward (and backward) launches one graph each and
    fewer kernels than it has steps (the projections, weight gradients and copies around the
    loop); float32 keeps launching two kernels a step."""
    torch.manual_seed(32)
    steps = 40
    module = fused_rnn.GRU(8, 32, algo="stepwise").to(device="cuda", dtype=dtype)
    x = torch.randn(steps, 4, 8, device="cuda", dtype=dtype)
    _set_graphs(monkeypatch, False)
    eager_kernels, _ = _launches(module, x.clone(), training)
    assert eager_kernels >= (2 if training else 1) * steps  # at least the step kernels
    _set_graphs(monkeypatch, True)
    _launches(module, x.clone(), training)  # captures
    kernels, graphs = _launches(module, x.clone(), training)
    if graphed:
        assert graphs == (2 if training else 1) and kernels < steps, (kernels, graphs)
    else:
        assert graphs == 0 and kernels >= (2 if training else 1) * steps, (kernels, graphs)


def test_more_shapes_than_the_cache_holds(monkeypatch):
    """Twelve sequence lengths (the cache keeps 4 captured loops a step type): every call right."""
    torch.manual_seed(33)
    module = fused_rnn.LSTM(4, 16, algo="stepwise").to(device="cuda", dtype=torch.bfloat16)
    for steps in list(range(2, 14)) + [2, 3]:
        x = torch.randn(steps, 3, 4, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            _set_graphs(monkeypatch, True)
            graphed, (h, c) = module(x)
            _set_graphs(monkeypatch, False)
            eager, (h_ref, c_ref) = module(x)
        for ours, theirs in ((graphed, eager), (h, h_ref), (c, c_ref)):
            assert _relative_error(ours, theirs) < TOLERANCE[torch.bfloat16], steps


def test_inside_a_callers_graph_capture(monkeypatch):
    """Inside torch.cuda.graph the op captures its eager loop into the caller's graph."""
    _set_graphs(monkeypatch, True)
    torch.manual_seed(34)
    module = fused_rnn.LSTM(4, 16, algo="stepwise").to(device="cuda", dtype=torch.bfloat16)
    static_x = torch.randn(5, 2, 4, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            module(static_x)  # warm-up off the graph
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y, _ = module(static_x)
        static_x.copy_(torch.randn_like(static_x))
        graph.replay()
        _set_graphs(monkeypatch, False)
        expected, _ = module(static_x)
    assert _relative_error(static_y, expected) < TOLERANCE[torch.bfloat16]
