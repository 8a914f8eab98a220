"""Loads the CMake-built operator library by path and checks it against fused_rnn/reference.py
(loaded as a file, so that fused_rnn's own extension does not register the ops a second time)."""
import importlib.util
import sys

import torch


def load_reference():
    spec = importlib.util.spec_from_file_location("reference", "fused_rnn/reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(library: str) -> None:
    torch.ops.load_library(library)
    reference = load_reference()
    torch.manual_seed(0)
    T, B, I, H = 5, 3, 4, 6
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0, c0 = torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 0])
    for gates in (4, 3):
        w_ih = torch.randn(gates * H, I, dtype=torch.float64)
        w_hh = torch.randn(gates * H, H, dtype=torch.float64)
        b_hh = torch.randn(gates * H, dtype=torch.float64)
        x_proj = x @ w_ih.t()
        if gates == 4:
            y, h, c, _, _ = torch.ops.fused_rnn.lstm_forward(x_proj, h0, c0, w_hh, b_hh, None, None,
                                                             lengths, None, True, False)
            expected = reference.lstm(x, h0, c0, w_ih, w_hh, None, b_hh, lengths=lengths, reverse=True)
            got = (y, h, c)
        else:
            y, h, _, _ = torch.ops.fused_rnn.gru_forward(x_proj, h0, w_hh, b_hh, lengths, None, False,
                                                         True, False)
            expected = reference.gru(x, h0, w_ih, w_hh, None, b_hh, lengths=lengths)
            got = (y, h)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b)
    print(f"CMake-built {library}: LSTM and GRU match the reference")


if __name__ == "__main__":
    main(sys.argv[1])
