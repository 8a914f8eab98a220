"""The fused sequence ops against the pure-PyTorch oracle (fused_rnn.reference) and torch.nn,
on every device present: values, gradients, lengths, reverse, dtypes, bad input, opcheck."""
import pytest
import torch

from fused_rnn import functional as F
from cases import CELLS, make_case, outputs_and_grads

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA GPU"))]
# atol is relative to each tensor's largest entry: float32 sums of many terms lose digits on the
# entries that cancel to near zero.
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def assert_all_close(actual, expected, rtol, atol):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype
        scale = 1.0 + (e.abs().max().item() if e.numel() else 0.0)
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol * scale)


def assert_matches_reference(case, dtype):
    fused = outputs_and_grads(case, "fused")
    ref = outputs_and_grads(case, "reference")
    assert_all_close(fused[0], ref[0], **TOL[dtype])
    assert_all_close(fused[1], ref[1], **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 3, 1), (5, 3, 4, 7), (3, 2, 5, 129)], ids=str)
@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference(cell, shape, dtype, device):
    torch.manual_seed(0)
    assert_matches_reference(make_case(cell, *shape, dtype=dtype, device=device), dtype)


LENGTHS = {"random": [6, 2, 4, 1], "all_T": [6, 6, 6, 6], "some_zero": [0, 6, 0, 3]}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", list(LENGTHS), ids=str)
@pytest.mark.parametrize("cell", CELLS)
def test_lengths_and_reverse(cell, lengths, reverse, device):
    torch.manual_seed(1)
    case = make_case(cell, 6, 4, 3, 5, lengths=torch.tensor(LENGTHS[lengths]), reverse=reverse,
                     device=device)
    assert_matches_reference(case, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, [6, 0, 3, 5]], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_state_dropout(cell, lengths, reverse, device):
    """Recurrent-state dropout: the recurrent weights see h ⊙ mask, values and gradients."""
    torch.manual_seed(7)
    case = make_case(cell, 6, 4, 3, 5, lengths=None if lengths is None else torch.tensor(lengths),
                     reverse=reverse, device=device, state_dropout=0.4)
    assert (case.state_mask == 0).any() and (case.state_mask != 0).any()
    assert_matches_reference(case, torch.float64)
    dropped = case.run("fused")
    case.state_mask = torch.ones_like(case.state_mask)  # an all-ones mask is no dropout
    all_kept = case.run("fused")
    case.state_mask = None
    for a, b in zip(all_kept, case.run("fused")):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(dropped[0], all_kept[0])


@pytest.mark.parametrize("cell", CELLS)
def test_final_state_is_last_valid_step(cell):
    """h_n of a sequence of length L equals the final state of running only its first L steps."""
    torch.manual_seed(2)
    case = make_case(cell, 6, 3, 3, 4, lengths=torch.tensor([6, 3, 0]), requires_grad=False)
    full = case.run()
    for b, length in enumerate([6, 3]):
        single = make_case(cell, length, 1, 3, 4, requires_grad=False)
        single.x, single.h0 = case.x[:length, b:b + 1], case.h0[b:b + 1]
        single.c0 = case.c0[b:b + 1] if case.c0 is not None else None
        single.weights = case.weights
        alone = single.run()
        for state_full, state_alone in zip(full[1:], alone[1:]):
            torch.testing.assert_close(state_full[b:b + 1], state_alone)
    for state, initial in zip(full[1:], [case.h0, case.c0]):
        torch.testing.assert_close(state[2], initial[2])  # length 0: the initial state
    assert torch.all(full[0][:, 2] == 0) and torch.all(full[0][3:, 1] == 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck(cell, reverse, device):
    torch.manual_seed(3)
    case = make_case(cell, 4, 3, 2, 3, lengths=torch.tensor([4, 0, 2]), reverse=reverse,
                     device=device, state_dropout=0.3 if reverse else 0.0)

    # gradcheck perturbs the leaf tensors in place, and case.run reads those same tensors.
    assert torch.autograd.gradcheck(lambda *_: case.run("fused"), tuple(case.leaves()),
                                    eps=1e-6, atol=1e-6)


def _copy_torch_weights(module, suffix=""):
    return {name: getattr(module, f"{name}_l0{suffix}") for name in
            ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"])
def test_same_numbers_as_torch_nn(kind, device):
    torch.manual_seed(4)
    T, B, I, H = 5, 3, 4, 6
    dtype = torch.float64
    if kind.startswith("rnn"):
        module = torch.nn.RNN(I, H, nonlinearity=kind[4:], bidirectional=True)
    elif kind.startswith("lstm"):
        module = torch.nn.LSTM(I, H, proj_size=2 if kind == "lstm_proj" else 0, bidirectional=True)
    else:
        module = torch.nn.GRU(I, H, bidirectional=True)
    module = module.to(device=device, dtype=dtype)
    x = torch.randn(T, B, I, dtype=dtype, device=device)
    expected_y, expected_state = module(x)
    state = expected_state if isinstance(expected_state, tuple) else (expected_state,)
    zero = [torch.zeros_like(s[0]) for s in state]
    outputs = []
    for direction, suffix in enumerate(["", "_reverse"]):
        w = _copy_torch_weights(module, suffix)
        args = (w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"])
        reverse = direction == 1
        if kind.startswith("rnn"):
            y, h = F.rnn(x, zero[0], *args, nonlinearity=kind[4:], reverse=reverse)
            finals = (h,)
        elif kind.startswith("lstm"):
            w_hr = getattr(module, f"weight_hr_l0{suffix}", None)
            y, h, c = F.lstm(x, zero[0], zero[1], *args, w_hr=w_hr, reverse=reverse)
            finals = (h, c)
        else:
            y, h = F.gru(x, zero[0], *args, reverse=reverse)
            finals = (h,)
        outputs.append(y)
        for s, final in zip(state, finals):
            torch.testing.assert_close(final, s[direction])
    torch.testing.assert_close(torch.cat(outputs, dim=2), expected_y)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
def test_non_contiguous_inputs(cell, device):
    torch.manual_seed(5)
    case = make_case(cell, 4, 3, 5, 6, requires_grad=False, device=device)
    expected = case.run("reference")
    # Batch-major storage seen through a transpose, and weights stored transposed.
    case.x = case.x.transpose(0, 1).contiguous().transpose(0, 1)
    case.h0 = case.h0.t().contiguous().t()
    case.weights = {k: (v.t().contiguous().t() if v.dim() == 2 else v[::1])
                    for k, v in case.weights.items()}
    assert not case.x.is_contiguous() and not case.weights["w_hh"].is_contiguous()
    assert_all_close(case.run("fused"), expected, **TOL[torch.float64])


# ------------------------------------------------------------------------------------- bad input
def _lstm_args(T=4, B=2, I=3, H=5, dtype=torch.float32):
    return dict(x=torch.randn(T, B, I, dtype=dtype), h0=torch.zeros(B, H, dtype=dtype),
                c0=torch.zeros(B, H, dtype=dtype), w_ih=torch.randn(4 * H, I, dtype=dtype),
                w_hh=torch.randn(4 * H, H, dtype=dtype))


@pytest.mark.parametrize("change, error, words", [
    (dict(x=torch.randn(4, 3)), ValueError, "x must be 3-D"),
    (dict(x=torch.randn(4, 2, 7)), ValueError, "input size"),
    (dict(h0=torch.zeros(3, 5)), ValueError, "h0"),
    (dict(c0=torch.zeros(2, 4)), RuntimeError, "c0"),
    (dict(w_hh=torch.randn(20, 4)), RuntimeError, "w_hh"),
    (dict(x=torch.randn(4, 2, 3, dtype=torch.float64)), ValueError, "dtype"),
    (dict(h0=torch.zeros(2, 5, dtype=torch.float64)), RuntimeError, "h0"),
    (dict(lengths=torch.tensor([5, 1])), ValueError, "lengths"),
    (dict(lengths=torch.tensor([-1, 1])), ValueError, "lengths"),
    (dict(lengths=torch.tensor([1, 2, 3])), ValueError, "lengths"),
    (dict(lengths=torch.tensor([1.0, 2.0])), ValueError, "lengths"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_names_the_argument(change, error, words):
    args = _lstm_args()
    args.update(change)
    lengths = args.pop("lengths", None)
    with pytest.raises(error, match=words):
        F.lstm(args["x"], args["h0"], args["c0"], args["w_ih"], args["w_hh"], lengths=lengths)


def test_bad_input_at_the_op_level():
    """The C++ checks stand on their own (the ops are public through torch.ops)."""
    args = _lstm_args()
    x_proj = torch.randn(4, 2, 20)
    op = torch.ops.fused_rnn.lstm_forward
    with pytest.raises(RuntimeError, match=r"lengths must lie in \[0, T=4\], got values in \[1, 9\]"):
        op(x_proj, args["h0"], args["c0"], args["w_hh"], None, None, None, torch.tensor([9, 1]),
           None, False, False)
    with pytest.raises(RuntimeError, match="lengths must be int64"):
        op(x_proj, args["h0"], args["c0"], args["w_hh"], None, None, None,
           torch.tensor([1, 1], dtype=torch.int32), None, False, False)
    with pytest.raises(RuntimeError, match="w_ch"):
        op(x_proj, args["h0"], args["c0"], args["w_hh"], None, torch.zeros(7), None, None, None,
           False, False)
    with pytest.raises(RuntimeError, match="state_mask"):
        op(x_proj, args["h0"], args["c0"], args["w_hh"], None, None, None, None, torch.ones(2, 3),
           False, False)
    with pytest.raises(RuntimeError, match="x_proj's last dimension"):
        torch.ops.fused_rnn.gru_forward(torch.randn(4, 2, 7), args["h0"], args["w_hh"], None, None,
                                        None, False, True, False)


@pytest.mark.skipif(not CUDA, reason="no CUDA GPU")
def test_cpu_cuda_mix_is_an_error():
    args = _lstm_args()
    with pytest.raises((RuntimeError, ValueError), match="cuda|device"):
        F.lstm(args["x"].cuda(), args["h0"], args["c0"], args["w_ih"].cuda(), args["w_hh"].cuda())


# ----------------------------------------------------------------------------------- op registration
def _op_samples(device="cpu"):
    """(op, args) for every forward and backward op, with gradients required on the forwards."""
    torch.manual_seed(6)
    samples = []
    for cell in ["rnn_tanh", "peephole_lstm", "lstm_proj", "gru", "gru_reset_before"]:
        for lengths in [None, torch.tensor([3, 1], device=device)]:
            case = make_case(cell, 3, 2, 2, 3, device=device, lengths=lengths,
                             state_dropout=0.5 if lengths is None else 0.0)
            mask = case.state_mask
            w = case.weights
            x_proj = (case.x @ w["w_ih"].t() + w["b_ih"]).detach().requires_grad_()
            if cell.startswith("rnn"):
                fwd = (torch.ops.fused_rnn.elman_forward,
                       (x_proj, case.h0, w["w_hh"], w["b_hh"], lengths, mask, False, False))
                y, h = fwd[0](*fwd[1])
                bwd = (torch.ops.fused_rnn.elman_backward,
                       (torch.randn_like(y), torch.randn_like(h), y.detach(), case.h0.detach(),
                        w["w_hh"].detach(), lengths, mask, False, False))
            elif cell.startswith("gru"):
                reset_after = cell == "gru"
                fwd = (torch.ops.fused_rnn.gru_forward,
                       (x_proj, case.h0, w["w_hh"], w["b_hh"], lengths, mask, True, reset_after,
                        True))
                y, h, gates, hh_n = [t.detach() for t in fwd[0](*fwd[1])]
                bwd = (torch.ops.fused_rnn.gru_backward,
                       (torch.randn_like(y), torch.randn_like(h), y, gates, hh_n, case.h0.detach(),
                        w["w_hh"].detach(), lengths, mask, True, reset_after))
            else:
                w_ch, w_hr = w.get("w_ch"), w.get("w_hr")
                fwd = (torch.ops.fused_rnn.lstm_forward,
                       (x_proj, case.h0, case.c0, w["w_hh"], w["b_hh"], w_ch, w_hr, lengths, mask,
                        False, True))
                y, h, c, gates, c_all = [t.detach() for t in fwd[0](*fwd[1])]
                detach = lambda t: None if t is None else t.detach()  # noqa: E731
                bwd = (torch.ops.fused_rnn.lstm_backward,
                       (torch.randn_like(y), torch.randn_like(h), torch.randn_like(c), y, gates,
                        c_all, case.h0.detach(), case.c0.detach(), w["w_hh"].detach(),
                        detach(w_ch), detach(w_hr), lengths, mask, False))
            samples += [fwd, bwd]
    return samples


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args in _op_samples(device):
        torch.library.opcheck(op, args)


def test_build_info_reports_compiled_kernels():
    import fused_rnn
    info = fused_rnn.build_info()
    assert info["kernels_loaded"] and info["version"] == fused_rnn.__version__
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert info["compiler"]
    if info["cuda_compiled"]:
        assert info["cuda_version"] and info["cuda_archs"]


def test_autograd_is_cpp_and_records_nothing_without_gradients():
    """The ops' autograd is C++ (csrc/autograd.cpp): a graph's nodes are its Functions, with no
    Python in the call. A call that needs no gradient records no graph and gives the same values."""
    import fused_rnn
    torch.manual_seed(0)
    for cell, function in ((fused_rnn.LSTMCell(8, 16), "LstmFunction"),
                           (fused_rnn.GRUCell(8, 16), "GruFunction"),
                           (fused_rnn.RNNCell(8, 16), "ElmanFunction")):
        x = torch.randn(3, 8)
        with torch.no_grad():
            fast = cell(x)
        slow = cell(x)
        fast = fast if isinstance(fast, tuple) else (fast,)
        slow = slow if isinstance(slow, tuple) else (slow,)
        for a, b in zip(fast, slow):
            assert a.grad_fn is None and torch.equal(a, b)
        node = slow[0].grad_fn
        assert node.name().endswith(f"::{function}>"), node.name()
        projection = node.next_functions[0][0].next_functions[0][0]  # x_proj's view, then linear
        assert projection.name().endswith("::LinearFunction>"), projection.name()


def test_backward_of_a_forward_without_training_raises():
    """training=False saves no activations: differentiating such a call raises, naming why."""
    torch.manual_seed(0)
    x_proj = torch.randn(3, 2, 64, requires_grad=True)
    h0, c0, w_hh = torch.zeros(2, 16), torch.zeros(2, 16), torch.randn(64, 16)
    y, *_ = torch.ops.fused_rnn.lstm_forward(x_proj, h0, c0, w_hh, None, None, None, None, None,
                                             False, False)
    with pytest.raises(RuntimeError, match="training=False"):
        y.sum().backward()


def test_saved_activations_go_through_saved_tensor_hooks():
    """What the ops save for backward passes through autograd's saved-tensor hooks, which
    save_on_cpu (README: TF1's swap_memory) and checkpointing rely on; backward reads what the
    hooks give back."""
    import fused_rnn
    torch.manual_seed(0)
    lstm = fused_rnn.LSTM(8, 16)
    x = torch.randn(5, 3, 8, requires_grad=True)
    y, _ = lstm(x)
    expected = torch.autograd.grad(y.sum(), [x, *lstm.parameters()])
    packed = []

    def pack(t):
        packed.append(tuple(t.shape))
        return t.clone()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, _ = lstm(x)
    assert (5, 3, 64) in packed and (5, 3, 16) in packed  # the saved gates, c_all and y
    for got, want in zip(torch.autograd.grad(y.sum(), [x, *lstm.parameters()]), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_sequence_ops_match_projection_then_forward_op(device):
    """{elman,lstm,gru}_sequence = fused_rnn::linear over all T·B rows, then the forward op:
    the same values and gradients, and they pass opcheck (fake tensors, torch.compile)."""
    torch.manual_seed(0)
    T_, B_, I_, H_ = 4, 3, 5, 16
    ops = torch.ops.fused_rnn
    x = torch.randn(T_, B_, I_, device=device, requires_grad=True)
    h0 = torch.randn(B_, H_, device=device)
    for name, gates, extra in [("elman", 1, (False, True)), ("lstm", 4, (False,)),
                               ("gru", 3, (False, False))]:
        w_ih = torch.randn(gates * H_, I_, device=device, requires_grad=True)
        w_hh = torch.randn(gates * H_, H_, device=device, requires_grad=True)
        b_ih, b_hh = (torch.randn(gates * H_, device=device, requires_grad=True) for _ in range(2))
        x_proj = ops.linear(x.reshape(T_ * B_, I_), w_ih, b_ih).view(T_, B_, gates * H_)
        if name == "lstm":
            args = (x, h0, h0, w_ih, w_hh, b_ih, b_hh, None, None, None, None) + extra
            direct = ops.lstm_forward(x_proj, h0, h0, w_hh, b_hh, None, None, None, None, False,
                                      True)[:3]
        else:
            args = (x, h0, w_ih, w_hh, b_ih, b_hh, None, None) + extra
            forward = ops.elman_forward if name == "elman" else ops.gru_forward
            direct = forward(x_proj, h0, w_hh, b_hh, None, None, *extra,
                             *(() if name == "elman" else (True,)))[:2]
        fused = getattr(ops, f"{name}_sequence")(*args)
        inputs = [x, w_ih, w_hh, b_ih, b_hh]
        got = torch.autograd.grad(sum(t.sum() for t in fused), inputs)
        want = torch.autograd.grad(sum(t.sum() for t in direct), inputs)
        for a, b in zip(list(fused) + list(got), list(direct) + list(want)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.library.opcheck(getattr(ops, f"{name}_sequence"), args)
