"""ONNX export: fused_rnn models become ONNX's standard RNN, LSTM and GRU operators.

``torch.onnx.export(model.eval(), args, f, dynamo=True)`` needs nothing else. While the ONNX
exporter traces, each ``fused_rnn.functional`` call (one layer, one direction) returns what
``operators`` emits, one standard ONNX operator, in place of the fused op (which has no ONNX
translation); the LSTM projection, which no ONNX operator has, becomes a ``Scan`` of the cell
(``projection``). The legacy TorchScript exporter (``dynamo=False``) maps the traced fused ops
onto the same operators (``torchscript``). The file runs on any ONNX runtime with no custom op.
Outside an export the fused path pays one check per call (``active()``). What maps to what, and
the limits: docs/onnx.md.
"""
import torch

from .operators import gru, peephole_lstm, rnn

__all__ = ["active", "rnn", "peephole_lstm", "gru"]


def active() -> bool:
    """True while the dynamo ONNX exporter (torch.export based, torch's default) traces a model:
    fused_rnn.functional then returns ONNX operators instead of calling the fused op.

    The TorchScript exporter (dynamo=False) maps the traced fused op itself: the first time this
    sees it trace, the symbolic functions are registered (torchscript.py), and it returns False.
    Outside an export this costs ~0.2 us (is_exporting and is_tracing, both of which
    torch.compile understands); ``torch.onnx.is_in_onnx_export()``, which imports on every call
    (~2 us), runs only while torch.export or the JIT tracer runs."""
    if torch.compiler.is_exporting():
        return torch.onnx.is_in_onnx_export() or _retrying()
    if torch.jit.is_tracing() and torch.onnx.is_in_onnx_export():
        from . import torchscript  # imports torch.onnx (~20 ms): not at fused_rnn's import
        torchscript.register()
    return False


def _retrying() -> bool:
    """The exporter's own flag, read where ``torch.onnx.is_in_onnx_export()`` cannot see it.

    When torch.export's non-strict capture fails (an error of ours included), torch.onnx retries
    with strict=True, where dynamo folds ``is_in_onnx_export()`` to False. That retry would trace
    the fused ops, which have no ONNX translation, and the user would be shown "No ONNX function
    found for fused_rnn.linear" instead of the first attempt's error. Seeing the flag, the retry
    takes the ONNX path too, which dynamo cannot trace, so it fails as well and torch.onnx reports
    the first error. A torch without the flag only loses that message."""
    try:  # private: there is no public equivalent
        from torch.onnx._internal.exporter import _flags
    except ImportError:
        return False
    return bool(getattr(_flags, "_is_onnx_exporting", False))
