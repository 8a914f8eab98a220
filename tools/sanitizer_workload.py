"""A small CUDA workload touching every fused kernel (forward, backward, lengths, reverse,
projection, peepholes, both GRUs, float32 and bfloat16, the stepwise and the persistent
algorithm), for compute-sanitizer to check. Exits non-zero if any result differs from the
reference oracle."""
import dataclasses
import os
import sys

import torch

sys.path.insert(0, "tests")
from cases import CELLS, make_case, outputs_and_grads  # noqa: E402

# The cells the persistent kernels run (not the projection).
PERSISTENT_CELLS = {"rnn_tanh", "rnn_relu", "lstm", "peephole_lstm", "gru", "gru_reset_before"}


def main(argv) -> int:
    # --stepwise-only: gpu_check passes it when the persistent smoke test failed or hung.
    stepwise_only = "--stepwise-only" in argv
    # --cluster: the persistent forward runs as one thread-block cluster (experimental); with
    # "require" a shape the cluster plan declines raises instead of running the grid kernel.
    if "--cluster" in argv:
        os.environ["FUSED_RNN_PERSISTENT_CLUSTER"] = "require"
    # --mma: the persistent kernels multiply bfloat16 on tensor cores (the default), =require.
    if "--mma" in argv:
        os.environ["FUSED_RNN_PERSISTENT_MMA"] = "require"
    # --graphs: each stepwise case three times (eager, capture, replay: the loops replayed from
    # the graphs the ops capture, csrc/sequence/graphed_loop.h), every result checked; float32's
    # too (FUSED_RNN_STEPWISE_GRAPHS=all).
    stepwise_calls = 3 if "--graphs" in argv else 1
    if "--graphs" in argv:
        os.environ["FUSED_RNN_STEPWISE_GRAPHS"] = "all"
    torch.manual_seed(0)
    failures = 0
    for cell in CELLS:
        for dtype in (torch.float32, torch.bfloat16):
            for reverse in (False, True):
                case = make_case(cell, 5, 3, 4, 33, device="cuda", dtype=dtype, reverse=reverse,
                                 lengths=torch.tensor([5, 0, 3]),
                                 state_dropout=0.3 if reverse else 0.0)
                # The oracle runs on the CPU: only fused_rnn's kernels need the sanitizer's time.
                ref = outputs_and_grads(case.converted(torch.float64, "cpu"), "reference")
                algos = ["stepwise"] + (["persistent"] if cell in PERSISTENT_CELLS and not stepwise_only else [])
                for algo in algos:
                    if algo == "persistent":  # it refuses state dropout
                        case = dataclasses.replace(case, state_mask=None)
                        ref = outputs_and_grads(case.converted(torch.float64, "cpu"), "reference")
                    for call in range(stepwise_calls if algo == "stepwise" else 1):
                        fused = outputs_and_grads(dataclasses.replace(case, algo=algo), "fused")
                        for a, b in zip(fused[0] + fused[1], ref[0] + ref[1]):
                            err = ((a.double().cpu() - b).norm() / b.norm().clamp_min(1e-12)).item()
                            if not err < (5e-2 if dtype == torch.bfloat16 else 1e-4):
                                failures += 1
                                print(f"MISMATCH {cell} {dtype} reverse={reverse} {algo} call {call}: "
                                      f"rel err {err:.2e}")
    torch.cuda.synchronize()
    print("sanitizer workload done, mismatches:", failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
