"""First contact with the persistent CUDA kernels (csrc/cuda/persistent.cuh): each cell they run,
forward and backward in float32 (mma: bfloat16), one block and many blocks, against
algo='stepwise'. It names each case before running it, so that when a kernel hangs (a barrier
some block never reaches) and tools/gpu_check.sh's timeout kills the process, the log says which
one. Exits non-zero on any mismatch; gpu_check then leaves that kernel out of its later stages.
    python tools/persistent_smoke.py [grid|cluster|mma]
`cluster` runs the experimental one-cluster forward on shapes it fits (H up to a few hundred), with
FUSED_RNN_PERSISTENT_CLUSTER=require: where the cluster plan declines, the call raises instead of
quietly running the grid kernel. `mma` runs the grid kernels with their products on tensor cores
(FUSED_RNN_PERSISTENT_MMA=require) in bfloat16, against the stepwise loop in bfloat16."""
import os
import sys

import torch

sys.path.insert(0, "tests")
from cases import make_case, outputs_and_grads  # noqa: E402

CELLS = ["rnn_tanh", "lstm", "peephole_lstm", "gru", "gru_reset_before"]
# (T, B, I, H): one block of 1 unit, several blocks with a partial last one, batch chunks.
# Cluster: 16 blocks of 1 unit, 16 of 8, 16 with a partial last one (10 of 16 units) and a batch
# that is not a multiple of the tile; LSTM at (17, 301) would not fit in shared memory.
SHAPES = {"grid": [(4, 3, 5, 16), (6, 40, 8, 301), (3, 200, 16, 1024)],
          "cluster": [(4, 3, 5, 16), (6, 8, 8, 128), (5, 9, 8, 250)],
          "mma": [(4, 3, 5, 16), (6, 40, 8, 301), (3, 200, 16, 1024)]}
# Largest relative difference from the stepwise loop that passes: float32 differs in the last
# bits; bfloat16 (8 bits of mantissa) by its rounding of hh and of every state.
TOLERANCE = {"grid": 1e-4, "cluster": 1e-4, "mma": 5e-2}


def relative_error(a, b):
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm().clamp_min(1e-30)).item()


def main(kernel: str) -> int:
    if kernel == "cluster":
        if torch.cuda.get_device_capability(0)[0] < 9:
            print("persistent smoke: thread-block clusters need sm_90; nothing to run")
            return 0
        os.environ["FUSED_RNN_PERSISTENT_CLUSTER"] = "require"
    if kernel == "mma":
        if torch.cuda.get_device_capability(0)[0] < 8:
            print("persistent smoke: tensor-core mma needs sm_80; nothing to run")
            return 0
        os.environ["FUSED_RNN_PERSISTENT_MMA"] = "require"
    dtype = torch.bfloat16 if kernel == "mma" else torch.float32
    torch.manual_seed(0)
    failures = 0
    for shape in SHAPES[kernel]:
        # The reset_before GRU has no cluster kernel: it would run the grid kernel there.
        for cell in [c for c in CELLS if not (kernel == "cluster" and c == "gru_reset_before")]:
            print(f"running {kernel} {cell} T,B,I,H={shape} ...", end=" ", flush=True)
            case = make_case(cell, *shape, dtype=dtype, device="cuda",
                             lengths=torch.randint(0, shape[0] + 1, (shape[1],)))
            results = {}
            for algo in ("stepwise", "persistent"):
                case.algo = algo
                results[algo] = outputs_and_grads(case, "fused")
            torch.cuda.synchronize()
            worst = max(relative_error(a, b) for a, b in zip(results["persistent"][0] + results["persistent"][1],
                                                              results["stepwise"][0] + results["stepwise"][1]))
            ok = worst < TOLERANCE[kernel]
            failures += not ok
            print(f"max rel err vs stepwise {worst:.2e} {'ok' if ok else 'MISMATCH'}", flush=True)
    print(f"persistent smoke ({kernel}) done, mismatches:", failures)
    # At e2603bb and c3d4ece the cluster run's process aborted after this point ("terminate
    # called without an active exception", no Python frame): these name the last step reached.
    print("synchronizing", flush=True)
    torch.cuda.synchronize()
    print("emptying the CUDA cache", flush=True)
    torch.cuda.empty_cache()
    print("leaving main", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "grid"))
