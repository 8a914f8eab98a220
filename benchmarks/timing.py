"""Timers: first call, warm-up, then timed repetitions, and the peak memory of one call.

On CUDA each repetition is bracketed by CUDA events (GPU time of the call, launch gaps included,
which is what a user waits for) and synchronised before the next, so no call overlaps another.
On the CPU the ops are synchronous and time.perf_counter brackets the call.
"""
from __future__ import annotations

import signal
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional

import torch


@dataclass
class Budget:
    """How long to measure: ``repeats`` timed calls exactly when given, else as many as fit in
    ``seconds`` (at least ``min_repeats``, at most ``max_repeats``), after ``warmup`` calls."""
    warmup: int = 2
    repeats: Optional[int] = None
    seconds: float = 0.5
    min_repeats: int = 3
    max_repeats: int = 100


@dataclass
class Timing:
    first_call_ms: float  # the first call on this case and mode, lazy initialisation/compilation included
    times_ms: List[float]
    peak_memory_bytes: Optional[int]  # CUDA: max_memory_allocated above what was allocated before

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    def to_json(self) -> dict:
        return {
            "first_call_ms": self.first_call_ms,
            "median_ms": self.median_ms,
            "min_ms": min(self.times_ms),
            "mean_ms": statistics.fmean(self.times_ms),
            "stdev_ms": statistics.stdev(self.times_ms) if len(self.times_ms) > 1 else 0.0,
            "repeats": len(self.times_ms),
            "times_ms": self.times_ms,
            "peak_memory_bytes": self.peak_memory_bytes,
        }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def deadline(seconds: Optional[float]) -> Iterator[None]:
    """Raises TimeoutError in the block after ``seconds`` (SIGALRM, so main thread on POSIX only;
    elsewhere no limit). Used to abandon a torch.compile that takes too long."""
    usable = seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"first call (compilation) took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _peak_memory(fn: Callable[[], Any], device: torch.device) -> Optional[int]:
    if device.type != "cuda":
        return None  # no cheap, per-call peak on the CPU: ru_maxrss only ever grows
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    synchronize(device)
    del result
    return torch.cuda.max_memory_allocated(device) - before


def _time_once(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    synchronize(device)
    begin = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - begin) * 1e3


def measure(fn: Callable[[], Any], device: torch.device, budget: Budget,
            first_call_timeout: Optional[float] = None) -> Timing:
    synchronize(device)
    begin = time.perf_counter()
    with deadline(first_call_timeout):
        fn()
        synchronize(device)
    first_call_ms = (time.perf_counter() - begin) * 1e3

    for _ in range(budget.warmup):
        fn()
    synchronize(device)
    peak = _peak_memory(fn, device)

    times: List[float] = []
    spent = 0.0
    while True:
        if budget.repeats is not None:
            if len(times) >= budget.repeats:
                break
        elif len(times) >= budget.max_repeats or (len(times) >= budget.min_repeats and spent >= budget.seconds):
            break
        times.append(_time_once(fn, device))
        spent += times[-1] / 1e3
    return Timing(first_call_ms, times, peak)
