"""Backward allocates no sequence-sized tensor it does not need: no zero gradients for the
outputs that only carry saved activations (gates, c_all, hh_n), which autograd would otherwise
fill for every call (50 MiB each for LSTM `mid`)."""
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
