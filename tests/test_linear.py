"""fused_rnn::linear, the input projection (and the weight gradients inside the backward ops):
on a CPU with AVX2 + FMA, float32 products of a million multiply-adds or more (and of 128 rows or
more where w is packed) run the packed GEMM (csrc/cpu/packed_gemm.h) on all threads. Checked
against float64 torch, with strided operands."""
import warnings

import pytest
import torch

import fused_rnn
from fused_rnn import _ops


# The `threads` fixture (conftest.py) runs each test with each of these thread counts.
with_threads = pytest.mark.parametrize("threads", [1, 2], indirect=True,
                                       ids=lambda n: f"{n}threads")


def operand(rows, cols, layout):
    """A (rows, cols) float32 matrix: row-major, the transposed view of a (cols, rows) one, or a
    view with no unit stride."""
    if layout == "strided":
        return torch.randn(2 * rows, 3 * cols)[::2, ::3].detach().requires_grad_()
    t = torch.randn(cols, rows).t() if layout else torch.randn(rows, cols)
    return t.detach().requires_grad_()


@pytest.fixture(params=["packed", "aten"])
def weight_gradients(request, monkeypatch):
    """Runs a test with each choice of GEMM for the weight gradients' products (x read down its
    columns, w in place: ours only with AVX-512, by default not on Intel CPUs)."""
    monkeypatch.setenv("FUSED_RNN_CPU_WEIGHT_GRADIENTS", request.param)
    return request.param


def aten_products(x, w):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _ops.linear(x, w, None)
    return sum(event.name in ("aten::mm", "aten::addmm") for event in prof.events())


@with_threads
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_t,w_t", [(False, False), (True, False), (False, True), (True, True),
                                     ("strided", "strided")])
# (450, 1100, 208): K crosses a K block (kBlockK = 1024; 256 where A is gathered), M a gathered
# block's 384 rows, N ends in a partial panel.
@pytest.mark.parametrize("m,k,n", [(203, 77, 96), (64, 300, 160), (1000, 16, 512), (450, 1100, 208)])
def test_matches_torch(m, k, n, x_t, w_t, bias, threads, weight_gradients):
    torch.manual_seed(0)
    x, w = operand(m, k, x_t), operand(n, k, w_t)
    b = torch.randn(n, requires_grad=True) if bias else None
    out = _ops.linear(x, w, b)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if bias else None
    expected = torch.nn.functional.linear(x64, w64, b64)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-4)
    grad = torch.randn(m, n)
    inputs, inputs64 = [x, w] + ([b] if bias else []), [x64, w64] + ([b64] if bias else [])
    got = torch.autograd.grad(out, inputs, grad)
    want = torch.autograd.grad(expected, inputs64, grad.double())
    for g, e in zip(got, want):
        torch.testing.assert_close(g.double(), e, rtol=1e-5, atol=1e-3)


@pytest.mark.skipif(fused_rnn.build_info()["cpu_simd"] != "avx512",
                    reason="our weight-gradient product needs AVX-512")
def test_weight_gradients_follow_the_setting(weight_gradients):
    """A weight gradient's product (x read down its columns, w in place) is ours or ATen's as
    FUSED_RNN_CPU_WEIGHT_GRADIENTS says; every other product stays ours."""
    torch.manual_seed(2)
    d_pre, inputs = torch.randn(1100, 208), torch.randn(1100, 96)
    assert aten_products(d_pre.t(), inputs.t()) == (weight_gradients == "aten")
    assert aten_products(torch.randn(450, 96), torch.randn(208, 96)) == 0


@pytest.mark.skipif(fused_rnn.build_info()["cpu_simd"] not in ("avx2", "avx512"),
                    reason="without AVX2 every product is ATen's and the setting is not read")
def test_bad_weight_gradient_setting_is_named(monkeypatch):
    monkeypatch.setenv("FUSED_RNN_CPU_WEIGHT_GRADIENTS", "mkl")
    d_pre, inputs = torch.randn(1100, 208), torch.randn(1100, 96)
    with pytest.raises(RuntimeError, match="FUSED_RNN_CPU_WEIGHT_GRADIENTS must be 'packed' or 'aten', got 'mkl'"):
        _ops.linear(d_pre.t(), inputs.t(), None)


def test_small_and_odd_shapes_fall_back():
    """Below the threshold, or with N not a multiple of 16, ATen does the product."""
    x, w = torch.randn(5, 3), torch.randn(7, 3)
    torch.testing.assert_close(_ops.linear(x, w, None), x @ w.t())


def test_bad_input_names_the_argument():
    with pytest.raises(RuntimeError, match=r"x must be \[M, K\] and w \[N, K\], got x \[4, 3\] and w \[5, 2\]"):
        _ops.linear(torch.randn(4, 3), torch.randn(5, 2), None)
    with pytest.raises(RuntimeError, match=r"b must be \[5\] with x's dtype and device, got \[4\]"):
        _ops.linear(torch.randn(4, 3), torch.randn(5, 3), torch.randn(4))


def test_opcheck():
    torch.library.opcheck(torch.ops.fused_rnn.linear,
                          (torch.randn(300, 70), torch.randn(64, 70, requires_grad=True), torch.randn(64)))


def test_double_backward():
    """linear's backward is linear again, so gradients of gradients work (float64: ATen's path)."""
    torch.manual_seed(1)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "an autograd kernel was not registered"
        assert torch.autograd.gradgradcheck(_ops.linear, (x, w, b))
