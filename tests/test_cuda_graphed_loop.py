"""The stepwise CUDA loops, forward and backward, replayed from graphs captured inside the ops
(csrc/sequence/graphed_loop.h; the default for half types, FUSED_RNN_STEPWISE_GRAPHS=0 turns it
off, =all adds float32) against the eager loops: every cell they serve, bfloat16 and float16,
float32 with =all (else it keeps the eager loop), lengths and reverse, forward and backward, and
calls after the capture (new inputs,
new weights, another module, another stream through the same machinery), and the cache's bounds.
A key's first call runs the eager loop, its second captures, the later ones replay: each test
makes its calls with that in mind and checks with the profiler that graphs did replay."""
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
TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float32: 2e-5}


@pytest.fixture(autouse=True)
def _empty_cache():
    """Each test starts and ends with no captured loop (fused_rnn.release_cuda_graphs()): loops
    left by earlier tests in the process would otherwise decide which of a test's keys get
    captured (and, for auto, which calls run the persistent kernel)."""
    fused_rnn.release_cuda_graphs()
    yield
    fused_rnn.release_cuda_graphs()


def _set_graphs(monkeypatch, on):
    """True: the default (no variable: half types); False: FUSED_RNN_STEPWISE_GRAPHS=0; "all":
    FUSED_RNN_STEPWISE_GRAPHS=all (float32 too)."""
    if on is True:
        monkeypatch.delenv("FUSED_RNN_STEPWISE_GRAPHS", raising=False)
    else:
        monkeypatch.setenv("FUSED_RNN_STEPWISE_GRAPHS", "all" if on == "all" else "0")


def _graphs_for(dtype):
    """The setting that graphs `dtype`'s loops: float32's only with "all"."""
    return "all" if dtype == torch.float32 else True


def _outputs_and_grads(module, x, lengths=None):
    x = x.detach().requires_grad_()
    output, state = module(x, lengths=lengths)
    states = list(state) if isinstance(state, tuple) else [state]
    loss = output.float().square().sum() + sum(s.float().sum() for s in states)
    grads = torch.autograd.grad(loss, [x, *module.parameters()])
    return [output.detach(), *[s.detach() for s in states]], list(grads)


def _relative_error(result, expected):
    return ((result.double() - expected.double()).norm()
            / expected.double().norm().clamp_min(1e-30)).item()


def _assert_close(ours, theirs, dtype, context):
    for kind in (0, 1):
        for i, (a, b) in enumerate(zip(ours[kind], theirs[kind])):
            assert _relative_error(a, b) < TOLERANCE[dtype], (context, kind, i)


def _profiled(fn):
    """fn()'s result, (kernel launches, graph launches) from the profiler's runtime events."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        result = fn()
        torch.cuda.synchronize()
    names = [event.name for event in prof.events()]
    # cudaLaunchKernel(ExC), and cuLaunchKernel(Ex) where cuBLAS launches through the driver.
    return result, (sum("LaunchKernel" in name for name in names),
                    sum(name.startswith("cudaGraphLaunch") for name in names))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32],
                         ids=["fp16", "bf16", "fp32_all"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
@pytest.mark.parametrize("cell", sorted(MODULES))
def test_graphed_matches_eager(cell, bidirectional, dtype, monkeypatch):
    """Four training calls with new inputs and lengths (eager, capture, replay, replay), each
    against the eager loop on the same inputs, computed first; the last one replays a graph per
    direction forward and backward."""
    torch.manual_seed(31)
    steps, batch, inputs, hidden = 7, 5, 6, 24
    module = MODULES[cell](inputs, hidden, bidirectional=bidirectional, algo="stepwise")
    module = module.to(device="cuda", dtype=dtype)
    for call in range(4):
        x = torch.randn(steps, batch, inputs, device="cuda", dtype=dtype)
        lengths = torch.tensor([7, 3, 0, 6, 7]) if call != 1 else None
        _set_graphs(monkeypatch, False)
        eager = _outputs_and_grads(module, x, lengths)
        _set_graphs(monkeypatch, _graphs_for(dtype))
        if call < 3:
            graphed = _outputs_and_grads(module, x, lengths)
        else:
            graphed, (_, graphs) = _profiled(lambda: _outputs_and_grads(module, x, lengths))
            assert graphs == 2 * (2 if bidirectional else 1), graphs
        _assert_close(graphed, eager, dtype, call)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("dtype, setting, graphed",
                         [(torch.bfloat16, True, True), (torch.float32, True, False),
                          (torch.float32, "all", True)],
                         ids=["bf16", "fp32_stays_eager", "fp32_all"])
def test_replays_instead_of_launching_per_step(dtype, setting, graphed, training, monkeypatch):
    """After the eager and the capturing call, a bfloat16 forward (and backward) launches one
    graph each and fewer kernels than it has steps (the projections, weight gradients and copies
    around the loop); so does float32 with FUSED_RNN_STEPWISE_GRAPHS=all, and without it keeps
    launching a kernel a step or more."""
    torch.manual_seed(32)
    steps = 40
    module = fused_rnn.GRU(8, 32, algo="stepwise").to(device="cuda", dtype=dtype)
    x = torch.randn(steps, 4, 8, device="cuda", dtype=dtype)

    def call():
        if training:
            return module(x.clone().requires_grad_())[0].float().sum().backward()
        with torch.no_grad():
            return module(x)

    _set_graphs(monkeypatch, False)
    _, (eager_kernels, _) = _profiled(call)
    assert eager_kernels >= (2 if training else 1) * steps  # at least the step kernels
    _set_graphs(monkeypatch, setting)
    call()  # eager: the key's first call
    call()  # captures and replays
    _, (kernels, graphs) = _profiled(call)
    if graphed:
        assert graphs == (2 if training else 1) and kernels < steps, (kernels, graphs)
    else:
        assert graphs == 0 and kernels >= (2 if training else 1) * steps, (kernels, graphs)


def test_weights_changed_in_place_and_another_module(monkeypatch):
    """A graph reads W_hh where it was captured: changed in place after the capture, the replay
    sees the new values; a second module of the same shape (W_hh elsewhere) gets its own graph."""
    torch.manual_seed(35)
    dtype = torch.bfloat16
    first = fused_rnn.LSTM(6, 32, algo="stepwise").to(device="cuda", dtype=dtype)
    second = fused_rnn.LSTM(6, 32, algo="stepwise").to(device="cuda", dtype=dtype)
    x = torch.randn(9, 3, 6, device="cuda", dtype=dtype)
    _set_graphs(monkeypatch, True)
    for _ in range(2):  # eager, capture
        _outputs_and_grads(first, x)
    with torch.no_grad():
        for parameter in first.parameters():
            parameter.mul_(-1.5)
    for module in (first, second, second, second):
        _set_graphs(monkeypatch, False)
        eager = _outputs_and_grads(module, x)
        _set_graphs(monkeypatch, True)
        _assert_close(_outputs_and_grads(module, x), eager, dtype, module is first)


def test_another_stream(monkeypatch):
    """A loop replays on the stream it was captured for: calls on a side stream get their own
    graph, and are right."""
    torch.manual_seed(36)
    dtype = torch.bfloat16
    module = fused_rnn.GRU(5, 16, algo="stepwise").to(device="cuda", dtype=dtype)
    x = torch.randn(6, 4, 5, device="cuda", dtype=dtype)
    _set_graphs(monkeypatch, True)
    for _ in range(2):
        _outputs_and_grads(module, x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        results = [_outputs_and_grads(module, x) for _ in range(3)]
    torch.cuda.current_stream().wait_stream(stream)
    _set_graphs(monkeypatch, False)
    eager = _outputs_and_grads(module, x)
    for call, graphed in enumerate(results):
        _assert_close(graphed, eager, dtype, call)


def test_more_keys_than_the_cache_holds(monkeypatch):
    """Twenty sequence lengths one after another, each called three times, forward and backward
    (the cache keeps 16 captured loops a step type; a loop unused for 32 calls is replaced, so
    early keys are evicted and captured again): every call right."""
    torch.manual_seed(33)
    dtype = torch.bfloat16
    module = fused_rnn.LSTM(4, 16, algo="stepwise").to(device="cuda", dtype=dtype)
    for steps in list(range(2, 22)) + [2, 3]:
        x = torch.randn(steps, 3, 4, device="cuda", dtype=dtype)
        _set_graphs(monkeypatch, False)
        eager = _outputs_and_grads(module, x)
        _set_graphs(monkeypatch, True)
        for call in range(3):
            _assert_close(_outputs_and_grads(module, x), eager, dtype, (steps, call))


def test_a_working_set_larger_than_the_cache(monkeypatch):
    """Twenty sequence lengths in turn, six rounds, forward and backward: the loops in use are
    never replaced (each is used every 20 calls, under the 32 that make one cold), so 16 keys a
    step type replay and 4 run eager, rather than every call capturing and evicting. Every
    call right; the last round replays exactly 16 forward and 16 backward graphs."""
    torch.manual_seed(38)
    dtype = torch.bfloat16
    module = fused_rnn.LSTM(4, 16, algo="stepwise").to(device="cuda", dtype=dtype)
    inputs = [torch.randn(steps, 3, 4, device="cuda", dtype=dtype) for steps in range(2, 22)]
    _set_graphs(monkeypatch, False)
    eager = [_outputs_and_grads(module, x) for x in inputs]
    _set_graphs(monkeypatch, True)
    for round_ in range(5):
        for x, expected in zip(inputs, eager):
            _assert_close(_outputs_and_grads(module, x), expected, dtype, (round_, len(x)))

    def last_round():
        return [_outputs_and_grads(module, x) for x in inputs]

    results, (_, graphs) = _profiled(last_round)
    for x, result, expected in zip(inputs, results, eager):
        _assert_close(result, expected, dtype, ("last", len(x)))
    assert graphs == 2 * 16, graphs


def test_aten_gemm_is_never_captured(monkeypatch):
    """With FUSED_RNN_STEP_GEMM=aten the products are ATen's, which the loop does not capture
    (their cuBLAS workspace would come from the graph's pool): eager, right, no graph, and the
    process's RNG still works afterwards (a failed capture would have left it in capture mode).
    The same shape is captured first without the variable: that loop must not replay with it
    (at 6ea377d it did, its key being found before the variable was read)."""
    torch.manual_seed(37)
    dtype = torch.bfloat16
    module = fused_rnn.LSTM(4, 16, algo="stepwise").to(device="cuda", dtype=dtype)
    x = torch.randn(8, 3, 4, device="cuda", dtype=dtype)
    _set_graphs(monkeypatch, True)
    monkeypatch.delenv("FUSED_RNN_STEP_GEMM", raising=False)
    for _ in range(3):  # eager, capture, replay: this key now has a captured loop
        _outputs_and_grads(module, x)
    monkeypatch.setenv("FUSED_RNN_STEP_GEMM", "aten")
    _set_graphs(monkeypatch, False)
    eager = _outputs_and_grads(module, x)
    _set_graphs(monkeypatch, True)
    for _ in range(2):
        _assert_close(_outputs_and_grads(module, x), eager, dtype, "aten")
    graphed, (_, graphs) = _profiled(lambda: _outputs_and_grads(module, x))
    assert graphs == 0
    _assert_close(graphed, eager, dtype, "aten")
    torch.rand(4, device="cuda")
    torch.nn.functional.dropout(torch.ones(8, device="cuda"), 0.5)


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
            for _ in range(3):
                module(static_x)  # warm-up off the graph (and our own graphs for this stream)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y, _ = module(static_x)
        static_x.copy_(torch.randn_like(static_x))
        graph.replay()
        _set_graphs(monkeypatch, False)
        expected, _ = module(static_x)
    assert _relative_error(static_y, expected) < TOLERANCE[torch.bfloat16]


def test_release_frees_the_loops_and_later_calls_capture_again(monkeypatch):
    """fused_rnn.release_cuda_graphs() frees every captured loop: it returns their buffers'
    bytes (at least the backward's d_pre, T x B x 4H), the allocator's count drops by at least
    that, a second release finds nothing; the next calls are right, eager, then captured again,
    then replayed."""
    torch.manual_seed(39)
    dtype = torch.bfloat16
    steps, batch, hidden = 30, 8, 64
    module = fused_rnn.LSTM(4, hidden, algo="stepwise").to(device="cuda", dtype=dtype)
    x = torch.randn(steps, batch, 4, device="cuda", dtype=dtype)
    _set_graphs(monkeypatch, False)
    eager = _outputs_and_grads(module, x)
    _set_graphs(monkeypatch, True)
    for _ in range(3):  # eager, capture, replay
        _outputs_and_grads(module, x)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    released = fused_rnn.release_cuda_graphs()
    d_pre_bytes = steps * batch * 4 * hidden * 2
    assert released >= d_pre_bytes, (released, d_pre_bytes)
    assert before - torch.cuda.memory_allocated() >= released
    assert fused_rnn.release_cuda_graphs() == 0
    for call in range(2):  # eager (the key was forgotten), capture
        _assert_close(_outputs_and_grads(module, x), eager, dtype, call)
    replayed, (_, graphs) = _profiled(lambda: _outputs_and_grads(module, x))
    assert graphs == 2, graphs
    _assert_close(replayed, eager, dtype, "replay")


def test_float32_graphs_follow_the_tf32_flag(monkeypatch):
    """A float32 capture bakes in its GEMM's math mode (TF32 or not): a loop captured with
    torch's TF32 flag off must not replay once the flag is on (the flag is part of the key), and
    replays again once it is back off. Results against the eager loop under the same flag."""
    torch.manual_seed(41)
    dtype = torch.float32
    module = fused_rnn.LSTM(16, 64, algo="stepwise").to(device="cuda", dtype=dtype)
    x = torch.randn(12, 8, 16, device="cuda", dtype=dtype)
    flag = torch.backends.cuda.matmul.allow_tf32
    try:
        with torch.no_grad():
            for round_, tf32 in enumerate((False, True, False)):
                torch.backends.cuda.matmul.allow_tf32 = tf32
                _set_graphs(monkeypatch, False)
                eager = module(x)[0]
                _set_graphs(monkeypatch, "all")
                # Rounds 0 and 1 meet a new key (eager first); round 2 the key of round 0.
                first, (_, graphs) = _profiled(lambda: module(x)[0])
                assert graphs == (1 if round_ == 2 else 0), (round_, graphs)
                for _ in range(2):  # capture (a new key's second call), replay
                    module(x)
                replayed, (_, graphs) = _profiled(lambda: module(x)[0])
                assert graphs == 1, (round_, graphs)
                tolerance = 1e-2 if tf32 else TOLERANCE[dtype]
                assert _relative_error(first, eager) < tolerance, round_
                assert _relative_error(replayed, eager) < tolerance, round_
    finally:
        torch.backends.cuda.matmul.allow_tf32 = flag


def test_auto_runs_persistent_where_the_cache_has_no_room(monkeypatch):
    """algo='auto', bfloat16 LSTM at B=64, H=512: 524k multiply-adds a block-step on 132 SMs,
    where the persistent kernel beats the eager stepwise loop but not its graphs. Auto sends
    every call that would run the eager loop to the persistent kernel (before, it asked only
    whether a graph *may* run): a key's first call, and the keys the cache has no room for.
    Twenty sequence lengths in turn: sixteen loops fill the cache and stay in use, the other
    four lengths run persistent. Then twenty other lengths: the old loops turn cold (the calls
    sent to the persistent kernel count too), new ones replace them, and the same split
    settles. Every call right, against the eager stepwise loop."""
    if torch.cuda.get_device_properties(0).multi_processor_count != 132:
        pytest.skip("the work per block depends on the number of SMs")
    torch.manual_seed(40)
    dtype = torch.bfloat16
    auto = fused_rnn.LSTM(16, 512).to(device="cuda", dtype=dtype)
    eager_module = fused_rnn.LSTM(16, 512, algo="stepwise").to(device="cuda", dtype=dtype)
    eager_module.load_state_dict(auto.state_dict())

    def phase(lengths, rounds):
        """The kind of loop each length's last call ran: (graph replayed, persistent kernel)."""
        inputs = [torch.randn(steps, 64, 16, device="cuda", dtype=dtype) for steps in lengths]
        _set_graphs(monkeypatch, False)
        eager = [eager_module(x)[0] for x in inputs]
        _set_graphs(monkeypatch, True)
        for round_ in range(rounds):
            for x, expected in zip(inputs, eager):
                assert _relative_error(auto(x)[0], expected) < TOLERANCE[dtype], (round_, len(x))
        ran = []
        for x, expected in zip(inputs, eager):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                    torch.profiler.ProfilerActivity.CUDA]) as prof:
                y = auto(x)[0]
                torch.cuda.synchronize()
            assert _relative_error(y, expected) < TOLERANCE[dtype], ("profiled", len(x))
            names = [event.name for event in prof.events()]
            ran.append((any(name.startswith("cudaGraphLaunch") for name in names),
                        any("persistent" in name for name in names)))
        return ran

    with torch.no_grad():
        # Round 1 runs all twenty persistent (first calls), round 2 captures 16 and finds no
        # room for 4.
        ran = phase(range(2, 22), rounds=3)
        assert ran == [(True, False)] * 16 + [(False, True)] * 4, ran
        ran = phase(range(22, 42), rounds=6)
        assert sorted(ran) == [(False, True)] * 4 + [(True, False)] * 16, ran
