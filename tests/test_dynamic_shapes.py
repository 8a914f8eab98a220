"""Symbolic shapes end to end: torch.compile with dynamic shapes makes one graph for every
sequence length and batch size (with and without lengths, forward and backward), torch.export
with dynamic T and B gives a program that runs at other sizes, and an AOTInductor package with a
dynamic batch runs in a fresh process. The oracle is always the eager module."""
import subprocess
import sys
import textwrap

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from torch.export import Dim, export

import fused_rnn

# The first change alters both T and B: default compile (dynamic=None) makes each dimension that
# changed symbolic at its first recompile, so later sizes reuse that graph.
SIZES = [(5, 3), (6, 4), (7, 4), (9, 2), (11, 5), (4, 6), (13, 3), (8, 8), (10, 7), (12, 2)]
MODULES = {
    "lstm": lambda: fused_rnn.LSTM(6, 16, num_layers=2, bidirectional=True),
    "lstm_proj": lambda: fused_rnn.LSTM(6, 16, proj_size=5),
    "peephole_lstm": lambda: fused_rnn.PeepholeLSTM(6, 16),
    "gru": lambda: fused_rnn.GRU(6, 16, num_layers=2),
    "gru_reset_before": lambda: fused_rnn.GRU(6, 16, reset_after=False),
    "rnn": lambda: fused_rnn.RNN(6, 16, batch_first=True),
}


def graphs_made(counter) -> int:
    """Graphs that compute something (dynamo also hands the backend an empty graph for a frame
    around the module call, which costs nothing and is not a recompilation)."""
    return sum(any(node.op == "call_function" for node in graph.graph.nodes)
               for graph in counter.graphs)


def inputs(module, steps, batch, with_lengths, requires_grad=False):
    shape = (batch, steps, 6) if module.batch_first else (steps, batch, 6)
    x = torch.randn(shape, requires_grad=requires_grad)
    lengths = torch.randint(1, steps + 1, (batch,)) if with_lengths else None
    return x, lengths


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("dynamic", [True, None])
def test_compile_makes_at_most_two_graphs(kind, with_lengths, dynamic):
    """Ten different (T, B): at most two graphs (dynamic=None compiles a static graph first and
    a dynamic one at the first change), fullgraph, forward and backward equal to eager."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = MODULES[kind]()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(module, backend=counter, fullgraph=True, dynamic=dynamic)
    for steps, batch in SIZES:
        x, lengths = inputs(module, steps, batch, with_lengths, requires_grad=True)
        out, _ = compiled(x, lengths=lengths)
        (grad_compiled,) = torch.autograd.grad(out.sum(), x)
        expected, _ = module(x, lengths=lengths)
        (grad_eager,) = torch.autograd.grad(expected.sum(), x)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(grad_compiled, grad_eager)
    assert graphs_made(counter) <= (1 if dynamic else 2)


def test_inductor_dynamic_compile_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(1)
    module = fused_rnn.LSTM(6, 16)
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(module, backend=counter, fullgraph=True, dynamic=True)
    for steps, batch in SIZES[:4]:
        x, lengths = inputs(module, steps, batch, True)
        torch.testing.assert_close(compiled(x, lengths=lengths)[0], module(x, lengths=lengths)[0])
    assert graphs_made(counter) == 1


def test_compiled_lengths_are_still_checked():
    """Under compile the range check runs inside the graph (no graph break) and still raises."""
    torch._dynamo.reset()
    module = fused_rnn.GRU(6, 8)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True, dynamic=True)
    x = torch.randn(5, 2, 6)
    compiled(x, lengths=torch.tensor([5, 1]))
    with pytest.raises(RuntimeError, match="lengths must lie in"):
        compiled(x, lengths=torch.tensor([6, 1]))


class WithLengths(torch.nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, lengths):
        out, state = self.rnn(x, lengths=lengths)
        return (out,) + (state if isinstance(state, tuple) else (state,))


@pytest.mark.parametrize("kind", list(MODULES))
def test_export_with_dynamic_steps_and_batch(kind):
    torch.manual_seed(2)
    module = WithLengths(MODULES[kind]().eval())
    x, lengths = inputs(module.rnn, 5, 3, True)
    steps_dim, batch_dim = (1, 0) if module.rnn.batch_first else (0, 1)
    program = export(module, (x, lengths), dynamic_shapes={
        "x": {steps_dim: Dim("T", min=2, max=4096), batch_dim: Dim("B", min=2, max=4096)},
        "lengths": {0: Dim("B", min=2, max=4096)}})
    for steps, batch in [(9, 4), (2, 7), (17, 2)]:
        x, lengths = inputs(module.rnn, steps, batch, True)
        for got, expected in zip(program.module()(x, lengths), module(x, lengths)):
            torch.testing.assert_close(got, expected)


@pytest.mark.slow
def test_aot_inductor_dynamic_batch_in_a_fresh_process(tmp_path):
    """aoti_compile_and_package with a dynamic batch; aoti_load_package in a new process that
    imports fused_rnn (which registers the ops the package calls) gives eager's numbers."""
    torch.manual_seed(3)
    module = fused_rnn.GRU(6, 16, num_layers=2).eval()
    example = torch.randn(6, 3, 6)
    program = export(module, (example,),
                     dynamic_shapes={"input": {1: Dim("B", min=2, max=4096)}})
    package = torch._inductor.aoti_compile_and_package(program,
                                                       package_path=str(tmp_path / "gru.pt2"))
    x = torch.randn(6, 5, 6)
    torch.save((x, module(x)[0]), tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import torch, fused_rnn
        x, expected = torch.load({str(tmp_path / 'io.pt')!r})
        run = torch._inductor.aoti_load_package({package!r})
        torch.testing.assert_close(run(x)[0], expected)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("torch_type", [torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN])
def test_torch_rnns_still_compile_to_eager_numbers(torch_type):
    """fused_rnn sets Dynamo's allow_rnn (its modules are nn.LSTM/GRU/RNN instances), which
    makes Dynamo trace torch.nn's own RNNs too: they must still give eager's numbers."""
    assert torch._dynamo.config.allow_rnn
    torch._dynamo.reset()
    torch.manual_seed(6)
    module = torch_type(6, 8, num_layers=2, bidirectional=True)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True, dynamic=True)
    for steps, batch in SIZES[:3]:
        x = torch.randn(steps, batch, 6, requires_grad=True)
        out = compiled(x)[0]
        (grad,) = torch.autograd.grad(out.sum(), x)
        expected = module(x)[0]
        (grad_eager,) = torch.autograd.grad(expected.sum(), x)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(grad, grad_eager)
