"""ONNX export (fused_rnn/onnx): torch.onnx.export(dynamo=True) of every module, run in
onnxruntime at a sequence length and batch other than the export example's, against the fused
eager output."""
import io

import pytest
import torch

onnx = pytest.importorskip("onnx", reason="ONNX export tests need `pip install onnx`")
ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need `pip install onnxruntime`")
pytest.importorskip("onnxscript",
                    reason="torch.onnx.export(dynamo=True) needs `pip install onnxscript`")

import fused_rnn  # noqa: E402
from fused_rnn import _ops  # noqa: E402

if _ops.LOAD_ERROR is not None:
    pytest.skip(f"fused kernels not built ({_ops.LOAD_ERROR})", allow_module_level=True)

# torch.onnx notes that one Dim names several axes (x's batch, hx's, lengths'): as intended.
pytestmark = pytest.mark.filterwarnings("ignore:# The axis name")

INPUT, HIDDEN = 5, 8
EXAMPLE_T, EXAMPLE_B = 5, 3  # the export example; the runs use other sizes (dynamic T and B)
RUNS = [(7, torch.tensor([7, 0, 3, 6])), (2, torch.tensor([1]))]  # (T, lengths): B = 4, then 1

CELLS = {  # name: (module, its arguments, the ONNX operator it becomes)
    "rnn_tanh": (fused_rnn.RNN, dict(nonlinearity="tanh"), "RNN"),
    "rnn_relu": (fused_rnn.RNN, dict(nonlinearity="relu"), "RNN"),
    "lstm": (fused_rnn.LSTM, {}, "LSTM"),
    "peephole_lstm": (fused_rnn.PeepholeLSTM, {}, "LSTM"),
    "gru": (fused_rnn.GRU, dict(reset_after=True), "GRU"),
    "gru_reset_before": (fused_rnn.GRU, dict(reset_after=False), "GRU"),
    "lstm_proj": (fused_rnn.LSTM, dict(proj_size=3), "Scan"),
}
# "full": every option at once, hx and lengths given too; "plain": the defaults (no hx, no
# lengths, one direction, time-major) but no biases; "bidirectional": "full" with one layer (the
# projected LSTM's Scan is slow to export). One export costs seconds, so each cell gets one
# "full" export and each ONNX operator one "plain" one.
OPTIONS = {
    "full": dict(num_layers=2, bidirectional=True, batch_first=True),
    "plain": dict(bias=False),
    "bidirectional": dict(bidirectional=True, batch_first=True),
}
CASES = [(cell, "full") for cell in CELLS if cell != "lstm_proj"] + [
    ("rnn_relu", "plain"), ("peephole_lstm", "plain"), ("gru_reset_before", "plain"),
    ("lstm_proj", "bidirectional"), ("lstm_proj", "plain")]


def _make(cell: str, options: str) -> torch.nn.Module:
    cls, kwargs, _ = CELLS[cell]
    torch.manual_seed(0)
    model = cls(INPUT, HIDDEN, **kwargs, **OPTIONS[options]).eval()
    with torch.no_grad():  # weights larger than the default init: saturating, distinct gates
        for p in model.parameters():
            p.mul_(3)
    return model


def _inputs(model, steps: int, lengths, full: bool):
    """(args, kwargs) for model.forward: x, and for the "full" options hx and lengths."""
    batch = lengths.numel()
    x = torch.randn((batch, steps, INPUT) if model.batch_first else (steps, batch, INPUT))
    if not full:
        return (x,), {}
    layers = model.num_layers * (2 if model.bidirectional else 1)
    h = torch.randn(layers, batch, model.proj_size or HIDDEN)
    hx = (h, torch.randn(layers, batch, HIDDEN)) if isinstance(model, fused_rnn.LSTM) else h
    return (x, hx), {"lengths": lengths}


def _dynamic_shapes(model, full: bool):
    steps, batch = torch.export.Dim("T"), torch.export.Dim("B")
    x = {0: batch, 1: steps} if model.batch_first else {0: steps, 1: batch}
    if not full:
        return {"input": x}
    h = {1: batch}
    hx = (h, h) if isinstance(model, fused_rnn.LSTM) else h
    return {"input": x, "hx": hx, "lengths": {0: batch}}


def _export(model, args, kwargs, dynamic_shapes) -> bytes:
    program = torch.onnx.export(model, args, kwargs=kwargs, dynamo=True,
                                dynamic_shapes=dynamic_shapes, verbose=False)
    buffer = io.BytesIO()
    program.save(buffer)
    return buffer.getvalue()


def _run_onnx(model_bytes: bytes, args, kwargs):
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    flat, _ = torch.utils._pytree.tree_flatten((args, kwargs))
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), flat)}
    assert len(feeds) == len(flat)
    return [torch.from_numpy(out) for out in session.run(None, feeds)]


@pytest.mark.parametrize("cell, options", CASES, ids=[f"{c}-{o}" for c, o in CASES])
def test_export_runs_in_onnxruntime(cell, options):
    full = options != "plain"
    model = _make(cell, options)
    example_lengths = torch.tensor([EXAMPLE_T, 2, 4])
    args, kwargs = _inputs(model, EXAMPLE_T, example_lengths, full)
    model_bytes = _export(model, args, kwargs, _dynamic_shapes(model, full))

    graph = onnx.load_from_string(model_bytes).graph
    op_types = {node.op_type for node in graph.node}
    assert CELLS[cell][2] in op_types
    assert all(node.domain in ("", "ai.onnx") for node in graph.node), "a non-standard op"

    for steps, lengths in RUNS:
        torch.manual_seed(steps)
        args, kwargs = _inputs(model, steps, lengths, full)
        with torch.no_grad():
            expected, _ = torch.utils._pytree.tree_flatten(model(*args, **kwargs))
        got = _run_onnx(model_bytes, args, kwargs)
        assert len(got) == len(expected)
        where = f"T={steps}, B={lengths.numel()}"
        for name, g, e in zip(["y", "h_n", "c_n"], got, expected):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5,
                                       msg=lambda m: f"{name} ({where}): {m}")


# The TorchScript exporter warns about itself (deprecated) and about the Python-side checks it
# traces (shapes, lengths' range) as constants; neither matters for these models.
legacy_warnings = pytest.mark.filterwarnings(
    "ignore::torch.jit.TracerWarning", "ignore:You are using the legacy:DeprecationWarning",
    "ignore:The feature will be removed:DeprecationWarning")
LEGACY_CASES = [("peephole_lstm", "full"), ("gru_reset_before", "full"), ("gru", "plain"),
                ("rnn_tanh", "bidirectional")]


@legacy_warnings
@pytest.mark.parametrize("cell, options", LEGACY_CASES, ids=[f"{c}-{o}" for c, o in LEGACY_CASES])
def test_torchscript_exporter(cell, options):
    """The legacy exporter (dynamo=False) maps the traced fused ops onto the same operators."""
    full = options != "plain"
    model = _make(cell, options)
    args, kwargs = _inputs(model, EXAMPLE_T, torch.tensor([EXAMPLE_T, 2, 4]), full)
    lstm = isinstance(model, fused_rnn.LSTM)
    names = ["input"] + (["h0", "c0"] if lstm else ["h0"]) * full + ["lengths"] * full
    time_axis, batch_axis = (1, 0) if model.batch_first else (0, 1)
    axes = {"input": {time_axis: "T", batch_axis: "B"}, "h0": {1: "B"}, "c0": {1: "B"},
            "lengths": {0: "B"}}
    buffer = io.BytesIO()
    torch.onnx.export(model, args, buffer, kwargs=kwargs, dynamo=False, input_names=names,
                      dynamic_axes={name: axes[name] for name in names})
    model_bytes = buffer.getvalue()
    graph = onnx.load_from_string(model_bytes).graph
    assert CELLS[cell][2] in {node.op_type for node in graph.node}
    assert len(graph.initializer) >= 2  # the reordered weights, folded into constants

    for steps, lengths in RUNS:
        args, kwargs = _inputs(model, steps, lengths, full)
        with torch.no_grad():
            expected, _ = torch.utils._pytree.tree_flatten(model(*args, **kwargs))
        for got, e in zip(_run_onnx(model_bytes, args, kwargs), expected):
            torch.testing.assert_close(got, e, rtol=1e-5, atol=1e-5)


@legacy_warnings
def test_torchscript_exporter_refuses_the_projection_by_name():
    model = fused_rnn.LSTM(INPUT, HIDDEN, proj_size=3).eval()
    with pytest.raises(Exception, match="proj_size > 0.*dynamo=True"):
        torch.onnx.export(model, (torch.randn(EXAMPLE_T, EXAMPLE_B, INPUT),), io.BytesIO(),
                          dynamo=False)


def test_cell_exports_as_one_step():
    torch.manual_seed(0)
    cell = fused_rnn.PeepholeLSTMCell(INPUT, HIDDEN).eval()
    x, h, c = torch.randn(3, INPUT), torch.randn(3, HIDDEN), torch.randn(3, HIDDEN)
    batch = torch.export.Dim("B")
    model_bytes = _export(cell, (x, (h, c)), {},
                          {"input": {0: batch}, "hx": ({0: batch}, {0: batch})})
    assert "LSTM" in {node.op_type for node in onnx.load_from_string(model_bytes).graph.node}
    args = (torch.randn(5, INPUT), (torch.randn(5, HIDDEN), torch.randn(5, HIDDEN)))
    with torch.no_grad():
        expected = cell(*args)
    for got, e in zip(_run_onnx(model_bytes, args, {}), expected):
        torch.testing.assert_close(got, e, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Exporting a model while it is in training mode")
def test_state_dropout_in_train_mode_is_refused_by_name():
    model = fused_rnn.GRU(INPUT, HIDDEN, state_dropout=0.5).train()
    with pytest.raises(Exception, match="state_mask .*recurrent-state dropout.*model.eval()"):
        torch.onnx.export(model, (torch.randn(EXAMPLE_T, EXAMPLE_B, INPUT),), dynamo=True,
                          verbose=False)


def test_fused_path_outside_onnx_export():
    """Eager calls and a plain torch.export keep the fused ops; only ONNX export swaps them."""
    assert not fused_rnn.onnx.active()
    model = fused_rnn.LSTM(INPUT, HIDDEN).eval()
    program = torch.export.export(model, (torch.randn(EXAMPLE_T, EXAMPLE_B, INPUT),))
    targets = {str(node.target) for node in program.graph.nodes}
    assert "fused_rnn.lstm_sequence.default" in targets
    assert not any("onnx_symbolic" in t for t in targets)
