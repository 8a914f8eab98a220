"""CUDA-only properties of the fused ops: half types, torch.compile, CUDA graphs, streams and
devices. The value tests of test_ops.py run on CUDA too; these are skipped without a GPU."""
import pytest
import torch

from fused_rnn import functional as F
from cases import CELLS, make_case, outputs_and_grads

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]


def _relative_errors(result, reference):
    return [((r.double() - e).norm() / e.norm().clamp_min(1e-30)).item()
            for r, e in zip(result, reference)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lengths", [None, [9, 4, 0, 7]], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_half_types_error_within_twice_torch_own(cell, lengths, dtype):
    """Error against float64 at most 2x the error of the same math in plain PyTorch in `dtype`."""
    torch.manual_seed(0)
    lengths = torch.tensor(lengths) if lengths is not None else None
    half = make_case(cell, 9, 4, 16, 32, device="cuda", lengths=lengths, dtype=dtype)
    # The float64 oracle on the same (half-rounded) values: the only error left is arithmetic.
    ref64 = outputs_and_grads(half.converted(torch.float64), "reference")
    fused = outputs_and_grads(half, "fused")
    torch_half = outputs_and_grads(half, "reference")
    floor = 2e-3 if dtype == torch.float16 else 1.5e-2
    for kind in (0, 1):  # outputs, gradients
        ours = _relative_errors(fused[kind], ref64[kind])
        theirs = _relative_errors(torch_half[kind], ref64[kind])
        for a, b in zip(ours, theirs):
            assert a <= 2 * b + floor, (ours, theirs)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "peephole_lstm"])
def test_torch_compile_fullgraph(cell):
    torch.manual_seed(1)
    case = make_case(cell, 5, 3, 4, 8, device="cuda", dtype=torch.float32)

    def loss_fn(x):
        return sum(o.square().sum() for o in case.run("fused", x=x))

    compiled = torch.compile(loss_fn, fullgraph=True)
    x = case.x.detach().requires_grad_()
    eager_loss = loss_fn(x)
    (eager_grad,) = torch.autograd.grad(eager_loss, x)
    compiled_loss = compiled(x)
    (compiled_grad,) = torch.autograd.grad(compiled_loss, x)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_cuda_graph_capture_forward_and_backward(cell):
    torch.manual_seed(2)
    case = make_case(cell, 6, 4, 5, 16, device="cuda", dtype=torch.float32)
    static_x = case.x.detach().clone().requires_grad_()

    def step():
        loss = sum(o.square().sum() for o in case.run("fused", x=static_x))
        return torch.autograd.grad(loss, [static_x] + list(case.weights.values()))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up (cuBLAS handles, workspaces) before capture
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_grads = step()
    new_x = torch.randn_like(static_x)
    static_x.data.copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    # Under capture algo='auto' runs the stepwise loop (the persistent kernel cannot be
    # captured), while eagerly it may take the persistent kernel, whose sums round in another
    # order: the replay must equal an eager stepwise run.
    case.algo = "stepwise"
    eager = step()
    for g, e in zip(static_grads, eager):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_runs_on_a_side_stream():
    """Every launch and GEMM goes to the current stream: a side stream gives the same numbers."""
    torch.manual_seed(3)
    case = make_case("lstm", 8, 4, 6, 32, device="cuda", dtype=torch.float32, requires_grad=False)
    expected = case.run("fused")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        result = case.run("fused")
    torch.cuda.current_stream().wait_stream(stream)
    for r, e in zip(result, expected):
        torch.testing.assert_close(r, e)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("cell", CELLS)
def test_tensors_on_a_non_current_device(cell):
    torch.manual_seed(4)
    case = make_case(cell, 5, 3, 4, 8, device="cuda:1", lengths=torch.tensor([5, 2, 0]))
    with torch.cuda.device(0):
        fused = outputs_and_grads(case, "fused")
    ref = outputs_and_grads(case, "reference")
    for a, b in zip(fused[0] + fused[1], ref[0] + ref[1]):
        assert a.device == torch.device("cuda:1")
        torch.testing.assert_close(a, b)


def test_lengths_on_the_device_and_on_the_host_agree():
    torch.manual_seed(5)
    case = make_case("gru", 6, 3, 4, 8, device="cuda", requires_grad=False,
                     lengths=torch.tensor([6, 1, 3]))
    host = case.run("fused")
    case.lengths = case.lengths.cuda()
    device = case.run("fused")
    for a, b in zip(host, device):
        torch.testing.assert_close(a, b)
