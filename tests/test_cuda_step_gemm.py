"""The stepwise loop's per-step GEMM on CUDA through cuBLASLt (csrc/cuda/step_gemm_cublaslt.h)
against ATen's GEMM (FUSED_RNN_STEP_GEMM=aten) and the float64 oracle: every cell, with lengths
and reverse, odd sizes whose rows are 2-byte aligned, strided gate blocks (the reset_before GRU),
a projection, and half types. The profiler's count of ATen products tells which one ran."""
import dataclasses

import pytest
import torch

from cases import CELLS, make_case, outputs_and_grads

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]

ATEN_PRODUCTS = ("aten::mm", "aten::addmm_", "aten::addmm")


def _run_counting_aten_products(case, step_gemm, monkeypatch):
    """Outputs and gradients of the stepwise loop, and how many ATen products it called."""
    if step_gemm == "aten":
        monkeypatch.setenv("FUSED_RNN_STEP_GEMM", "aten")
    else:
        monkeypatch.delenv("FUSED_RNN_STEP_GEMM", raising=False)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        result = outputs_and_grads(dataclasses.replace(case, algo="stepwise"), "fused")
        torch.cuda.synchronize()
    return result, sum(event.name in ATEN_PRODUCTS for event in prof.events())


def _relative_error(result, expected):
    return ((result.double() - expected.double()).norm()
            / expected.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2),
                                              (torch.float16, 5e-3)], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell", CELLS)
def test_cublaslt_matches_aten(cell, reverse, dtype, tolerance, monkeypatch):
    """H = 13: rows of 13 (or 13·gates) elements, so most steps' operands are 2- or 4-byte
    aligned. The per-step products leave ATen's (only the projection and weight gradients call
    it, a fixed number of times whatever T is); results agree to the dtype's rounding."""
    torch.manual_seed(21)
    steps = 7
    case = make_case(cell, steps, 5, 6, 13, dtype=dtype, device="cuda", reverse=reverse,
                     lengths=torch.tensor([7, 3, 0, 6, 7]))
    lt, lt_products = _run_counting_aten_products(case, "cublaslt", monkeypatch)
    aten, aten_products = _run_counting_aten_products(case, "aten", monkeypatch)
    # ATen runs one product per step forward and one per step backward (at least).
    assert aten_products - lt_products >= 2 * steps, (lt_products, aten_products)
    for kind in (0, 1):
        for i, (ours, theirs) in enumerate(zip(lt[kind], aten[kind])):
            assert _relative_error(ours, theirs) < tolerance, (kind, i)


@pytest.mark.parametrize("cell", ["lstm", "gru_reset_before", "lstm_proj"])
def test_cublaslt_against_float64(cell, monkeypatch):
    """float32 without TF32 is exact to float32's rounding: against the float64 oracle."""
    torch.manual_seed(22)
    case = make_case(cell, 9, 16, 8, 64, dtype=torch.float32, device="cuda")
    oracle = outputs_and_grads(case.converted(torch.float64), "reference")
    lt, _ = _run_counting_aten_products(case, "cublaslt", monkeypatch)
    for kind in (0, 1):
        for ours, exact in zip(lt[kind], oracle[kind]):
            assert _relative_error(ours, exact) < 1e-5


def test_float64_keeps_aten(monkeypatch):
    """cuBLASLt serves float32 and half types; float64's products stay with ATen."""
    torch.manual_seed(23)
    case = make_case("gru", 5, 3, 4, 16, dtype=torch.float64, device="cuda")
    _, lt_products = _run_counting_aten_products(case, "cublaslt", monkeypatch)
    _, aten_products = _run_counting_aten_products(case, "aten", monkeypatch)
    assert lt_products == aten_products
