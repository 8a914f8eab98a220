"""The persistent CUDA kernels with their products on tensor cores (csrc/cuda/persistent_products.cuh;
the default for half types, FUSED_RNN_PERSISTENT_MMA=0 turns it off): float16 and bfloat16, forward and backward,
against the float64 oracle on the same rounded inputs and against the stepwise loop. Every test
checks that the tensor-core kernels are the ones that ran. Needs an sm_80+ GPU."""
import dataclasses

import pytest
import torch

from cases import make_case, outputs_and_grads

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability(0)[0] < 8,
    reason="tensor-core mma needs an sm_80+ GPU")]

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "peephole_lstm", "gru", "gru_reset_before"]


def _relative_error(result, expected):
    return ((result.double().cpu() - expected.double().cpu()).norm()
            / expected.double().cpu().norm().clamp_min(1e-30)).item()


def _run_profiled(case, algo):
    """Outputs and gradients of `case` with `algo`, and the names of the CUDA kernels it ran."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        result = outputs_and_grads(dataclasses.replace(case, algo=algo), "fused")
        torch.cuda.synchronize()
    return result, [event.name for event in prof.events()]


def _assert_as_accurate_as_stepwise(case):
    """Forward and backward ran on tensor cores; against float64 on the same rounded inputs, the
    error is within twice the stepwise path's (cuBLAS) plus a floor of the dtype's rounding."""
    oracle = outputs_and_grads(case.converted(torch.float64), "reference")
    persistent, kernels = _run_profiled(case, "persistent")
    stepwise = outputs_and_grads(dataclasses.replace(case, algo="stepwise"), "fused")
    assert any("forward_kernel" in k and "MmaProduct" in k for k in kernels), kernels
    if case.x.requires_grad:
        assert any("backward_kernel" in k and "MmaProduct" in k for k in kernels), kernels
    floor = 2e-3 if case.x.dtype == torch.float16 else 1.5e-2
    for kind in (0, 1):
        for i, (ours, theirs, exact) in enumerate(zip(persistent[kind], stepwise[kind], oracle[kind])):
            ours_error, theirs_error = _relative_error(ours, exact), _relative_error(theirs, exact)
            assert ours_error <= 2 * theirs_error + floor, (
                f"{'outputs' if kind == 0 else 'grads'}[{i}]: {ours_error:.2e} vs stepwise {theirs_error:.2e}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell", CELLS)
def test_matches_oracle_and_stepwise(cell, reverse, dtype, monkeypatch):
    """H = 48 (one 16-column step past a multiple of 32), B = 5 (padded to the 8-row tile),
    lengths with a zero and a full one."""
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_MMA", "require")
    torch.manual_seed(11)
    case = make_case(cell, 9, 5, 16, 48, dtype=dtype, device="cuda", reverse=reverse,
                     lengths=torch.tensor([9, 4, 0, 7, 9]))
    _assert_as_accurate_as_stepwise(case)


@pytest.mark.parametrize("cell, steps, batch, hidden", [
    ("lstm", 5, 8, 128),    # long_tiny's shape: one unit a block, few tiles: warps split k
    ("gru", 4, 3, 20),      # K = 20 and 60: zero columns up to the 16-wide k step
    ("rnn_tanh", 4, 40, 7),  # K = 7: one k step, mostly zeros; five batch tiles
    ("lstm", 3, 64, 512),   # mid's shape: one tile per warp, no split
    ("lstm", 3, 200, 1024),  # several W row tiles and batch chunks forward, many chunks backward
])
def test_tile_splits_padding_and_chunks(cell, steps, batch, hidden, monkeypatch):
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_MMA", "require")
    torch.manual_seed(12)
    case = make_case(cell, steps, batch, 8, hidden, dtype=torch.bfloat16, device="cuda",
                     lengths=torch.randint(0, steps + 1, (batch,)))
    _assert_as_accurate_as_stepwise(case)


def test_inference(monkeypatch):
    """No gradients: only the forward kernel, without saved activations."""
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_MMA", "require")
    torch.manual_seed(13)
    case = make_case("lstm", 32, 6, 8, 96, dtype=torch.float16, device="cuda", requires_grad=False)
    with torch.no_grad():
        persistent = dataclasses.replace(case, algo="persistent").run()
        stepwise = dataclasses.replace(case, algo="stepwise").run()
    for a, b in zip(persistent, stepwise):
        assert _relative_error(a, b) <= 1e-2


def test_float32_keeps_ffma(monkeypatch):
    """Tensor cores apply to half types only: float32 runs the exact FFMA kernel even with
    =require, and matches the stepwise loop to float32's tolerance."""
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_MMA", "require")
    torch.manual_seed(14)
    case = make_case("gru", 4, 3, 8, 32, dtype=torch.float32, device="cuda")
    persistent, kernels = _run_profiled(case, "persistent")
    assert any("forward_kernel" in k for k in kernels)
    assert not any("MmaProduct" in k for k in kernels)
    stepwise = outputs_and_grads(dataclasses.replace(case, algo="stepwise"), "fused")
    for kind in (0, 1):
        for ours, theirs in zip(persistent[kind], stepwise[kind]):
            assert _relative_error(ours, theirs) < 1e-4


@pytest.mark.parametrize("setting, tensor_cores", [(None, True), ("1", True), ("0", False)],
                         ids=["unset", "on", "off"])
def test_tensor_cores_are_the_default_for_half_types(setting, tensor_cores, monkeypatch):
    """Unset (or 1), a bfloat16 sequence runs the tensor-core kernels forward and backward; 0
    keeps FFMA. Both match the stepwise loop to bfloat16's rounding."""
    if setting is None:
        monkeypatch.delenv("FUSED_RNN_PERSISTENT_MMA", raising=False)
    else:
        monkeypatch.setenv("FUSED_RNN_PERSISTENT_MMA", setting)
    torch.manual_seed(15)
    case = make_case("lstm", 6, 4, 8, 64, dtype=torch.bfloat16, device="cuda")
    persistent, kernels = _run_profiled(case, "persistent")
    ran = [k for k in kernels if "forward_kernel" in k or "backward_kernel" in k]
    assert len(ran) >= 2, kernels
    assert all(("MmaProduct" in k) == tensor_cores for k in ran), ran
    stepwise = outputs_and_grads(dataclasses.replace(case, algo="stepwise"), "fused")
    for kind in (0, 1):
        for ours, theirs in zip(persistent[kind], stepwise[kind]):
            assert _relative_error(ours, theirs) < 5e-2


def test_required_raises_where_it_does_not_fit(monkeypatch):
    """H = 2048 on 132 SMs: a block's 16 units of LSTM rows (64 x 2056 bf16, 257 KiB) exceed
    shared memory (227 KiB on an H100/H200)."""
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_MMA", "require")
    case = make_case("lstm", 2, 2, 8, 2048, dtype=torch.bfloat16, device="cuda", requires_grad=False)
    with pytest.raises(RuntimeError, match="FUSED_RNN_PERSISTENT_MMA=require"):
        dataclasses.replace(case, algo="persistent").run()
