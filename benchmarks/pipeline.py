"""Layer placement and time-chunk pipelining: a 4-layer LSTM on the ``mid`` shape
(T=100, B=64, I=H=512) unplaced, placed on one device, and pipelined over k chunks; with two or
more GPUs also spread over the GPUs (layers split evenly), where pipelining lets layers overlap.

Standalone (the suite in run.py does not call it): ``python -m benchmarks.pipeline --help``, or
``run_pipeline_benchmark(device, repeats)`` which returns a dict. On one device there is nothing to
overlap and the module runs unchunked whatever ``pipeline_chunks`` says (fused_rnn/placement.py),
so there the pipelined variants measure what asking for chunks costs a one-device user;
``overhead_pct`` says how much, relative to the unplaced module. Times are wall-clock medians of
``repeats`` calls after ``warmup`` calls, every device synchronised around each call; the variants
are timed round-robin (one call of each per round) so that other load on the machine skews them
alike.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .workloads import WORKLOADS

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16}


def _synchronize(devices: Sequence[torch.device]) -> None:
    for device in dict.fromkeys(devices):
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def _time_ms(fn: Callable[[], object], devices: Sequence[torch.device]) -> float:
    _synchronize(devices)
    begin = time.perf_counter()
    fn()
    _synchronize(devices)
    return (time.perf_counter() - begin) * 1e3


def _spread(device: torch.device, layers: int) -> Optional[List[torch.device]]:
    """Layers split evenly over every visible GPU (None with fewer than two)."""
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        return None
    gpus = min(torch.cuda.device_count(), layers)
    return [torch.device("cuda", layer * gpus // layers) for layer in range(layers)]


def run_pipeline_benchmark(device="cuda" if torch.cuda.is_available() else "cpu", repeats: int = 20, *,
                           warmup: int = 2, shape: Optional[Tuple[int, int, int, int]] = None,
                           layers: int = 4, chunks: Sequence[int] = (2, 4), dtype: str = "float32",
                           seed: int = 0) -> dict:
    """Times forward (no_grad) and forward + backward of a ``layers``-layer fused_rnn.LSTM.

    shape: (T, B, I, H), default the ``mid`` workload. Returns a dict with the settings and
    ``variants``: name -> {layer_devices, pipeline_chunks, forward_ms, forward_backward_ms,
    forward_overhead_pct, forward_backward_overhead_pct (vs "unplaced"), times}.
    """
    import fused_rnn

    device = torch.device(device)
    if shape is None:
        mid = WORKLOADS["mid"]
        shape = (mid.T, mid.B, mid.I, mid.H)
    steps, batch, inputs, hidden = shape
    torch.manual_seed(seed)
    base = fused_rnn.LSTM(inputs, hidden, num_layers=layers, device=device, dtype=_DTYPES[dtype])
    x = torch.randn(steps, batch, inputs, device=device, dtype=_DTYPES[dtype])
    grad_out = torch.randn(steps, batch, hidden, device=device, dtype=_DTYPES[dtype])

    plans: Dict[str, Tuple[Optional[List[torch.device]], int]] = {"unplaced": (None, 1),
                                                                  "placed": ([device] * layers, 1)}
    for k in chunks:
        plans[f"pipelined_{k}"] = ([device] * layers, k)
    spread = _spread(device, layers)
    if spread is not None:
        plans["multi_gpu"] = (spread, 1)
        for k in chunks:
            plans[f"multi_gpu_pipelined_{k}"] = (spread, k)

    # Every variant is built and warmed up first, then timed round-robin (one call of each per
    # round), so that load from other processes skews all variants alike.
    runs = {}
    for name, (devices, k) in plans.items():
        module = copy.deepcopy(base)
        if devices is not None:
            module.place_layers(devices, pipeline_chunks=k)
        runs[name] = (module, list(devices or [device]), devices, k)

    def forward(module):
        with torch.no_grad():
            return module(x)

    def forward_backward(module):
        out, _ = module(x)
        out.backward(grad_out.to(out.device))

    times: Dict[str, Dict[str, List[float]]] = {name: {"forward_ms": [], "forward_backward_ms": []}
                                                for name in runs}
    for module, involved, _, _ in runs.values():
        for _ in range(warmup):
            _time_ms(lambda: forward(module), involved)
            _time_ms(lambda: forward_backward(module), involved)
    for _ in range(repeats):
        for name, (module, involved, _, _) in runs.items():
            times[name]["forward_ms"].append(_time_ms(lambda: forward(module), involved))
            times[name]["forward_backward_ms"].append(_time_ms(lambda: forward_backward(module), involved))

    variants: Dict[str, dict] = {}
    for name, (_, _, devices, k) in runs.items():
        variants[name] = {
            "layer_devices": [str(d) for d in devices] if devices is not None else None,
            "pipeline_chunks": k,
            "forward_ms": statistics.median(times[name]["forward_ms"]),
            "forward_backward_ms": statistics.median(times[name]["forward_backward_ms"]),
            "times": times[name],
        }
    for record in variants.values():
        for key in ("forward", "forward_backward"):
            baseline = variants["unplaced"][f"{key}_ms"]
            record[f"{key}_overhead_pct"] = 100.0 * (record[f"{key}_ms"] / baseline - 1.0)
    return {
        "benchmark": "pipeline",
        "cell": "lstm",
        "workload": "mid" if shape == (WORKLOADS["mid"].T, WORKLOADS["mid"].B, WORKLOADS["mid"].I,
                                       WORKLOADS["mid"].H) else "custom",
        "shape": {"T": steps, "B": batch, "I": inputs, "H": hidden},
        "layers": layers,
        "dtype": dtype,
        "device": str(device),
        "repeats": repeats,
        "warmup": warmup,
        "variants": variants,
    }


def format_table(result: dict) -> str:
    lines = [f"{result['layers']}-layer LSTM {result['workload']} {result['shape']} {result['dtype']} "
             f"on {result['device']} (median of {result['repeats']})",
             f"{'variant':<26}{'forward ms':>12}{'vs unplaced':>13}{'fwd+bwd ms':>12}{'vs unplaced':>13}"]
    for name, v in result["variants"].items():
        lines.append(f"{name:<26}{v['forward_ms']:>12.3f}{v['forward_overhead_pct']:>+12.1f}%"
                     f"{v['forward_backward_ms']:>12.3f}{v['forward_backward_overhead_pct']:>+12.1f}%")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--chunks", default="2,4", help="comma-separated pipeline_chunks values")
    parser.add_argument("--shape", help="T,B,I,H instead of mid (100,64,512,512)")
    parser.add_argument("--dtype", default="float32", choices=sorted(_DTYPES))
    parser.add_argument("--json", help="also write the result (with the environment) here")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else None
    if shape is not None and len(shape) != 4:
        parser.error("--shape wants four integers T,B,I,H")
    result = run_pipeline_benchmark(args.device, args.repeats, warmup=args.warmup, shape=shape,
                                    layers=args.layers, dtype=args.dtype,
                                    chunks=[int(k) for k in args.chunks.split(",") if k])
    print(format_table(result))
    if args.json:
        from .environment import collect
        result["environment"] = collect(torch.device(args.device))
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
