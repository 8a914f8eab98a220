"""fp16 and bf16 on the CPU (where autocast sends bf16 work): the loops run in float32 on the
half-type values (csrc/cpu/half_as_float.h). Results and gradients come back in the half type,
with an error against float64 on the same rounded values within twice plain PyTorch's in that
type (the reference backend in the half type), as the CUDA half-type tests require."""
import pytest
import torch

from cases import CELLS, make_case, outputs_and_grads


def relative_errors(result, reference):
    return [((r.double() - e).norm() / e.norm().clamp_min(1e-30)).item()
            for r, e in zip(result, reference)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lengths", [None, [9, 4, 0, 7]], ids=["full", "lengths"])
@pytest.mark.parametrize("algo", ["stepwise", "auto"])
@pytest.mark.parametrize("cell", CELLS)
def test_cpu_half_types_error_within_torch_own(cell, algo, lengths, dtype):
    torch.manual_seed(0)
    lengths = torch.tensor(lengths) if lengths is not None else None
    half = make_case(cell, 9, 4, 16, 32, lengths=lengths, dtype=dtype, reverse=True)
    half.algo = algo
    ref64 = outputs_and_grads(half.converted(torch.float64), "reference")
    fused = outputs_and_grads(half, "fused")
    torch_half = outputs_and_grads(half, "reference")
    for result in fused:
        assert all(t.dtype == dtype for t in result)
    floor = 2e-3 if dtype == torch.float16 else 1.5e-2  # as the CUDA half-type tests
    for kind in (0, 1):  # outputs, gradients
        ours = relative_errors(fused[kind], ref64[kind])
        theirs = relative_errors(torch_half[kind], ref64[kind])
        for a, b in zip(ours, theirs):
            assert a <= 2 * b + floor, (ours, theirs)
