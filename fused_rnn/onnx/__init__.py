"""ONNX export: fused_rnn models become ONNX's standard RNN, LSTM and GRU operators.

``torch.onnx.export(model.eval(), args, f, dynamo=True)`` needs nothing else. While the ONNX
exporter traces, each ``fused_rnn.functional`` call (one layer, one direction) returns what
``operators`` emits, one standard ONNX operator, in place of the fused op (which has no ONNX
translation); the LSTM projection, which no ONNX operator has, becomes a ``Scan`` of the cell
(``projection``). The file runs on any ONNX runtime with no custom op. Outside an export the
fused path pays one check per call (``active()``). What maps to what, and the limits:
docs/onnx.md.
"""
import torch

from .operators import gru, peephole_lstm, rnn

__all__ = ["active", "rnn", "peephole_lstm", "gru"]


def active() -> bool:
    """True while torch.onnx.export traces a model (the dynamo exporter, torch.export based).

    ``torch.compiler.is_exporting()`` (~25 ns) is False outside torch.export, so the fused path
    never reaches ``torch.onnx.is_in_onnx_export()``, which imports on every call (~2 us)."""
    return torch.compiler.is_exporting() and (torch.onnx.is_in_onnx_export() or _retrying())


def _retrying() -> bool:
    """The exporter's own flag, read where ``torch.onnx.is_in_onnx_export()`` cannot see it.

    When torch.export's non-strict capture fails (an error of ours included), torch.onnx retries
    with strict=True, where dynamo folds ``is_in_onnx_export()`` to False. That retry would trace
    the fused ops, which have no ONNX translation, and the user would be shown "No ONNX function
    found for fused_rnn.linear" instead of the first attempt's error. Seeing the flag, the retry
    takes the ONNX path too, which dynamo cannot trace, so it fails as well and torch.onnx reports
    the first error. A torch without the flag only loses that message."""
    from torch.onnx._internal.exporter import _flags  # private: there is no public equivalent
    return bool(getattr(_flags, "_is_onnx_exporting", False))
