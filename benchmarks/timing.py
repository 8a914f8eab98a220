"""Timers: first call, warm-up, then timed repetitions, and the peak memory of one call.

On CUDA each repetition is bracketed by CUDA events (GPU time of the call, launch gaps included,
which is what a user waits for) and synchronised before the next, so no call overlaps another.
On the CPU the ops are synchronous and time.perf_counter brackets the call.

The phases are small functions (``first_call``, ``warm_up``, ``peak_memory``, ``time_once``, and
``prepare`` for the first three) so that one function (``measure``) or several side by side
(``time_in_rounds``, the suite's way) are timed by the same code. Several functions are timed
interleaved: round after round, each function still short of its repetitions is called once, the
first of the round rotating. A shared machine's speed drifts over seconds (other tenants, clock
and thermal changes); timed one after the other, contenders would meet different machines and
their ratio would move by 10-20% between runs, while interleaved every contender sees the same
drift. ``Budget.enough`` decides, for each function on its own, when it has its repetitions.
Interleaved, a timed call would follow another contender's call, with the caches full of the
other's data; a short one gets an untimed call of its own first (``Budget.rewarm_below_ms``).
"""
from __future__ import annotations

import signal
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator, List, Mapping, Optional, Sequence, TypeVar

import torch

Key = TypeVar("Key", bound=Hashable)


@dataclass
class Budget:
    """How long to measure: ``repeats`` timed calls exactly when given, else as many as fit in
    ``seconds`` (at least ``min_repeats``, at most ``max_repeats``), after ``warmup`` calls."""
    warmup: int = 2
    repeats: Optional[int] = None
    seconds: float = 0.5
    min_repeats: int = 3
    max_repeats: int = 100
    # Interleaved (time_in_rounds), a call meets caches full of the previous contender's data. A
    # call shorter than this gets an untimed call of its own first in every round, so it is timed
    # warm, as back-to-back calls of one model are: on the 2-core CPU a one-token LSTM call took
    # 0.16 ms warm and 0.72 ms right after torch.nn's (which evicts its weights). Longer calls
    # stream more than the caches hold anyway. 0 turns it off.
    rewarm_below_ms: float = 10.0

    def enough(self, times_ms: Sequence[float]) -> bool:
        """Whether a function timed ``times_ms`` so far has all its repetitions; ``seconds`` counts
        the function's own timed calls, not the wall time of the rounds they are interleaved in."""
        if self.repeats is not None:
            return len(times_ms) >= self.repeats
        spent = sum(times_ms) / 1e3
        return len(times_ms) >= self.max_repeats or (len(times_ms) >= self.min_repeats and spent >= self.seconds)


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


def first_call(fn: Callable[[], Any], device: torch.device, timeout: Optional[float] = None) -> float:
    """The first call in ms (lazy initialisation, compilation), abandoned after ``timeout`` s."""
    synchronize(device)
    begin = time.perf_counter()
    with deadline(timeout):
        fn()
        synchronize(device)
    return (time.perf_counter() - begin) * 1e3


def warm_up(fn: Callable[[], Any], device: torch.device, calls: int) -> None:
    for _ in range(calls):
        fn()
    synchronize(device)


def peak_memory(fn: Callable[[], Any], device: torch.device) -> Optional[int]:
    """What one call allocates at its peak above what was allocated before (CUDA only)."""
    if device.type != "cuda":
        return None  # no cheap, per-call peak on the CPU: ru_maxrss only ever grows
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    synchronize(device)
    del result
    return torch.cuda.max_memory_allocated(device) - before


def time_once(fn: Callable[[], Any], device: torch.device) -> float:
    """One timed call in ms."""
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


def prepare(fn: Callable[[], Any], device: torch.device, budget: Budget,
            first_call_timeout: Optional[float] = None) -> Timing:
    """First call, warm-up and peak memory: a Timing with no timed repetitions yet."""
    first_call_ms = first_call(fn, device, first_call_timeout)
    warm_up(fn, device, budget.warmup)
    return Timing(first_call_ms, [], peak_memory(fn, device))


def time_in_rounds(fns: Mapping[Key, Callable[[], Any]], timings: Mapping[Key, Timing],
                   device: torch.device, budget: Budget,
                   failed: Optional[Callable[[Key, Exception], None]] = None) -> None:
    """Appends timed repetitions to ``timings`` (each from ``prepare``), interleaved: each round
    calls every function that is still short of its repetitions (``budget.enough``) once, in the
    order of ``fns`` rotated by one more place every round, so none always goes first. One that is
    done sits out the later rounds while the others go on. A short call (``rewarm_below_ms``) that
    would follow another function's call is preceded by an untimed call of its own.

    A call that raises drops its function from the rounds: ``failed(key, error)`` is told, from
    within the ``except`` block (so ``traceback.format_exc()`` works there), and the others go on.
    Without ``failed`` the error propagates."""
    live = list(fns)
    rounds = 0
    # The function called last: with several, the last warm-up call may have been another's.
    previous = next(iter(fns)) if len(fns) == 1 else None
    while True:
        waiting = [key for key in live if not budget.enough(timings[key].times_ms)]
        if not waiting:
            return
        shift = rounds % len(waiting)
        rounds += 1
        for key in waiting[shift:] + waiting[:shift]:
            times = timings[key].times_ms
            latest_ms = times[-1] if times else timings[key].first_call_ms
            try:
                if previous != key and latest_ms < budget.rewarm_below_ms:
                    fns[key]()
                previous = key
                times.append(time_once(fns[key], device))
            except Exception as error:
                if failed is None:
                    raise
                live.remove(key)
                failed(key, error)


def measure(fn: Callable[[], Any], device: torch.device, budget: Budget,
            first_call_timeout: Optional[float] = None) -> Timing:
    """One function on its own: first call, warm-up, peak memory, then its timed repetitions."""
    timing = prepare(fn, device, budget, first_call_timeout)
    time_in_rounds({0: fn}, {0: timing}, device, budget)
    return timing
