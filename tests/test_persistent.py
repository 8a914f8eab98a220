"""algo='persistent' against the float64 oracle and against algo='stepwise', on every cell it runs,
and its refusals. On CUDA it is the cooperative kernel that keeps W_hh in shared memory
(csrc/cuda/persistent.cuh); on the CPU the packed, threaded recurrence (float32, AVX2 + FMA)."""
import dataclasses

import pytest
import torch

import fused_rnn
from fused_rnn import functional as F
from cases import make_case, outputs_and_grads

PERSISTENT_CELLS = ["rnn_tanh", "rnn_relu", "lstm", "peephole_lstm", "gru"]
CPU_PERSISTENT = fused_rnn.build_info().get("cpu_simd") != "scalar"
DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(not CPU_PERSISTENT,
                                                        reason="the CPU's persistent path needs AVX2 + FMA")),
           pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
               not torch.cuda.is_available(), reason="no CUDA GPU")])]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def _relative_error(result, expected):
    return ((result.double().cpu() - expected.double().cpu()).norm()
            / expected.double().cpu().norm().clamp_min(1e-30)).item()


def _assert_agree(result, expected, tolerance, what):
    for kind, (ours, theirs) in enumerate(zip(result, expected)):
        for i, (a, b) in enumerate(zip(ours, theirs)):
            error = _relative_error(a, b)
            assert error < tolerance, f"{what}: {'outputs' if kind == 0 else 'grads'}[{i}] rel err {error:.2e}"


def _with_algo(case, algo):
    return dataclasses.replace(case, algo=algo)


def _assert_persistent_matches_oracle_and_stepwise(case, what):
    persistent = outputs_and_grads(_with_algo(case, "persistent"), "fused")
    stepwise = outputs_and_grads(_with_algo(case, "stepwise"), "fused")
    oracle = outputs_and_grads(case.converted(torch.float64, "cpu"), "reference")
    _assert_agree(persistent, oracle, 2e-5, f"{what} vs float64 oracle")
    _assert_agree(persistent, stepwise, 2e-5, f"{what} vs stepwise")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [None, [7, 3, 0, 7, 5]], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", PERSISTENT_CELLS)
@pytest.mark.parametrize("device", DEVICES)
def test_float32_matches_oracle_and_stepwise(device, cell, lengths, reverse):
    torch.manual_seed(0)
    lengths = torch.tensor(lengths) if lengths is not None else None
    case = make_case(cell, 7, 5, 6, 32, dtype=torch.float32, device=device, lengths=lengths,
                     reverse=reverse)
    _assert_persistent_matches_oracle_and_stepwise(case, "persistent")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("cell", PERSISTENT_CELLS)
def test_cuda_float64_matches_oracle(cell):
    torch.manual_seed(1)
    case = make_case(cell, 6, 3, 5, 19, dtype=torch.float64, device="cuda",
                     lengths=torch.tensor([6, 2, 4]))
    persistent = outputs_and_grads(_with_algo(case, "persistent"), "fused")
    oracle = outputs_and_grads(case.converted(torch.float64, "cpu"), "reference")
    _assert_agree(persistent, oracle, 1e-10, "float64 persistent vs oracle")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cell", PERSISTENT_CELLS)
def test_cuda_half_types_as_accurate_as_stepwise(cell, dtype):
    """Against float64 on the same rounded inputs, within twice the stepwise path's error."""
    torch.manual_seed(2)
    case = make_case(cell, 9, 4, 16, 48, dtype=dtype, device="cuda", lengths=torch.tensor([9, 4, 0, 7]))
    oracle = outputs_and_grads(case.converted(torch.float64), "reference")
    persistent = outputs_and_grads(_with_algo(case, "persistent"), "fused")
    stepwise = outputs_and_grads(_with_algo(case, "stepwise"), "fused")
    floor = 2e-3 if dtype == torch.float16 else 1.5e-2
    for kind in (0, 1):
        for ours, theirs, exact in zip(persistent[kind], stepwise[kind], oracle[kind]):
            assert _relative_error(ours, exact) <= 2 * _relative_error(theirs, exact) + floor


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("cell, hidden, batch", [
    ("lstm", 1024, 40),   # 8 units a block; h and d_pre staged in several batch chunks
    ("gru", 301, 6),      # 3 units a block, the last block has 1
    ("rnn_tanh", 7, 33),  # fewer units than SMs; batch not a multiple of the tile
])
def test_cuda_block_and_chunk_splits_match_stepwise(cell, hidden, batch):
    torch.manual_seed(3)
    case = make_case(cell, 4, batch, 8, hidden, dtype=torch.float32, device="cuda",
                     lengths=torch.randint(0, 5, (batch,)), reverse=True)
    persistent = outputs_and_grads(_with_algo(case, "persistent"), "fused")
    stepwise = outputs_and_grads(_with_algo(case, "stepwise"), "fused")
    _assert_agree(persistent, stepwise, 1e-4, "persistent vs stepwise")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("batch, hidden, dtype", [
    (5, 32, torch.float32),      # one unit a block
    (6, 301, torch.float32),     # 3 units a block, the last block has 1
    (40, 1024, torch.float32),   # h and d x_proj staged in several batch chunks
    (5, 32, torch.float64),      # (float64's slice for H = 1024 leaves no room to stage a chunk)
    (6, 301, torch.bfloat16),
], ids=["fp32_one_unit_a_block", "fp32_partial_last_block", "fp32_batch_chunks", "fp64", "bf16"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_cuda_reset_before_gru(reverse, batch, hidden, dtype):
    """The reset_before GRU's kernels (two products, two grid barriers a step;
    csrc/cuda/persistent_reset_before.cuh) ran, and agree with the float64 oracle and the
    stepwise loop: float32 and float64 to their precision, bfloat16 within twice the stepwise
    loop's error."""
    torch.manual_seed(9)
    case = make_case("gru_reset_before", 5, batch, 8, hidden, dtype=dtype, device="cuda",
                     lengths=torch.randint(0, 6, (batch,)), reverse=reverse)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        persistent = outputs_and_grads(_with_algo(case, "persistent"), "fused")
        torch.cuda.synchronize()
    kernels = [event.name for event in prof.events()]
    assert any("reset_before_forward_kernel" in k for k in kernels), kernels
    assert any("reset_before_backward_kernel" in k for k in kernels), kernels
    stepwise = outputs_and_grads(_with_algo(case, "stepwise"), "fused")
    oracle = outputs_and_grads(case.converted(torch.float64, "cpu"), "reference")
    if dtype == torch.bfloat16:
        for kind in (0, 1):
            for ours, theirs, exact in zip(persistent[kind], stepwise[kind], oracle[kind]):
                assert _relative_error(ours, exact) <= 2 * _relative_error(theirs, exact) + 1.5e-2
        return
    tolerance = 1e-10 if dtype == torch.float64 else 2e-5
    _assert_agree(persistent, oracle, tolerance, "reset_before persistent vs float64 oracle")
    _assert_agree(persistent, stepwise, tolerance, "reset_before persistent vs stepwise")


@pytest.mark.cuda
@needs_cuda
def test_cuda_auto_keeps_the_reset_before_gru_stepwise():
    """Until its kernels have been measured, auto runs the reset_before GRU's stepwise loop."""
    case = make_case("gru_reset_before", 4, 8, 8, 128, dtype=torch.float32, device="cuda")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        outputs_and_grads(case, "fused")
        torch.cuda.synchronize()
    assert not any("persistent" in event.name for event in prof.events())


needs_sm90 = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability(0)[0] < 9,
    reason="thread-block clusters need sm_90")


@pytest.mark.cuda
@needs_sm90
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell, hidden, batch", [
    ("lstm", 128, 8),     # long_tiny's shape: 8 units in each of 16 blocks
    ("gru", 37, 5),       # 3 units a block, 13 blocks, the last with 1
    ("rnn_tanh", 7, 33),  # one unit a block, batch not a multiple of the tile
    ("peephole_lstm", 64, 4),
])
def test_cuda_cluster_forward_matches_oracle_and_stepwise(cell, hidden, batch, reverse, monkeypatch):
    """The experimental one-cluster forward (FUSED_RNN_PERSISTENT_CLUSTER=1): it must be the
    kernel that ran, and agree with the float64 oracle and the stepwise loop."""
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_CLUSTER", "1")
    torch.manual_seed(5)
    case = make_case(cell, 6, batch, 8, hidden, dtype=torch.float32, device="cuda",
                     lengths=torch.randint(0, 7, (batch,)), reverse=reverse)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        _assert_persistent_matches_oracle_and_stepwise(case, "cluster persistent")
        torch.cuda.synchronize()
    assert any("cluster_forward_kernel" in event.name for event in prof.events())


@pytest.mark.cuda
@needs_sm90
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_cuda_cluster_forward_other_dtypes(dtype, monkeypatch):
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_CLUSTER", "1")
    torch.manual_seed(6)
    case = make_case("lstm", 5, 4, 16, 48, dtype=dtype, device="cuda", lengths=torch.tensor([5, 2, 0, 4]))
    oracle = outputs_and_grads(case.converted(torch.float64), "reference")
    persistent = outputs_and_grads(_with_algo(case, "persistent"), "fused")
    stepwise = outputs_and_grads(_with_algo(case, "stepwise"), "fused")
    for kind in (0, 1):
        for ours, theirs, exact in zip(persistent[kind], stepwise[kind], oracle[kind]):
            floor = 1e-12 if dtype == torch.float64 else 1.5e-2
            assert _relative_error(ours, exact) <= 2 * _relative_error(theirs, exact) + floor


@pytest.mark.cuda
@needs_sm90
@pytest.mark.parametrize("cell, dtype", [("lstm", torch.float32), ("gru", torch.float16)])
def test_cuda_cluster_forward_in_inference(cell, dtype, monkeypatch):
    """Inference (no gates or c saved) and float16: the cluster kernel ran (=require raises
    otherwise) and agrees with the stepwise loop."""
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_CLUSTER", "require")
    torch.manual_seed(8)
    case = make_case(cell, 64, 6, 8, 96, dtype=dtype, device="cuda", requires_grad=False,
                     lengths=torch.randint(0, 65, (6,)))
    with torch.no_grad():
        persistent = _with_algo(case, "persistent").run()
        stepwise = _with_algo(case, "stepwise").run()
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    for a, b in zip(persistent, stepwise):
        assert _relative_error(a, b) <= tolerance


@pytest.mark.cuda
@needs_sm90
def test_cuda_cluster_required_raises_where_it_does_not_fit(monkeypatch):
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_CLUSTER", "require")
    case = make_case("lstm", 3, 4, 8, 1024, dtype=torch.float32, device="cuda", requires_grad=False)
    with pytest.raises(RuntimeError, match="FUSED_RNN_PERSISTENT_CLUSTER=require"):
        _with_algo(case, "persistent").run()


@pytest.mark.cuda
@needs_sm90
def test_cuda_cluster_falls_back_to_the_grid_kernel_where_it_does_not_fit(monkeypatch):
    """H = 1024: W's slice for 16 blocks (256 rows x 1025 floats) exceeds shared memory."""
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_CLUSTER", "1")
    case = make_case("lstm", 3, 4, 8, 1024, dtype=torch.float32, device="cuda", requires_grad=False)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        result = _with_algo(case, "persistent").run()
        torch.cuda.synchronize()
    names = [event.name for event in prof.events()]
    assert not any("cluster_forward_kernel" in n for n in names)
    assert any("persistent::forward_kernel" in n for n in names)
    for a, b in zip(result, _with_algo(case, "stepwise").run()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@needs_cuda
def test_cuda_refuses_what_does_not_fit_in_shared_memory():
    case = make_case("lstm", 2, 2, 4, 4096, dtype=torch.float32, device="cuda", requires_grad=False)
    with pytest.raises(ValueError, match="shared memory"):
        _with_algo(case, "persistent").run()
    auto = _with_algo(case, "auto").run()  # auto falls back to the stepwise loop
    stepwise = _with_algo(case, "stepwise").run()
    for a, b in zip(auto, stepwise):
        torch.testing.assert_close(a, b)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("cell, batch, hidden, dtype, mma, graphs, persistent", [
    ("lstm", 8, 128, torch.float32, None, None, True),     # long_tiny: 4k multiply-adds a block-step
    ("gru", 64, 512, torch.float32, None, None, True),     # GRU mid: 393k, under FFMA's 400k
    ("lstm", 64, 512, torch.float32, None, None, False),   # LSTM mid: 524k, over it
    # Half types against the stepwise loop replayed from graphs (their default): 200k.
    ("lstm", 16, 256, torch.bfloat16, None, None, True),   # small_batch: 33k
    ("lstm", 64, 512, torch.bfloat16, None, None, False),  # LSTM mid: 524k
    # Against the eager stepwise loop (FUSED_RNN_STEPWISE_GRAPHS=0): tensor cores' 1.8M.
    ("lstm", 64, 512, torch.bfloat16, None, "0", True),
    ("lstm", 64, 512, torch.bfloat16, "0", "0", False),    # tensor cores off: FFMA's limit
    ("gru", 64, 1024, torch.bfloat16, None, "0", True),    # GRU deepbench_1024: 1.57M
    ("lstm", 64, 1024, torch.bfloat16, None, "0", False),  # LSTM deepbench_1024: 2.1M
    ("lstm", 256, 1024, torch.bfloat16, None, None, False),  # large_batch: 8.4M
], ids=["long_tiny", "gru_mid", "lstm_mid_fp32", "small_batch_bf16", "lstm_mid_bf16",
        "lstm_mid_bf16_eager", "lstm_mid_bf16_ffma_eager", "gru_deepbench_bf16_eager",
        "lstm_deepbench_bf16_eager", "large_batch"])
def test_cuda_auto_picks_by_work_per_block(cell, batch, hidden, dtype, mma, graphs, persistent,
                                           monkeypatch):
    """auto's choice (auto_picks_persistent_on_cuda; the work counts assume an H100/H200's 132
    SMs), seen in the kernels that ran."""
    if torch.cuda.get_device_properties(0).multi_processor_count != 132:
        pytest.skip("the work per block depends on the number of SMs")
    # Between the two limits auto asks whether the stepwise loop would replay from a graph, and
    # graph loops left in use by earlier tests could fill the cache.
    fused_rnn.release_cuda_graphs()
    for variable, value in (("FUSED_RNN_PERSISTENT_MMA", mma),
                            ("FUSED_RNN_STEPWISE_GRAPHS", graphs)):
        if value is None:
            monkeypatch.delenv(variable, raising=False)
        else:
            monkeypatch.setenv(variable, value)
    case = make_case(cell, 3, batch, 16, hidden, dtype=dtype, device="cuda", requires_grad=False)
    case.run()  # warm up outside the profiler
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        case.run()
        torch.cuda.synchronize()
    kernels = [event.name for event in prof.events()]
    assert any("persistent" in name for name in kernels) == persistent, kernels


@pytest.mark.cuda
@needs_cuda
def test_cuda_refuses_graph_capture():
    case = make_case("gru", 3, 2, 4, 16, dtype=torch.float32, device="cuda", requires_grad=False)
    case = _with_algo(case, "persistent")
    case.run()  # warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream), pytest.raises(ValueError, match="graph capture"):
        with torch.cuda.graph(graph, stream=stream):
            case.run()


@pytest.mark.parametrize("cell, kwargs, reason", [
    ("lstm_proj", {}, "projection"),
    ("gru_reset_before", {}, "reset_before"),
    ("lstm", {"state_dropout": 0.5}, "dropout"),
])
def test_refuses_what_it_cannot_run(cell, kwargs, reason):
    case = make_case(cell, 3, 2, 4, 16, dtype=torch.float32, requires_grad=False, **kwargs)
    with pytest.raises(ValueError, match=reason):
        _with_algo(case, "persistent").run()
    _with_algo(case, "auto").run()  # auto runs the stepwise loop instead


@pytest.mark.skipif(not CPU_PERSISTENT, reason="the CPU's persistent path needs AVX2 + FMA")
def test_cpu_refuses_double_and_odd_hidden_sizes():
    with pytest.raises(ValueError, match="float32"):
        _with_algo(make_case("gru", 3, 2, 4, 16, requires_grad=False), "persistent").run()
    odd = make_case("gru", 3, 2, 4, 30, dtype=torch.float32, requires_grad=False)
    with pytest.raises(ValueError, match="multiple of 16"):
        _with_algo(odd, "persistent").run()


def test_unknown_algorithm_is_a_value_error():
    x, h0 = torch.randn(3, 2, 4), torch.zeros(2, 8)
    w_ih, w_hh = torch.randn(24, 4), torch.randn(24, 8)
    with pytest.raises(ValueError, match="algo must be one of"):
        F.gru(x, h0, w_ih, w_hh, algo="fastest")
    with pytest.raises(ValueError, match="algo must be one of"):
        fused_rnn.LSTM(4, 8, algo="fastest")
    with pytest.raises(ValueError, match="algo must be"):  # the op itself checks too
        torch.ops.fused_rnn.gru_forward(x @ w_ih.t(), h0, w_hh, None, None, None, False, True,
                                        False, "fastest")


def test_module_algo_changes_no_parameter_and_shows_in_repr():
    torch.manual_seed(4)
    default = fused_rnn.LSTM(4, 16, num_layers=2)
    stepwise = fused_rnn.LSTM(4, 16, num_layers=2, algo="stepwise")
    stepwise.load_state_dict(default.state_dict())
    assert "algo='stepwise'" in repr(stepwise) and "algo" not in repr(default)
    x = torch.randn(5, 3, 4)
    torch.testing.assert_close(stepwise(x)[0], default(x)[0], rtol=1e-5, atol=1e-6)
