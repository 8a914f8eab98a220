"""Two long_tiny LSTM forwards (T=1000, B=8, H=128, float32) with the persistent CUDA kernel, for
Nsight Compute to profile the second (tools/gpu_check.sh, stage profile_persistent): where a
step's ~7.7 µs go (H200, docs/persistent.md) against the ~1 µs grid barrier."""
import torch

import fused_rnn


def main() -> None:
    torch.manual_seed(0)
    lstm = fused_rnn.LSTM(128, 128, algo="persistent").cuda()
    x = torch.randn(1000, 8, 128, device="cuda")
    with torch.no_grad():
        for _ in range(2):  # the first is the warm-up that ncu's --launch-skip passes over
            lstm(x)
            torch.cuda.synchronize()
    print("profile_persistent: done")


if __name__ == "__main__":
    main()
