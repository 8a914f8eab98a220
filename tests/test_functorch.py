"""torch.func over the modules: grad, jacrev and jvp run the reference backend (the fused ops'
C++ autograd cannot run under functorch), vmap runs the fused ops. The oracle is the fused
module's own gradient from torch.autograd and a plain loop over the batch."""
import pytest
import torch
from torch.func import functional_call, grad, jacrev, jvp, vmap

import fused_rnn

MODULES = {
    "rnn": lambda: fused_rnn.RNN(4, 8, num_layers=2),
    "lstm": lambda: fused_rnn.LSTM(4, 8, bidirectional=True),
    "peephole_lstm": lambda: fused_rnn.PeepholeLSTM(4, 8),
    "gru": lambda: fused_rnn.GRU(4, 8),
    "gru_reset_before": lambda: fused_rnn.GRU(4, 8, reset_after=False),
}


@pytest.mark.parametrize("kind", list(MODULES))
def test_grad_matches_autograd(kind):
    torch.manual_seed(0)
    module = MODULES[kind]().double()
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4])
    params = dict(module.named_parameters())

    def loss(p, x):
        return (functional_call(module, p, (x,), {"lengths": lengths})[0] ** 2).sum()

    grads = grad(loss)(params, x)
    expected = torch.autograd.grad(loss(params, x), list(params.values()))
    for name, g in zip(params, expected):
        torch.testing.assert_close(grads[name], g, msg=name)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch's own jit.script deprecation, inside jacrev
def test_jacrev_and_jvp_of_the_input():
    torch.manual_seed(1)
    lstm = fused_rnn.LSTM(3, 4).double()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    f = lambda x: lstm(x)[0]  # noqa: E731
    jacobian = jacrev(f)(x)  # (4, 2, 4, 4, 2, 3)
    v = torch.randn_like(x)
    _, tangent = jvp(f, (x,), (v,))
    torch.testing.assert_close(tangent, torch.einsum("abcdef,def->abc", jacobian, v))
    # One column of the Jacobian against autograd of the fused module.
    y = f(x.requires_grad_())
    (row,) = torch.autograd.grad(y[3, 1, 2], x)
    torch.testing.assert_close(jacobian[3, 1, 2], row)


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_vmap_matches_a_loop():
    torch.manual_seed(2)
    gru = fused_rnn.GRU(4, 8)
    xs = torch.randn(3, 5, 2, 4)
    batched = vmap(lambda x: gru(x)[0])(xs)
    torch.testing.assert_close(batched, torch.stack([gru(x)[0] for x in xs]))
