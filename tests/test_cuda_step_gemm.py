"""The stepwise loop's per-step GEMM for half types on CUDA through cuBLASLt
(csrc/cuda/step_gemm_cublaslt.h) against ATen's GEMM (FUSED_RNN_STEP_GEMM=aten): every cell,
with lengths and reverse, odd sizes whose rows are 2-byte aligned, strided gate blocks (the
reset_before GRU) and a projection; float32 and float64 keep ATen's. The profiler's count of ATen
products tells which one ran. (The values against the float64 oracle: test_cuda.py's half-type
tests, which run the same loop.)"""
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


@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 3e-2), (torch.float16, 5e-3)],
                         ids=["bf16", "fp16"])
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_float32_and_float64_keep_aten(dtype, monkeypatch):
    """cuBLASLt serves half types only; float32's and float64's products stay with ATen."""
    torch.manual_seed(23)
    case = make_case("gru", 5, 3, 4, 16, dtype=dtype, device="cuda")
    _, lt_products = _run_counting_aten_products(case, "cublaslt", monkeypatch)
    _, aten_products = _run_counting_aten_products(case, "aten", monkeypatch)
    assert lt_products == aten_products
