"""Dynamic quantization of fused_rnn's modules with torch's own tools.

``torch.ao.quantization.quantize_dynamic`` picks modules by their exact type, so a set such as
``{nn.LSTM}`` does not reach ``fused_rnn.LSTM`` (a subclass). Name fused_rnn's types, or let
:func:`with_fused_types` add them::

    from fused_rnn.quantization import with_fused_types
    quantized = torch.ao.quantization.quantize_dynamic(model, with_fused_types({nn.LSTM, nn.Linear}))

Importing fused_rnn registers, in torch's default dynamic-quantization mappings, a conversion
for each fused module: the module's weights go into torch's quantized module (the same one
``nn.LSTM`` becomes), so the quantized model computes what a quantized torch.nn model computes.
What torch has no quantized kernel for (the peephole LSTM, the reset_before GRU, the LSTM's
projection) raises a ValueError saying so instead of staying float32 without a word.
"""
from __future__ import annotations

from typing import Dict, Set, Type, Union

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization import quantization_mappings

from . import cells, modules

__all__ = ["with_fused_types"]

# torch.nn type -> the fused_rnn types that are instances of it.
_FUSED_TYPES: Dict[Type[nn.Module], tuple] = {
    nn.LSTM: (modules.LSTM, modules.PeepholeLSTM),
    nn.GRU: (modules.GRU,),
    nn.RNN: (modules.RNN,),
    nn.LSTMCell: (cells.LSTMCell, cells.PeepholeLSTMCell),
    nn.GRUCell: (cells.GRUCell,),
    nn.RNNCell: (cells.RNNCell,),
}


def with_fused_types(qconfig_spec: Union[Set, Dict]) -> Union[Set, Dict]:
    """``qconfig_spec`` for ``quantize_dynamic`` with each fused_rnn type added next to the
    torch.nn type it is an instance of (with the same qconfig, for a dict)."""
    if isinstance(qconfig_spec, dict):
        extended = dict(qconfig_spec)
        for torch_type, qconfig in qconfig_spec.items():
            for fused_type in _FUSED_TYPES.get(torch_type, ()):
                extended.setdefault(fused_type, qconfig)
        return extended
    if isinstance(qconfig_spec, (set, frozenset, list, tuple)):
        extended = set(qconfig_spec)
        for torch_type in qconfig_spec:
            extended.update(_FUSED_TYPES.get(torch_type, ()))
        return extended
    raise TypeError(f"qconfig_spec must be a set or a dict, as for quantize_dynamic, got "
                    f"{type(qconfig_spec).__name__}")


def _cannot_quantize(module: nn.Module) -> None:
    name = type(module).__name__
    if isinstance(module, (modules.PeepholeLSTM, cells.PeepholeLSTMCell)):
        raise ValueError(f"{name} cannot be dynamically quantized: torch has no quantized LSTM "
                         "with peephole connections (leave it out of qconfig_spec to keep it "
                         "in floating point)")
    if isinstance(module, (modules.GRU, cells.GRUCell)) and not module.reset_after:
        raise ValueError(f"{name}(reset_after=False) cannot be dynamically quantized: torch's "
                         "quantized GRU computes the reset_after variant (leave it out of "
                         "qconfig_spec to keep it in floating point)")
    if isinstance(module, modules.LSTM) and module.proj_size > 0:
        raise ValueError(f"{name}(proj_size={module.proj_size}) cannot be dynamically quantized: "
                         "torch's quantized LSTM has no projection")
    if isinstance(module, modules._FusedRNNBase) and module.layer_devices is not None:
        raise ValueError(f"{name} placed on several devices with place_layers cannot be "
                         "quantized: call place_layers(None) first")


def _torch_twin(module: nn.Module) -> nn.Module:
    """A torch.nn module of the same configuration holding ``module``'s weights."""
    if isinstance(module, modules._FusedRNNBase):
        twin_type = nn.LSTM if isinstance(module, nn.LSTM) else nn.GRU
        kwargs = dict(num_layers=module.num_layers, bias=module.bias,
                      batch_first=module.batch_first, dropout=module.dropout,
                      bidirectional=module.bidirectional)
        if twin_type is nn.LSTM:
            kwargs["proj_size"] = module.proj_size
        twin = twin_type(module.input_size, module.hidden_size, **kwargs)
    else:
        twin_type = next(t for t in (nn.LSTMCell, nn.GRUCell, nn.RNNCell) if isinstance(module, t))
        kwargs = {"nonlinearity": module.nonlinearity} if twin_type is nn.RNNCell else {}
        twin = twin_type(module.input_size, module.hidden_size, bias=module.bias, **kwargs)
    twin.load_state_dict(module.state_dict())
    twin.qconfig = getattr(module, "qconfig", None)
    return twin


def _conversion(quantized_type: Type[nn.Module]):
    """The class quantize_dynamic's mapping points at: its from_float converts a fused module
    into ``quantized_type`` (torch's quantized module) through its torch.nn twin."""

    class FromFused:
        @classmethod
        def from_float(cls, module, use_precomputed_fake_quant: bool = False):
            _cannot_quantize(module)
            with torch.no_grad():
                return quantized_type.from_float(
                    _torch_twin(module), use_precomputed_fake_quant=use_precomputed_fake_quant)

    FromFused.__name__ = f"FusedTo{quantized_type.__name__}"
    return FromFused


def _register() -> None:
    mappings = quantization_mappings.DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS
    for fused_type, quantized_type in [
            (modules.LSTM, nnqd.LSTM), (modules.PeepholeLSTM, nnqd.LSTM), (modules.GRU, nnqd.GRU),
            (cells.LSTMCell, nnqd.LSTMCell), (cells.PeepholeLSTMCell, nnqd.LSTMCell),
            (cells.GRUCell, nnqd.GRUCell), (cells.RNNCell, nnqd.RNNCell)]:
        mappings.setdefault(fused_type, _conversion(quantized_type))


_register()
