"""Drop-in by type: the fused modules and cells are instances of torch.nn's, so type checks and
weight-init loops see them; dynamic quantization turns them into torch's quantized modules with
the numbers a quantized torch.nn model gives, and refuses, saying why, what cannot be quantized."""
import pytest
import torch
from torch import nn
from torch.ao.quantization import quantize_dynamic

import fused_rnn
from fused_rnn.quantization import with_fused_types

# torch.ao.quantization and quantized tensors warn that they are deprecated (for torchao).
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

TYPES = [
    (lambda: fused_rnn.LSTM(4, 6), nn.LSTM), (lambda: fused_rnn.PeepholeLSTM(4, 6), nn.LSTM),
    (lambda: fused_rnn.GRU(4, 6), nn.GRU), (lambda: fused_rnn.GRU(4, 6, reset_after=False), nn.GRU),
    (lambda: fused_rnn.RNN(4, 6), nn.RNN), (lambda: fused_rnn.LSTMCell(4, 6), nn.LSTMCell),
    (lambda: fused_rnn.PeepholeLSTMCell(4, 6), nn.LSTMCell),
    (lambda: fused_rnn.GRUCell(4, 6), nn.GRUCell), (lambda: fused_rnn.RNNCell(4, 6), nn.RNNCell),
]


@pytest.mark.parametrize("make, torch_type", TYPES)
def test_instances_of_torch_types(make, torch_type):
    module = make()
    assert isinstance(module, torch_type)
    # The usual init loop over isinstance(m, nn.LSTM) reaches every parameter.
    for name, p in module.named_parameters():
        nn.init.constant_(p, 0.5)
    assert all(bool((p == 0.5).all()) for p in module.parameters())


@pytest.mark.parametrize("fused_type, plain_type, kwargs", [
    (fused_rnn.LSTM, nn.LSTM, dict(num_layers=2, bidirectional=True)),
    (fused_rnn.LSTM, nn.LSTM, dict(batch_first=True)),
    (fused_rnn.GRU, nn.GRU, dict(num_layers=2)),
])
@pytest.mark.parametrize("dtype", [torch.qint8, torch.float16])
def test_quantized_modules_equal_quantized_torch(fused_type, plain_type, kwargs, dtype):
    torch.manual_seed(0)
    fused = fused_type(4, 6, **kwargs)
    plain = plain_type(4, 6, **kwargs)
    plain.load_state_dict(fused.state_dict())
    q_fused = quantize_dynamic(nn.Sequential(fused), with_fused_types({plain_type}), dtype=dtype)
    q_plain = quantize_dynamic(nn.Sequential(plain), {plain_type}, dtype=dtype)
    assert type(q_fused[0]) is type(q_plain[0])  # torch's quantized module, not float32 any more
    x = torch.randn(6, 5, 4) if not kwargs.get("batch_first") else torch.randn(5, 6, 4)
    out_fused, out_plain = q_fused(x), q_plain(x)
    torch.testing.assert_close(out_fused[0], out_plain[0], rtol=0, atol=0)
    # ... and close to the float module (what quantization is for).
    torch.testing.assert_close(out_fused[0], fused(x)[0], rtol=0, atol=0.05)


@pytest.mark.parametrize("fused_type, plain_type", [
    (fused_rnn.LSTMCell, nn.LSTMCell), (fused_rnn.GRUCell, nn.GRUCell),
    (fused_rnn.RNNCell, nn.RNNCell)])
def test_quantized_cells_equal_quantized_torch(fused_type, plain_type):
    torch.manual_seed(1)
    fused = fused_type(4, 6)
    plain = plain_type(4, 6)
    plain.load_state_dict(fused.state_dict())
    q_fused = quantize_dynamic(nn.Sequential(fused), {fused_type})
    q_plain = quantize_dynamic(nn.Sequential(plain), {plain_type})
    assert type(q_fused[0]) is type(q_plain[0])
    x = torch.randn(3, 4)
    out_fused, out_plain = q_fused(x), q_plain(x)
    for a, b in zip(out_fused if isinstance(out_fused, tuple) else (out_fused,),
                    out_plain if isinstance(out_plain, tuple) else (out_plain,)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("module, reason", [
    (fused_rnn.PeepholeLSTM(4, 6), "peephole"), (fused_rnn.PeepholeLSTMCell(4, 6), "peephole"),
    (fused_rnn.GRU(4, 6, reset_after=False), "reset_after"),
    (fused_rnn.GRUCell(4, 6, reset_after=False), "reset_after"),
    (fused_rnn.LSTM(4, 6, proj_size=3), "proj_size")])
def test_what_cannot_be_quantized_says_so(module, reason):
    with pytest.raises(ValueError, match=reason):
        quantize_dynamic(nn.Sequential(module), with_fused_types({nn.LSTM, nn.GRU, nn.LSTMCell,
                                                                  nn.GRUCell}))


def test_with_fused_types_keeps_dicts_and_refuses_other_specs():
    qconfig = torch.ao.quantization.default_dynamic_qconfig
    spec = with_fused_types({nn.LSTM: qconfig, nn.Linear: qconfig})
    assert spec[fused_rnn.LSTM] is qconfig and nn.Linear in spec and fused_rnn.GRU not in spec
    with pytest.raises(TypeError, match="qconfig_spec"):
        with_fused_types(nn.LSTM)
