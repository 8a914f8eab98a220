"""The workload table: the shapes of ../shared/BENCHMARKS.md plus the extras the issue asks for.

x is (T, B, I) and the hidden size is H. ``loop_friendly`` marks the workloads on which the slow
contenders (the pure-PyTorch reference loop and the compiled step loop) are timed by default:
they take a Python trip per step, so on the big shapes they only spend minutes saying "slow".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List


@dataclass(frozen=True)
class Workload:
    name: str
    T: int  # sequence length
    B: int  # batch size
    I: int  # input size
    H: int  # hidden size
    layers: int = 1
    bidirectional: bool = False
    variable_lengths: bool = False  # lengths uniform in [T/2, T], one per sequence
    loop_friendly: bool = False

    def describe(self) -> str:
        extras = []
        if self.layers > 1:
            extras.append(f"{self.layers} layers")
        if self.bidirectional:
            extras.append("bidirectional")
        if self.variable_lengths:
            extras.append("lengths in [T/2, T]")
        shape = f"T={self.T} B={self.B} I={self.I} H={self.H}"
        return shape + (f" ({', '.join(extras)})" if extras else "")

    def to_json(self) -> dict:
        return asdict(self)


_MID = dict(T=100, B=64, I=512, H=512)

# Order matters: it is the order of the table and of the plot.
WORKLOADS: Dict[str, Workload] = {w.name: w for w in [
    Workload("small_batch", T=256, B=16, I=256, H=256, loop_friendly=True),
    Workload("mid", **_MID, loop_friendly=True),
    Workload("deepbench_1024", T=100, B=64, I=1024, H=1024),
    Workload("big_h", T=50, B=32, I=2048, H=2048),
    Workload("long_tiny", T=1000, B=8, I=128, H=128, loop_friendly=True),
    Workload("large_batch", T=50, B=256, I=1024, H=1024),
    # Extras of BENCHMARKS.md: mid stacked, mid bidirectional, mid with variable lengths.
    Workload("mid_4layers", **_MID, layers=4),
    Workload("mid_2layers_bidir", **_MID, layers=2, bidirectional=True),
    Workload("mid_varlen", **_MID, variable_lengths=True, loop_friendly=True),
    # One token: a decoder (generation, seq2seq) calls the network once per token, so the cost
    # of a call (argument checks, dispatch, packing weights) is all there is.
    Workload("one_token", T=1, B=1, I=512, H=512, loop_friendly=True),
    # The CPU reference shape of BENCHMARKS.md ("T=100,B=16,I=H=128"): small enough for a quick CPU run.
    Workload("cpu_small", T=100, B=16, I=128, H=128, loop_friendly=True),
]}

STANDARD = ["small_batch", "mid", "deepbench_1024", "big_h", "long_tiny", "large_batch"]
EXTRAS = ["mid_4layers", "mid_2layers_bidir", "mid_varlen", "one_token"]


def custom_workload(spec: str) -> Workload:
    """Parses ``"T,B,I,H"`` into a workload named ``custom``; custom shapes count as loop friendly
    because whoever typed one asked for that shape on purpose."""
    try:
        T, B, I, H = (int(part) for part in spec.split(","))
    except ValueError:
        raise ValueError(f"--shape wants four integers T,B,I,H, got {spec!r}") from None
    if min(T, B, I, H) < 1:
        raise ValueError(f"--shape values must be positive, got {spec!r}")
    return Workload("custom", T=T, B=B, I=I, H=H, loop_friendly=True)


def select(names: List[str]) -> List[Workload]:
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; known: {list(WORKLOADS)}")
    return [WORKLOADS[n] for n in names]
