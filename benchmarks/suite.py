"""Runs a plan: every (workload, cell, dtype) case, every mode, every contender, in one process.

One case at a time: build its shared inputs, build each contender from them (optionally check
that they agree), then time the contenders in each mode. Whatever a contender raises (out of
memory, unsupported dtype, not implemented yet) becomes an error entry and the run goes on.

The contenders of a (case, mode) are timed interleaved: each in turn gets its first call (under
its ``first_call_timeout``), its warm-up calls and its peak-memory call; then the timed calls run
in rounds, each round calling every contender still short of its repetitions once, the first of
the round rotating (timing.time_in_rounds). The speed of a shared machine drifts over seconds, so
contenders timed one after the other would each meet a different machine and their ratios would
swing by 10-20% between runs; interleaved, the drift falls on all of them alike. A contender that
raises is recorded at once (n/a or error) and left out of the later rounds; the others go on.
"""
from __future__ import annotations

import gc
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import Tensor

from . import correctness
from .cells import Cell
from .contenders import Built, Contender, Skip
from .inputs import Case, make_case
from .report import ResultLog
from .timing import Budget, Timing, deadline, prepare, time_in_rounds
from .workloads import Workload

MODES = ("inference", "training")


@dataclass
class Plan:
    device: torch.device
    workloads: List[Workload]
    cells: List[Cell]
    dtypes: List[str]
    modes: List[str]
    contenders: List[Contender]
    budget: Budget
    loops_everywhere: bool = False  # time the slow loop contenders on every workload
    check: bool = False
    seed: int = 0

    @property
    def size(self) -> int:
        return len(self.workloads) * len(self.cells) * len(self.dtypes) * len(self.modes) * len(self.contenders)


def _call(built: Built, x: Tensor, mode: str) -> Callable[[], Any]:
    """One timed call. Inference: forward under no_grad. Training: forward, loss = output.sum(),
    and the gradients of x and of every parameter (autograd.grad: nothing accumulates between
    calls, so every call does the same work)."""
    if mode == "inference":
        def infer():
            with torch.no_grad(), built.environment_set():
                return built.forward(x)
        return infer

    leaf = x.detach().requires_grad_(True)
    inputs = [leaf, *built.parameters]

    def train():
        with built.environment_set():
            return torch.autograd.grad(built.forward(leaf).sum(), inputs, allow_unused=True)
    return train


def _error_text(error: BaseException) -> str:
    # One line: torch's messages run over several, with advice on verbose logging (the traceback
    # is kept separately in the JSON).
    lines = [line.strip() for line in f"{type(error).__name__}: {error}".splitlines()]
    return " ".join(line for line in lines if line and not line.startswith("Set TORCHDYNAMO_VERBOSE"))


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Runner:
    def __init__(self, plan: Plan, log: ResultLog, progress: Callable[[str], None]):
        self.plan, self.log, self.progress = plan, log, progress
        self.done = 0

    def run(self) -> None:
        for workload in self.plan.workloads:
            for cell in self.plan.cells:
                for dtype in self.plan.dtypes:
                    self._run_case(workload, cell, dtype)

    def _record(self, base: Dict[str, Any], contender: Contender, mode: str, status: str,
                impl: Optional[str] = None, **fields: Any) -> None:
        record = dict(base, mode=mode, contender=contender.name, status=status, impl=impl, **fields)
        self.log.add_result(record)
        self.done += 1
        if status == "ok":
            outcome = f"{fields['median_ms']:.3f} ms (first call {fields['first_call_ms']:.1f} ms)"
        else:
            outcome = f"{status}: {(fields.get('error') or fields.get('reason') or '')[:120]}"
        self.progress(f"[{self.done}/{self.plan.size}] {'/'.join(base.values())}/{mode} {contender.name}: {outcome}")

    def _run_case(self, workload: Workload, cell: Cell, dtype: str) -> None:
        base = {"workload": workload.name, "cell": cell.name, "dtype": dtype}
        plan = self.plan
        try:
            case = make_case(workload, cell, dtype, plan.device, plan.seed)
        except Exception as error:  # e.g. out of memory for the inputs themselves
            for contender in plan.contenders:
                for mode in plan.modes:
                    self._record(base, contender, mode, "error", error=f"inputs: {_error_text(error)}")
            _release(plan.device)
            return

        if plan.check:
            self._check(case, base)

        built: Dict[str, Built] = {}
        for contender in plan.contenders:
            try:
                built[contender.name] = self._build(contender, case)
            except Skip as skip:
                for mode in plan.modes:
                    self._record(base, contender, mode, skip.status, reason=str(skip))
            except Exception as error:
                for mode in plan.modes:
                    self._record(base, contender, mode, "error", error=f"build: {_error_text(error)}",
                                 traceback=traceback.format_exc(limit=8))

        for mode in plan.modes:
            self._time_mode(base, case, mode, built)
        del built, case
        _release(plan.device)

    def _time_mode(self, base: Dict[str, str], case: Case, mode: str, built: Dict[str, Built]) -> None:
        """Times every built contender in one mode, interleaved (see the module's docstring)."""
        plan = self.plan
        by_name = {c.name: c for c in plan.contenders}
        calls: Dict[str, Callable[[], Any]] = {}
        timings: Dict[str, Timing] = {}
        failed: List[str] = []

        def fail(name: str, error: Exception) -> None:  # called within the except block
            failed.append(name)
            self._record_failure(base, by_name[name], mode, built[name], error)

        # First call, warm-up and peak memory: one contender after the other.
        for name, contender_built in built.items():
            try:
                contender_built.set_training(mode == "training")
                call = _call(contender_built, case.x, mode)
                timings[name] = prepare(call, plan.device, plan.budget, by_name[name].first_call_timeout)
                calls[name] = call
            except Exception as error:
                fail(name, error)
        # The timed calls, in rounds over the contenders still live.
        time_in_rounds(calls, timings, plan.device, plan.budget, fail)
        for name in calls:
            if name not in failed:
                self._record(base, by_name[name], mode, "ok", built[name].impl, **timings[name].to_json())

    def _record_failure(self, base: Dict[str, str], contender: Contender, mode: str, built: Built,
                        error: Exception) -> None:
        """A call of ``contender`` raised ``error``: n/a or an error with its traceback (so it is
        called within the except block)."""
        contender.failed(error)
        reason = contender.not_applicable(error)
        if reason is not None:
            self._record(base, contender, mode, "n/a", built.impl, reason=reason)
        else:
            self._record(base, contender, mode, "error", built.impl,
                         error=_error_text(error), traceback=traceback.format_exc(limit=8))
        _release(self.plan.device)

    def _build(self, contender: Contender, case: Case) -> Built:
        if contender.slow and not (case.workload.loop_friendly or self.plan.loops_everywhere):
            raise Skip("skipped", "a Python loop over time, slow on this workload "
                                  "(--loops-everywhere times it anyway)")
        return contender.build(case)

    def _check(self, case: Case, base: Dict[str, str]) -> None:
        # Contenders of its own, so the timed ones still meet their first call (lazy
        # initialisation, compilation) in the timing. What does not build is left to the timing
        # pass to report.
        built: Dict[str, Built] = {}
        for contender in self.plan.contenders:
            try:
                built[contender.name] = self._build(contender, case)
            except Exception:
                continue
        baseline_name = next((n for n in ("torch.nn", "reference") if n in built), None)
        if baseline_name is None:
            return
        try:
            expected = correctness.outputs(built[baseline_name], case.x)
        except Exception as error:
            self.log.add_check(dict(base, contender=baseline_name, baseline=baseline_name, ok=False,
                                    error=f"baseline raised: {_error_text(error)}"))
            return
        by_name = {c.name: c for c in self.plan.contenders}
        for name, candidate in built.items():
            if name == baseline_name:
                continue
            try:
                with deadline(by_name[name].first_call_timeout):
                    result = correctness.outputs(candidate, case.x)
                verdict = correctness.compare(result, expected, case.dtype_name)
            except Exception as error:
                by_name[name].failed(error)
                verdict = {"ok": False, "error": _error_text(error)}
            self.log.add_check(dict(base, contender=name, baseline=baseline_name, **verdict))
            if not verdict["ok"]:
                self.progress(f"check FAILED {'/'.join(base.values())} {name} vs {baseline_name}: {verdict}")
        del built, expected
        _release(case.device)


def run(plan: Plan, log: ResultLog, progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> None:
    Runner(plan, log, progress).run()
