"""Backward allocates no sequence-sized tensor it does not need: no zero gradients for the
outputs that only carry saved activations (gates, c_all, hh_n), which autograd would otherwise
fill for every call (50 MiB each for LSTM `mid`); no copy of a grad_y broadcast over time, no
rebuilt h_{t-1}, no reduction whose CUDA temporary outgrows the buffers. A training step's
peak is bounded by the buffers it needs (CPU through the profiler, CUDA through the allocator)."""
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fused_rnn

ZERO_FILLS = {torch.ops.aten.zeros.default, torch.ops.aten.zeros_like.default,
              torch.ops.aten.new_zeros.default, torch.ops.aten.zero_.default,
              torch.ops.aten.fill_.Scalar, torch.ops.aten.full.default,
              torch.ops.aten.new_full.default}


class ZeroFillLog(TorchDispatchMode):
    """Records the shapes of the tensors every zero-filling op produces."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in ZERO_FILLS and isinstance(out, torch.Tensor):
            self.shapes.append(tuple(out.shape))
        return out


@pytest.mark.parametrize("module", [fused_rnn.LSTM, fused_rnn.GRU, fused_rnn.RNN, fused_rnn.PeepholeLSTM])
def test_backward_fills_no_sequence_sized_zeros(module):
    steps, batch, hidden = 6, 3, 16
    rnn = module(8, hidden)
    x = torch.randn(steps, batch, 8, requires_grad=True)
    y, _ = rnn(x)
    loss = y.sum()
    log = ZeroFillLog()
    with log:
        loss.backward()
    large = [s for s in log.shapes if len(s) == 3 and s[0] == steps]
    assert not large, f"zero-filled sequence tensors in backward: {large}"
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_only_final_state_used_still_gets_gradients():
    """With materialised zero gradients switched off, an unused output sequence must still work."""
    torch.manual_seed(0)
    rnn = fused_rnn.LSTM(4, 16)
    reference = torch.nn.LSTM(4, 16)
    reference.load_state_dict(rnn.state_dict())
    x = torch.randn(5, 2, 4, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    _, (h, c) = rnn(x)
    _, (h_ref, c_ref) = reference(x_ref)
    (h.sum() + 2 * c.sum()).backward()
    (h_ref.sum() + 2 * c_ref.sum()).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- peak training memory
# One training step as the benchmark times it (forward, y.sum(), autograd.grad of x and of every
# parameter), algo="stepwise" (the CUDA path's buffers), against the buffers it cannot do
# without, counted in [T, B, H] sequences:
#   forward:  x_proj (G) and what backward keeps: y (1), saved gates (G), LSTM c_all (1, float);
#             GRU hh_n (1).
#   backward: the saved activations, d x_proj (G), GRU's d (W_hh h) (G), and W_hh's gradient.
# On top of that only [B, ·] steps and such may be alive. A sequence-sized copy (grad_y made
# contiguous, h_{t-1} rebuilt from y) or a second W_hh-sized product exceeds the slack.
STEPS, BATCH, INPUT, HIDDEN = 64, 8, 32, 64
# module, G, [T, B, H] sequences in the input's dtype alive in forward / in backward, and in
# float32 in both (LSTM c_all)
CELLS = {
    "lstm": (fused_rnn.LSTM, 4, 4 + 1 + 4, 1 + 4 + 4, 1),  # fwd x_proj y gates; bwd y gates d
    "gru": (fused_rnn.GRU, 3, 3 + 1 + 3 + 1, 1 + 3 + 1 + 3 + 3, 0),  # + hh_n; bwd + d (W_hh h)
    "rnn": (fused_rnn.RNN, 1, 1 + 1, 1 + 1, 0),  # fwd x_proj y; bwd y d
}


def _needed_bytes(cell: str, dtype: torch.dtype) -> int:
    _, gates, forward, backward, in_float = CELLS[cell]
    size = torch.tensor([], dtype=dtype).element_size()
    sequence = STEPS * BATCH * HIDDEN
    weight_gradient = gates * HIDDEN * HIDDEN * size
    return (max(forward * sequence * size, backward * sequence * size + weight_gradient)
            + in_float * sequence * 4)


def _slack_bytes(dtype: torch.dtype) -> int:
    """What else may be alive at the peak: half a [T, B, H] sequence."""
    return STEPS * BATCH * HIDDEN * torch.tensor([], dtype=dtype).element_size() // 2


def _training_step(cell: str, dtype: torch.dtype, device: str):
    torch.manual_seed(0)
    module = CELLS[cell][0](INPUT, HIDDEN, algo="stepwise").to(device=device, dtype=dtype)
    x = torch.randn(STEPS, BATCH, INPUT, device=device, dtype=dtype, requires_grad=True)
    inputs = [x, *module.parameters()]
    return lambda: torch.autograd.grad(module(x)[0].sum(), inputs)


def _cpu_peak_bytes(step) -> int:
    """The highest total of live allocations during step() (its result freed at the end), from
    the profiler's allocation events."""
    from torch._C._profiler import _EventType
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        result = step()
        del result
    sizes = []

    def walk(event):
        if event.tag == _EventType.Allocation:
            sizes.append((event.start_time_ns, event.extra_fields.alloc_size))
        for child in event.children:
            walk(child)
    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    total = peak = 0
    for _, size in sorted(sizes, key=lambda entry: entry[0]):
        total += size
        peak = max(peak, total)
    return peak


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_training_peak_is_the_needed_buffers_cpu(cell, monkeypatch):
    # float32 only: ATen's CPU GEMM copies bfloat16 operands to float, which CUDA's does not.
    dtype = torch.float32
    # Sequence buffers from at::empty, not from the CPU pool, so that the profiler sees them.
    monkeypatch.setenv("FUSED_RNN_CPU_BUFFER_POOL", "0")
    step = _training_step(cell, dtype, "cpu")
    step()
    peak = _cpu_peak_bytes(step)
    needed = _needed_bytes(cell, dtype)
    slack = _slack_bytes(dtype)
    assert peak <= needed + slack, f"peak {peak} B, needed {needed} B (+ {slack} B slack)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_peak_is_the_needed_buffers_cuda(cell, dtype):
    """As on the CPU, plus what only CUDA allocates: a reduction over T·B rows stages partial
    sums in a temporary that may be larger than all the buffers together."""
    step = _training_step(cell, dtype, "cuda")
    # cuBLAS workspaces and such, once; for bfloat16 the second call captures the graphed loops,
    # whose buffers stay with their cache (csrc/sequence/graphed_loop.h): the measured call
    # replays them.
    step()
    step()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = step()
    torch.cuda.synchronize()
    del result
    peak = torch.cuda.max_memory_allocated() - before
    needed = _needed_bytes(cell, dtype)
    # The caching allocator rounds every block up to 512 bytes.
    slack = _slack_bytes(dtype) + 64 * 512
    assert peak <= needed + slack, f"peak {peak} B, needed {needed} B (+ {slack} B slack)"


def test_bias_gradients_sum_few_rows_per_pass():
    """The bias gradients sum T·B rows in passes of at most 256 rows per output (a sum of all
    of them at once makes CUDA stage partial sums in a temporary of 4·N·blocks·128 bytes)."""
    steps = 300
    rnn = fused_rnn.LSTM(8, 16, algo="stepwise")
    x = torch.randn(steps, 4, 8, requires_grad=True)
    loss = rnn(x)[0].sum()
    with torch.profiler.profile(record_shapes=True) as prof:
        loss.backward()
    rows = []
    for event in prof.events():
        if event.name == "aten::sum" and event.input_shapes and event.input_shapes[0]:
            shape, dims = event.input_shapes[0], event.concrete_inputs[1]
            dims = range(len(shape)) if dims in (None, []) else dims
            rows.append(math.prod(shape[d] for d in dims))
    assert rows, "no reduction seen"
    assert max(rows) <= 256, f"a reduction summed {max(rows)} rows per output"


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(300, 4, 24), (256, 7), (1000, 3), (5, 2, 0)])
def test_column_sums_op_equals_a_float64_sum(shape, dtype, device):
    """The op behind the bias gradients: passes of 256 rows (and the leftover rows) add up to
    the plain sum over every dimension but the last."""
    torch.manual_seed(0)
    d = torch.randn(shape, device=device).to(dtype)
    result = torch.ops.fused_rnn.column_sums(d)
    expected = d.double().sum(dim=tuple(range(d.dim() - 1)))
    assert result.dtype == dtype and result.shape == shape[-1:]
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(result.double(), expected, rtol=tolerance, atol=tolerance)
    torch.library.opcheck(torch.ops.fused_rnn.column_sums, (d,))


@pytest.mark.parametrize("module", [fused_rnn.LSTM, fused_rnn.GRU, fused_rnn.RNN, fused_rnn.PeepholeLSTM])
@pytest.mark.parametrize("algo", ["stepwise", "auto"])
def test_gradient_broadcast_over_time_is_read_in_place(module, algo):
    """A grad_y with stride 0 in time (y.sum()'s, or any (B, H) gradient expanded over T) is read
    as one step for every t, not copied T times; the gradients are those of the same values
    materialised."""
    torch.manual_seed(0)
    steps, batch, hidden = 7, 3, 16
    rnn = module(8, hidden, algo=algo)
    x = torch.randn(steps, batch, 8, requires_grad=True)
    inputs = [x, *rnn.parameters()]
    y, _ = rnn(x)
    grad_y = torch.randn(batch, hidden).expand(steps, batch, hidden)
    broadcast = torch.autograd.grad(y, inputs, grad_y, retain_graph=True)
    materialised = torch.autograd.grad(y, inputs, grad_y.contiguous())
    for a, b in zip(broadcast, materialised):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
