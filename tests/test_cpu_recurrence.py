"""The CPU's packed, threaded recurrence (csrc/cpu/recurrence.h) against the oracle.

It runs for float32 sequences whose hidden size is a multiple of 16 on CPUs with AVX2 + FMA, with
one worker per thread; the other op tests run single-threaded on small odd sizes, so they take
the per-step path. Here: several threads, sizes that split into several panels, row counts that
are not multiples of the 6-row register tile, lengths and reverse, forward and backward; and the
float SIMD steps' sigmoid and tanh against float64."""
import pytest
import torch

import fused_rnn
from cases import make_case
from test_ops import assert_matches_reference

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "peephole_lstm", "gru"]


# The packed recurrence runs where the packed GEMM does (AVX2 + FMA); elsewhere algo="persistent"
# raises (tests/test_cpu_isa.py runs this file at the scalar level too).
needs_packed = pytest.mark.skipif(fused_rnn.build_info()["cpu_simd"] == "scalar",
                                  reason="the packed recurrence needs AVX2 + FMA")

# The `threads` fixture (conftest.py) runs each test with each of these thread counts.
with_threads = pytest.mark.parametrize("threads", [2, 3], indirect=True,
                                       ids=lambda n: f"{n}threads")


def test_build_runs_parallel_loops():
    """Without OpenMP in the extension's own build, at::parallel_for runs serially."""
    assert fused_rnn.build_info()["openmp"]


# (2, 3, 8, 1040): the GEMMs' K (H forward, gates * H backward) spans two or more K blocks
# (kBlockK = 1024 in csrc/cpu/packed_layout.h).
# (3, 14, 8, 256) and (3, 16, 8, 256): with 2 threads a row split of 7 or 8 rows a thread over
# a W_hh beyond the L2 (LSTM 1 MiB, GRU 768 KiB).
@needs_packed
@with_threads
@pytest.mark.parametrize("shape", [(5, 7, 9, 32), (4, 13, 16, 48), (3, 1, 8, 128), (2, 3, 8, 1040),
                                   (3, 14, 8, 256), (3, 16, 8, 256)],
                         ids=str)
@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference(cell, shape, threads):
    torch.manual_seed(3)
    case = make_case(cell, *shape, dtype=torch.float32)
    case.algo = "persistent"  # auto would leave these short sequences to the stepwise loop
    assert_matches_reference(case, torch.float32)


# The workers split a sequence by rows (each owns whole batch entries) where W_hh is small and
# there are at least 4 rows for every worker that a split by panels (hidden units) would keep
# busy (csrc/cpu/recurrence.h, recurrence_split); else by panels. With 2 or 3 threads and
# H = 64 the forward splits 7 rows by panels and 13 by rows (the backward's 64-unit panels make
# one panel here: one worker for 7 rows, rows for 13).
@needs_packed
@with_threads
@pytest.mark.parametrize("lengths", [[6, 0, 3, 1, 6, 5, 2], [6, 0, 3, 1, 6, 5, 2, 6, 4, 0, 1, 6, 3]],
                         ids=["panel_split", "row_split"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_lengths_and_reverse(cell, reverse, lengths, threads):
    torch.manual_seed(4)
    lengths = torch.tensor(lengths)
    case = make_case(cell, 6, len(lengths), 5, 64, dtype=torch.float32, lengths=lengths,
                     reverse=reverse)
    case.algo = "persistent"
    assert_matches_reference(case, torch.float32)


# The loops the packed recurrence does not run (algo="stepwise", state dropout, LSTM projection,
# the reset_before GRU) multiply each step with W packed once (StepGemm, csrc/sequence/gemm.h)
# when the product's width is a multiple of 16 and the sequence has T·B >= 128 rows: hidden 32
# and 48, projection 16 (lstm_proj's W_hr and W_hh), 10 x 13 rows (not a multiple of the 6-row
# tile), every thread count.
@with_threads
@pytest.mark.parametrize("state_dropout", [0.0, 0.3], ids=["", "state_dropout"])
@pytest.mark.parametrize("hidden", [32, 48])
@pytest.mark.parametrize("cell", CELLS + ["lstm_proj", "gru_reset_before"])
def test_step_gemm_loops_match_reference(cell, hidden, state_dropout, threads):
    torch.manual_seed(6)
    lengths = torch.tensor([10, 2, 10, 0, 7, 1, 3, 10, 9, 5, 10, 4, 8])
    case = make_case(cell, 10, 13, 9, hidden, dtype=torch.float32, proj=16, lengths=lengths,
                     state_dropout=state_dropout)
    case.algo = "auto" if cell in ("lstm_proj", "gru_reset_before") or state_dropout else "stepwise"
    assert_matches_reference(case, torch.float32)


def step_gemm_calls(case) -> int:
    """How many ATen matrix products a forward of `case` made: the stepwise loop makes one a
    step (StepGemm, csrc/sequence/gemm.h), the packed recurrence none (it has its own GEMM)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        case.run("fused")
    return sum(event.name == "aten::mm" for event in prof.events())


@needs_packed
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_auto_packs_only_long_enough_sequences(cell):
    """Below T·B = 128 rows auto runs the stepwise loop with ATen's GEMM, not the packed
    recurrence (packing W_hh costs about as much as ~100 rows gain): a cell called once per token
    must not pack W_hh (and W_ih) on every call. The profiler's count of ATen products tells
    which loop ran."""
    for steps, batch in [(1, 1), (3, 42)]:
        torch.manual_seed(7)
        case = make_case(cell, steps, batch, 16, 256, dtype=torch.float32, requires_grad=False)
        calls = {}
        for algo in ("auto", "stepwise", "persistent"):
            case.algo = algo
            calls[algo] = step_gemm_calls(case)
        assert calls["auto"] == calls["stepwise"] == steps, (steps, batch, calls)
        assert calls["persistent"] == 0, (steps, batch, calls)


@needs_packed
@pytest.mark.parametrize("batch", [3, 10], ids=["panel_split", "row_split"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_threads_agree(cell, batch):
    """The panels or rows a thread owns change with the thread count; the numbers must not."""
    torch.manual_seed(5)
    case = make_case(cell, 7, batch, 6, 96, dtype=torch.float32)
    case.algo = "persistent"
    before = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs = case.run("fused")
            results.append([o.detach() for o in outs])
    finally:
        torch.set_num_threads(before)
    # The packed recurrence gives each panel and row the same arithmetic whichever thread owns
    # it (a row's sums run over k in the same order in any register tile).
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_reused_buffers_never_alias_live_tensors():
    """Large CPU buffers are kept for reuse when freed (cpu/buffer_pool.h): a tensor still alive
    must keep its values while later calls run, later calls must still be right, and
    release_cpu_buffers() frees what is kept."""
    torch.manual_seed(6)
    lstm = fused_rnn.LSTM(64, 128)  # y: 2 MiB, saved gates: 8 MiB per call
    oracle = torch.nn.LSTM(64, 128)
    oracle.load_state_dict(lstm.state_dict())
    x1 = torch.randn(64, 64, 64)
    y1, _ = lstm(x1)
    kept = y1.detach().clone()
    for _ in range(3):
        x2 = torch.randn(64, 64, 64)
        y2, _ = lstm(x2)
        y2.sum().backward()
        torch.testing.assert_close(y2, oracle(x2)[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y1.detach(), kept, rtol=0, atol=0)
    del y1, y2
    assert fused_rnn.release_cpu_buffers() > 0
    assert fused_rnn.release_cpu_buffers() == 0
    if not torch.cuda.is_available():  # nothing captured graphs (CUDA: test_cuda_graphed_loop.py)
        assert fused_rnn.release_cuda_graphs() == 0


# Pre-activations for the activation tests: dense over [-20, 20], where sigmoid and tanh change,
# and tiny magnitudes, where tanh(x) = x must keep its relative accuracy. [B, H] with H = 64.
def _activation_inputs():
    tiny = torch.logspace(-30, 0, 8192, dtype=torch.float64)
    values = torch.cat([torch.linspace(-20, 20, 2**18, dtype=torch.float64), tiny, -tiny])
    return values.float().reshape(-1, 64)


def _activations(cell, a):
    """Runs one step of `cell` whose every gate's pre-activation is `a` [B, H] (w_hh = 0, so the
    recurrent GEMM adds exactly 0); returns (sigmoid gates, tanh gates) as the kernels computed
    them, each [B, H]."""
    B, H = a.shape
    ops = torch.ops.fused_rnn
    h0 = torch.zeros(B, H)
    if cell == "rnn_tanh":
        y, _ = ops.elman_forward(a[None], h0, torch.zeros(H, H), None, None, None, False, False)
        return [], [y[0]]
    if cell == "lstm":
        w_hh = torch.zeros(4 * H, H)
        _, _, _, gates, _ = ops.lstm_forward(a.repeat(1, 4)[None], h0, h0, w_hh, None, None, None,
                                             None, None, False, True)
        i, f, g, o = gates[0].chunk(4, dim=1)
        return [i, f, o], [g]
    w_hh = torch.zeros(3 * H, H)
    _, _, gates, _ = ops.gru_forward(a.repeat(1, 3)[None], h0, w_hh, None, None, None, False, True,
                                     True)
    r, z, n = gates[0].chunk(3, dim=1)  # n = tanh(a_n + r (W_hn h + b_hn)) = tanh(a_n)
    return [r, z], [n]


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_activations_match_float64(cell):
    """The float SIMD steps build sigmoid and tanh on a fast exp (cell_math.h): within 1e-6 of
    the float64 value, relative to it, over the whole range and for tiny inputs."""
    a = _activation_inputs()
    sigmoids, tanhs = _activations(cell, a)
    for actual, fn in [(s, torch.sigmoid) for s in sigmoids] + [(t, torch.tanh) for t in tanhs]:
        expected = fn(a.double())
        error = (actual.double() - expected).abs() / expected.abs()
        assert error.max().item() <= 1e-6, (fn.__name__, a.flatten()[error.argmax()].item())


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_activations_of_special_values(cell):
    """NaN stays NaN (a diverged model must not look healthy); infinities saturate."""
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, 100.0, -100.0])
    a = specials[:, None].expand(6, 16).contiguous()  # row b: 16 copies of specials[b]
    sigmoids, tanhs = _activations(cell, a)
    for actual, fn in [(s, torch.sigmoid) for s in sigmoids] + [(t, torch.tanh) for t in tanhs]:
        torch.testing.assert_close(actual, fn(a), rtol=0, atol=0, equal_nan=True)
