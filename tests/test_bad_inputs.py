"""A table of bad inputs to every public entry point (modules, cells, fused_rnn.functional,
PackedSequence, lengths), each run in a child process: a bad input must raise a Python exception
of the expected type whose message names the offending argument. A crash, an abort or a hang
(a CHECK in C++, a segfault, an out-of-bounds kernel) fails its case instead of the test run.

One child runs all cases of a device one by one, printing a START line before and a RESULT line
after each; if it dies or hangs, the case it had started is charged with it and a fresh child
runs the rest. Run directly (``python tests/test_bad_inputs.py CASE...``) it is that child.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Callable, Dict, List, NamedTuple, Tuple

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHILD_TIMEOUT_S = 120  # all cases of a device together; a hang costs at most this once
_HARNESS_CHECK = "FUSED_RNN_BAD_INPUTS_HARNESS_CHECK"
T, B, I, H = 4, 3, 5, 6


class Case(NamedTuple):
    call: Callable[[], object]  # runs the bad call (built lazily, in the child)
    error: type                 # the exception type expected (isinstance)
    names: Tuple[str, ...]      # substrings the message must contain (the argument's name)
    device: str = "cpu"         # "cuda" cases are skipped without a GPU


def _cases() -> Dict[str, Case]:
    import fused_rnn
    from fused_rnn import functional as F
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

    x = torch.randn(T, B, I)
    meta = dict(device="meta")

    def gru(**change):
        """fused_rnn.functional.gru with one argument changed."""
        args = dict(x=x, h0=torch.zeros(B, H), w_ih=torch.randn(3 * H, I),
                    w_hh=torch.randn(3 * H, H), b_ih=torch.randn(3 * H), b_hh=torch.randn(3 * H))
        args.update(change)
        return lambda: F.gru(args.pop("x"), args.pop("h0"), args.pop("w_ih"), args.pop("w_hh"),
                             args.pop("b_ih"), args.pop("b_hh"), **args)

    def lstm(**change):
        """fused_rnn.functional.peephole_lstm with one argument changed (w_hr: LSTM projection)."""
        args = dict(x=x, h0=torch.zeros(B, H), c0=torch.zeros(B, H), w_ih=torch.randn(4 * H, I),
                    w_hh=torch.randn(4 * H, H), w_ch=None, b_ih=None, b_hh=None)
        args.update(change)
        return lambda: F.peephole_lstm(args.pop("x"), args.pop("h0"), args.pop("c0"),
                                       args.pop("w_ih"), args.pop("w_hh"), args.pop("w_ch"),
                                       args.pop("b_ih"), args.pop("b_hh"), **args)

    def module(cls=fused_rnn.GRU, *args, **kwargs):
        return cls(I, H, *args, **kwargs)

    def on_module(cls, *call_args, **call_kwargs):
        return lambda: cls(I, H)(*call_args, **call_kwargs)

    if os.environ.get(_HARNESS_CHECK) == "1":  # cases that crash the child, to test the parent
        return {"harness_abort": Case(os.abort, ValueError, ()),
                "harness_hang": Case(lambda: __import__("time").sleep(600), ValueError, ()),
                "harness_after": Case(lambda: int("x"), ValueError, ("invalid literal",))}
    packed = pack_padded_sequence(x, torch.tensor([4, 2, 1]))
    lengths_ok = torch.tensor([4, 2, 1])
    cuda = "cuda"
    return {
        # --- modules: input
        "module_input_not_a_tensor": Case(on_module(fused_rnn.GRU, [1.0, 2.0]), TypeError, ("input",)),
        "module_input_4d": Case(on_module(fused_rnn.LSTM, x[None]), ValueError, ("input", "4D")),
        "module_input_0d": Case(on_module(fused_rnn.RNN, torch.tensor(1.0)), ValueError, ("input", "0D")),
        "module_input_int": Case(on_module(fused_rnn.GRU, x.long()), ValueError, ("input dtype",)),
        "module_input_size": Case(on_module(fused_rnn.LSTM, torch.randn(T, B, I + 1)), RuntimeError,
                                  ("input_size",)),
        "module_no_time_steps": Case(on_module(fused_rnn.GRU, torch.randn(0, B, I)), RuntimeError,
                                     ("sequence length",)),
        "module_no_time_steps_unbatched": Case(on_module(fused_rnn.LSTM, torch.randn(0, I)),
                                               RuntimeError, ("sequence length",)),
        "module_input_meta": Case(on_module(fused_rnn.LSTM, x.to(**meta)), RuntimeError,
                                  ("input tensor at meta", "parameter tensor at cpu")),
        # --- modules: hx
        "module_hx_batch": Case(on_module(fused_rnn.GRU, x, torch.zeros(1, B + 1, H)), RuntimeError,
                                ("hidden size",)),
        "module_hx_not_a_tensor": Case(on_module(fused_rnn.RNN, x, 0.0), TypeError, ("hx",)),
        "module_lstm_hx_not_a_pair": Case(on_module(fused_rnn.LSTM, x, torch.zeros(1, B, H)),
                                          TypeError, ("hx",)),
        "module_lstm_cx_size": Case(on_module(fused_rnn.LSTM, x, (torch.zeros(1, B, H),
                                                                  torch.zeros(1, B, H + 1))),
                                    RuntimeError, ("hidden[1]",)),
        "module_hx_dims": Case(on_module(fused_rnn.GRU, x, torch.zeros(B, H)), RuntimeError, ("hx",)),
        "module_hx_dtype": Case(on_module(fused_rnn.GRU, x, torch.zeros(1, B, H, dtype=torch.float64)),
                                RuntimeError, ("hidden", "dtype")),
        "module_hx_meta": Case(on_module(fused_rnn.GRU, x, torch.zeros(1, B, H, **meta)),
                               RuntimeError, ("hidden tensor at meta",)),
        # --- modules: lengths
        "lengths_too_long": Case(on_module(fused_rnn.GRU, x, lengths=torch.tensor([T + 1, 1, 1])),
                                 ValueError, ("lengths",)),
        "lengths_negative": Case(on_module(fused_rnn.LSTM, x, lengths=torch.tensor([-1, 1, 1])),
                                 ValueError, ("lengths",)),
        "lengths_float": Case(on_module(fused_rnn.RNN, x, lengths=torch.tensor([1.0, 2.0, 3.0])),
                              ValueError, ("lengths",)),
        "lengths_non_integer_list": Case(on_module(fused_rnn.GRU, x, lengths=[1.5, 2, 3]), ValueError,
                                         ("lengths",)),
        "lengths_bool": Case(on_module(fused_rnn.GRU, x, lengths=torch.tensor([True, True, False])),
                             ValueError, ("lengths",)),
        "lengths_wrong_count": Case(on_module(fused_rnn.GRU, x, lengths=torch.tensor([1, 2])),
                                    ValueError, ("lengths",)),
        "lengths_2d": Case(on_module(fused_rnn.GRU, x, lengths=torch.tensor([[1, 2, 3]])), ValueError,
                           ("lengths",)),
        "lengths_empty": Case(on_module(fused_rnn.GRU, x, lengths=torch.tensor([], dtype=torch.long)),
                              ValueError, ("lengths",)),
        "lengths_meta": Case(on_module(fused_rnn.LSTM, x, lengths=lengths_ok.to(**meta)), ValueError,
                             ("lengths", "meta")),
        "lengths_with_packed": Case(on_module(fused_rnn.GRU, packed, lengths=lengths_ok), ValueError,
                                    ("lengths", "PackedSequence")),
        # --- modules: PackedSequence
        "packed_dtype": Case(on_module(fused_rnn.GRU, pack_padded_sequence(x.double(), lengths_ok)),
                             ValueError, ("dtype",)),
        "packed_input_size": Case(on_module(fused_rnn.LSTM, pack_padded_sequence(
            torch.randn(T, B, I + 1), lengths_ok)), RuntimeError, ("input_size",)),
        "packed_hx_batch": Case(on_module(fused_rnn.RNN, packed, torch.zeros(1, B + 1, H)),
                                RuntimeError, ("hidden size",)),
        "packed_batch_sizes_increasing": Case(on_module(fused_rnn.GRU, PackedSequence(
            torch.randn(4, I), torch.tensor([1, 3]))), ValueError, ("batch_sizes",)),
        "packed_batch_sizes_too_many_rows": Case(on_module(fused_rnn.LSTM, PackedSequence(
            torch.randn(4, I), torch.tensor([3, 2]))), ValueError, ("batch_sizes",)),
        # --- modules: constructor
        "module_proj_size_gru": Case(lambda: module(fused_rnn.GRU, proj_size=2), ValueError,
                                     ("proj_size",)),
        "module_proj_size_rnn": Case(lambda: module(fused_rnn.RNN, proj_size=0), ValueError,
                                     ("proj_size",)),
        "module_proj_size_too_big": Case(lambda: module(fused_rnn.LSTM, proj_size=H), ValueError,
                                         ("proj_size",)),
        "module_hidden_size_zero": Case(lambda: fused_rnn.LSTM(I, 0), ValueError, ("hidden_size",)),
        "module_dropout": Case(lambda: module(fused_rnn.GRU, dropout=2.0), ValueError, ("dropout",)),
        "module_state_dropout": Case(lambda: module(fused_rnn.GRU, state_dropout=-0.1), ValueError,
                                     ("state_dropout",)),
        "module_backend": Case(lambda: module(fused_rnn.RNN, backend="cudnn"), ValueError, ("backend",)),
        "module_algo": Case(lambda: module(fused_rnn.LSTM, algo="fast"), ValueError, ("algo",)),
        # --- cells
        "cell_input_3d": Case(lambda: fused_rnn.GRUCell(I, H)(x), ValueError, ("input", "3D")),
        "cell_input_size": Case(lambda: fused_rnn.LSTMCell(I, H)(torch.randn(B, I + 1)), RuntimeError,
                                ("input_size",)),
        "cell_input_dtype": Case(lambda: fused_rnn.RNNCell(I, H)(x[0].double()), RuntimeError,
                                 ("input dtype",)),
        "cell_input_meta": Case(lambda: fused_rnn.GRUCell(I, H)(x[0].to(**meta)), RuntimeError,
                                ("input tensor at meta",)),
        "cell_hx_batch": Case(lambda: fused_rnn.GRUCell(I, H)(x[0], torch.zeros(B + 1, H)),
                              RuntimeError, ("hidden0",)),
        "cell_lstm_cx_size": Case(lambda: fused_rnn.LSTMCell(I, H)(x[0], (torch.zeros(B, H),
                                                                          torch.zeros(B, H + 1))),
                                  RuntimeError, ("hidden1",)),
        "cell_lstm_one_state": Case(lambda: fused_rnn.LSTMCell(I, H)(x[0], (torch.zeros(B, H),)),
                                    RuntimeError, ("two hidden states",)),
        "cell_hx_not_a_tensor": Case(lambda: fused_rnn.RNNCell(I, H)(x[0], [0.0]), TypeError, ("hx",)),
        "cell_hx_meta": Case(lambda: fused_rnn.PeepholeLSTMCell(I, H)(
            x[0], (torch.zeros(B, H, **meta), torch.zeros(B, H))), RuntimeError, ("hidden tensor at meta",)),
        # --- functional: every tensor argument by name
        "fn_x_not_a_tensor": Case(gru(x=None), TypeError, ("x",)),
        "fn_x_2d": Case(gru(x=x[0]), ValueError, ("x must be 3-D",)),
        "fn_x_int": Case(gru(x=x.long()), ValueError, ("x must be a floating-point",)),
        "fn_x_no_time_steps": Case(gru(x=torch.randn(0, B, I)), ValueError, ("x has no time steps",)),
        "fn_x_meta": Case(gru(x=x.to(**meta)), ValueError, ("w_hh", "meta")),
        "fn_h0_none": Case(gru(h0=None), TypeError, ("h0",)),
        "fn_h0_shape": Case(gru(h0=torch.zeros(B, H + 1)), ValueError, ("h0",)),
        "fn_h0_meta": Case(gru(h0=torch.zeros(B, H, **meta)), ValueError, ("h0", "meta")),
        "fn_h0_dtype": Case(gru(h0=torch.zeros(B, H, dtype=torch.float64)), ValueError, ("h0", "dtype")),
        "fn_w_ih_none": Case(gru(w_ih=None), TypeError, ("w_ih",)),
        "fn_w_ih_gate_rows": Case(gru(w_ih=torch.randn(4 * H, I)), ValueError, ("w_ih",)),
        "fn_w_ih_input_size": Case(gru(w_ih=torch.randn(3 * H, I + 1)), ValueError, ("w_ih",)),
        "fn_w_ih_half": Case(gru(w_ih=torch.randn(3 * H, I).half()), ValueError, ("w_ih", "dtype")),
        "fn_w_hh_empty": Case(gru(w_hh=torch.empty(0)), ValueError, ("w_hh",)),
        "fn_w_hh_cols": Case(gru(w_hh=torch.randn(3 * H, H + 1)), ValueError, ("w_hh",)),
        "fn_w_hh_meta": Case(gru(w_hh=torch.randn(3 * H, H, **meta)), ValueError, ("w_hh", "meta")),
        "fn_b_ih_not_a_tensor": Case(gru(b_ih=3.0), TypeError, ("b_ih",)),
        "fn_b_ih_shape": Case(gru(b_ih=torch.randn(3 * H + 1)), ValueError, ("b_ih",)),
        "fn_b_ih_2d": Case(gru(b_ih=torch.randn(1, 3 * H)), ValueError, ("b_ih",)),
        "fn_b_ih_meta": Case(gru(b_ih=torch.randn(3 * H, **meta)), ValueError, ("b_ih", "meta")),
        "fn_b_hh_shape": Case(gru(b_hh=torch.randn(4 * H)), ValueError, ("b_hh",)),
        "fn_b_hh_dtype": Case(gru(b_hh=torch.randn(3 * H, dtype=torch.float64)), ValueError,
                              ("b_hh", "dtype")),
        "fn_c0_none": Case(lstm(c0=None), TypeError, ("c0",)),
        "fn_c0_shape": Case(lstm(c0=torch.zeros(B, H + 1)), ValueError, ("c0",)),
        "fn_c0_meta": Case(lstm(c0=torch.zeros(B, H, **meta)), ValueError, ("c0", "meta")),
        "fn_w_ch_shape": Case(lstm(w_ch=torch.zeros(4 * H)), ValueError, ("w_ch",)),
        "fn_w_ch_meta": Case(lstm(w_ch=torch.zeros(3 * H, **meta)), ValueError, ("w_ch", "meta")),
        "fn_w_hr_shape": Case(lstm(h0=torch.zeros(B, 2), w_hh=torch.randn(4 * H, 2),
                                   w_hr=torch.randn(2, H + 1)), ValueError, ("w_hr",)),
        "fn_state_mask_shape": Case(gru(state_mask=torch.ones(B, H + 1)), ValueError, ("state_mask",)),
        "fn_state_mask_dtype": Case(gru(state_mask=torch.ones(B, H, dtype=torch.float64)), ValueError,
                                    ("state_mask",)),
        "fn_state_mask_meta": Case(gru(state_mask=torch.ones(B, H, **meta)), ValueError,
                                   ("state_mask", "meta")),
        "fn_lengths_meta": Case(gru(lengths=lengths_ok.to(**meta)), ValueError, ("lengths", "meta")),
        "fn_lengths_too_long": Case(gru(lengths=torch.tensor([T + 1, 1, 1])), ValueError, ("lengths",)),
        "fn_lengths_float": Case(lstm(lengths=torch.tensor([1.0, 1.0, 1.0])), ValueError, ("lengths",)),
        "fn_nonlinearity": Case(lambda: F.rnn(x, torch.zeros(B, H), torch.randn(H, I),
                                              torch.randn(H, H), nonlinearity="gelu"),
                                ValueError, ("nonlinearity",)),
        "fn_backend": Case(gru(backend="cudnn"), ValueError, ("backend",)),
        "fn_algo": Case(gru(algo="fast"), ValueError, ("algo",)),
        # --- CUDA: the same device checks against a real second device
        "cuda_module_input": Case(lambda: fused_rnn.GRU(I, H)(x.to(cuda)), RuntimeError,
                                  ("input tensor at cuda:0", "parameter tensor at cpu"), "cuda"),
        "cuda_module_hx": Case(lambda: fused_rnn.LSTM(I, H).to(cuda)(
            x.to(cuda), (torch.zeros(1, B, H), torch.zeros(1, B, H, device=cuda))), RuntimeError,
            ("hidden tensor at cpu",), "cuda"),
        "cuda_lengths_with_cpu_input": Case(lambda: fused_rnn.GRU(I, H)(
            x, lengths=lengths_ok.to(cuda)), ValueError, ("lengths", "cuda"), "cuda"),
        "cuda_cell_hx": Case(lambda: fused_rnn.GRUCell(I, H).to(cuda)(x[0].to(cuda), torch.zeros(B, H)),
                             RuntimeError, ("hidden tensor at cpu",), "cuda"),
        "cuda_fn_h0": Case(lambda: F.gru(x.to(cuda), torch.zeros(B, H), torch.randn(3 * H, I, device=cuda),
                                         torch.randn(3 * H, H, device=cuda)), ValueError,
                           ("h0", "cuda"), "cuda"),
        "cuda_fn_b_hh": Case(lambda: F.gru(x.to(cuda), torch.zeros(B, H, device=cuda),
                                           torch.randn(3 * H, I, device=cuda),
                                           torch.randn(3 * H, H, device=cuda), None, torch.zeros(3 * H)),
                             ValueError, ("b_hh", "cuda"), "cuda"),
    }


# Case name -> device. Building the table is cheap (small CPU tensors; every CUDA tensor is made
# inside its call), so the parent builds it too, but never runs a case.
_CASE_DEVICES = {name: case.device for name, case in _cases().items()}


# ------------------------------------------------------------------------------------ the child
def child_main(names: List[str]) -> None:
    torch.set_num_threads(1)
    cases = _cases()
    for name in names:
        print(f"START {name}", flush=True)
        case = cases[name]
        try:
            case.call()
            result = {"mro": [], "message": "returned without an exception"}
        except BaseException as error:  # noqa: BLE001 - the parent judges what was raised
            result = {"mro": [c.__name__ for c in type(error).__mro__], "message": str(error)}
        print(f"RESULT {json.dumps({'case': name, **result})}", flush=True)


# ----------------------------------------------------------------------------------- the parent
def _run_children(names: List[str], timeout_s: float = CHILD_TIMEOUT_S,
                  **env_extra: str) -> Dict[str, dict]:
    """Runs ``names`` in as few children as possible; a case during which a child died or hung
    gets ``{"crash": ...}``."""
    results: Dict[str, dict] = {}
    pending = list(names)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               **env_extra)
    while pending:
        command = [sys.executable, os.path.abspath(__file__), *pending]
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT,
                                  timeout=timeout_s)
            stdout, ending = done.stdout, f"exit status {done.returncode}: {done.stderr[-2000:]}"
        except subprocess.TimeoutExpired as timeout:
            stdout = timeout.stdout.decode() if isinstance(timeout.stdout, bytes) else (timeout.stdout or "")
            ending = f"hung (no result within {timeout_s} s)"
        started = None
        for line in stdout.splitlines():
            if line.startswith("START "):
                started = line[len("START "):]
            elif line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
                results[result.pop("case")] = result
        pending = [n for n in pending if n not in results]
        if pending:  # the child died or hung: charge the case it had started (or the next one)
            culprit = started if started in pending else pending[0]
            results[culprit] = {"crash": ending}
            pending.remove(culprit)
    return results


_RESULTS: Dict[str, Dict[str, dict]] = {}


def _result(name: str) -> dict:
    device = _CASE_DEVICES[name]
    if device not in _RESULTS:  # one child for all cases of a device, on first use
        _RESULTS[device] = _run_children([n for n, d in _CASE_DEVICES.items() if d == device])
    return _RESULTS[device][name]


def _params():
    needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    return [pytest.param(name, marks=needs_cuda if device == "cuda" else ())
            for name, device in _CASE_DEVICES.items()]


def test_the_table_is_large():
    assert len([d for d in _CASE_DEVICES.values() if d == "cpu"]) >= 40


def test_a_crash_or_a_hang_is_charged_to_its_case():
    """The harness itself: an abort and a hang fail their own cases, the cases after them still
    run (in fresh children)."""
    results = _run_children(["harness_abort", "harness_hang", "harness_after"], timeout_s=20,
                            **{_HARNESS_CHECK: "1"})
    assert "exit status" in results["harness_abort"]["crash"]
    assert "hung" in results["harness_hang"]["crash"]
    assert "ValueError" in results["harness_after"]["mro"]


@pytest.mark.parametrize("name", _params())
def test_bad_input_raises_and_names_the_argument(name):
    case = _cases()[name]
    result = _result(name)
    assert "crash" not in result, f"{name}: the process {result.get('crash')}"
    assert case.error.__name__ in result["mro"], \
        f"{name}: expected {case.error.__name__}, got {result['mro'][:1]}: {result['message']}"
    for word in case.names:
        assert word in result["message"], f"{name}: {word!r} not in {result['message']!r}"


if __name__ == "__main__":
    child_main(sys.argv[1:])
