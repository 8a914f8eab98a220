"""Command line: how much faster is fused_rnn than torch.nn (cuDNN) and a PyTorch loop, here?

    python -m benchmarks                     # = --quick: a one-minute look
    python -m benchmarks --full              # every cell, workload (extras too), dtype and mode
    python -m benchmarks --cells lstm,gru --workloads mid,big_h --dtypes bf16 --modes training
    python -m benchmarks --shape 200,32,256,256 --device cpu --repeats 5 --check
    python -m benchmarks --compile           # add the torch.compile'd step loop

Prints a table, writes JSON (+ PNG of speedups when matplotlib is there) to benchmarks/results/
as <device>_<UTC time>.json, or to --out DIR.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import signal
import sys
from pathlib import Path
from typing import Dict, List, Optional

if __package__ in (None, ""):  # run as a script, `python benchmarks/run.py`: import as the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch

from . import cells, contenders, environment, report, suite, workloads
from .inputs import DTYPES
from .timing import Budget

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# What --quick and --full pick when the options below do not say. Quick stays under a minute:
# on CUDA every cell on `mid` in fp32 and bf16; on the CPU the small CPU reference shape.
# On CUDA no call is re-warmed between contenders (Budget.rewarm_below_ms): the interference
# it counters was measured on the CPU (per-core caches, thread pools), and re-warming nearly
# every GPU call (they take milliseconds) would double the GPU check's benchmark time.
PRESETS: Dict[str, Dict[str, Dict[str, object]]] = {
    "quick": {
        "cuda": dict(workloads=["mid"], dtypes=["fp32", "bf16"],
                     budget=Budget(warmup=2, seconds=0.2, rewarm_below_ms=0)),
        "cpu": dict(workloads=["cpu_small"], dtypes=["fp32"], budget=Budget(warmup=1, seconds=0.2)),
    },
    "full": {
        # GPU calls take milliseconds: 0.3 s is tens to hundreds of repetitions, and keeps the
        # ~800 measurements of a full GPU run within minutes.
        "cuda": dict(workloads=workloads.STANDARD + workloads.EXTRAS, dtypes=["fp32", "bf16", "fp16"],
                     budget=Budget(warmup=3, seconds=0.3, min_repeats=5, rewarm_below_ms=0)),
        "cpu": dict(workloads=workloads.STANDARD + workloads.EXTRAS, dtypes=["fp32"],
                    budget=Budget(warmup=1, seconds=1.0, min_repeats=3)),
    },
}


def _names(text: str) -> List[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="a short run (the default)")
    preset.add_argument("--full", action="store_true", help="everything: all cells, workloads, dtypes, modes")
    parser.add_argument("--cells", type=_names,
                        help=f"comma-separated, or 'all' (the default): {', '.join(cells.CELLS)}")
    parser.add_argument("--workloads", type=_names,
                        help=f"comma-separated, or 'all': {', '.join(workloads.WORKLOADS)}; default "
                        "quick: mid on CUDA, cpu_small on the CPU; full: the six of BENCHMARKS.md, "
                        "the three mid_* extras and one_token")
    parser.add_argument("--shape", metavar="T,B,I,H", help="a custom workload (named 'custom'); "
                        "replaces the preset's workloads, adds to --workloads")
    parser.add_argument("--dtypes", type=_names, help="fp32 (TF32 off), bf16, fp16, or 'all'; default "
                        "fp32 on the CPU, on CUDA fp32,bf16 (quick) or all three (full)")
    parser.add_argument("--modes", type=_names, help="inference (no_grad forward), training "
                        "(forward + backward of output.sum()); default both")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ...; default cuda when available")
    parser.add_argument("--contenders", type=_names, default=["fused", "torch.nn", "reference"],
                        help=f"subset of {', '.join(contenders.ORDER)} (default all but compiled)")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile'd step loop")
    parser.add_argument("--compile-timeout", type=float, default=180.0, metavar="S",
                        help="abandon a compilation after S seconds (default 180)")
    parser.add_argument("--loops-everywhere", action="store_true",
                        help="time the reference and compiled loops on every workload, "
                        "not only the small ones (slow)")
    parser.add_argument("--repeats", type=int, help="timed calls per measurement (default: as many as fit "
                        "the preset's time budget); the median is reported")
    parser.add_argument("--warmup", type=int, help="untimed calls after the first (default from preset)")
    parser.add_argument("--check", action="store_true", help="compare outputs and input gradients "
                        "of the contenders before timing")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help=f"output directory (default {RESULTS_DIR})")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def _all_or(names: Optional[List[str]], everything: List[str]) -> Optional[List[str]]:
    return everything if names == ["all"] else names


def build_plan(args: argparse.Namespace) -> suite.Plan:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device")
    preset = PRESETS["full" if args.full else "quick"]["cuda" if device.type == "cuda" else "cpu"]

    workload_names = _all_or(args.workloads, list(workloads.WORKLOADS))
    chosen = workloads.select(workload_names) if workload_names else []
    if args.shape:
        chosen.append(workloads.custom_workload(args.shape))
    elif not chosen:
        chosen = workloads.select(preset["workloads"])

    dtypes = _all_or(args.dtypes, list(DTYPES)) or preset["dtypes"]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise ValueError(f"unknown dtype(s) {unknown}; known: {list(DTYPES)}")
    modes = args.modes or list(suite.MODES)
    if any(m not in suite.MODES for m in modes):
        raise ValueError(f"--modes takes {suite.MODES}, got {modes}")

    names = list(args.contenders) + (["compiled"] if args.compile else [])
    budget: Budget = preset["budget"]
    budget = dataclasses.replace(budget, warmup=budget.warmup if args.warmup is None else args.warmup,
                                 repeats=args.repeats)
    cell_names = _all_or(args.cells, list(cells.CELLS)) or list(cells.CELLS)
    return suite.Plan(
        device=device, workloads=chosen, cells=cells.select(cell_names), dtypes=dtypes, modes=modes, contenders=contenders.make_contenders(names, args.compile_timeout),
        budget=budget, loops_everywhere=args.loops_everywhere, check=args.check, seed=args.seed)


def _settings(argv: List[str], args: argparse.Namespace, plan: suite.Plan) -> dict:
    return {
        "argv": argv,
        "preset": "full" if args.full else "quick",
        "cells": [c.name for c in plan.cells],
        "workloads": [w.name for w in plan.workloads],
        "dtypes": plan.dtypes,
        "modes": plan.modes,
        "contenders": [c.name for c in plan.contenders],
        "budget": vars(plan.budget),
        "loops_everywhere": plan.loops_everywhere,
        "check": plan.check,
        "seed": plan.seed,
        "training_loss": "output.sum(); gradients of x and all parameters via torch.autograd.grad",
        "timer": "CUDA events, synchronised per call" if plan.device.type == "cuda" else "time.perf_counter",
    }


def _plot_title(env: dict) -> str:
    where = env.get("gpu") or env.get("cpu") or env.get("device")
    return f"fused_rnn benchmarks on {where}, torch {env.get('torch')}, {env.get('date')}"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        plan = build_plan(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if plan.device.type == "cuda":
        if plan.device.index is not None:
            torch.cuda.set_device(plan.device)  # CUDA events and memory statistics follow it
        # fp32 means full fp32: TF32 would make both cuDNN and fused_rnn faster and less exact.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if args.threads:
        torch.set_num_threads(args.threads)

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = args.out or RESULTS_DIR
    stem = f"{environment.device_slug(plan.device)}_{stamp}"
    env = environment.collect(plan.device)
    log = report.ResultLog(out_dir / f"{stem}.json", env, _settings(argv, args, plan),
                           {w.name: w.to_json() for w in plan.workloads})
    print(f"{plan.size} measurements on {plan.device}; writing {log.path}", file=sys.stderr)
    load, cores = env["load_average_1min"], env["cpu_count"] or 1
    if load is not None and load > 0.5 * cores:
        print(f"warning: load average {load:.1f} on {cores} cores: other work is running, "
              "timings (CPU ones above all) will be noisy", file=sys.stderr)
    complete = False
    # `timeout` and job schedulers stop a run with SIGTERM: treat it as Ctrl-C, so the table and
    # the plot of what was measured still come out.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        suite.run(plan, log)
        complete = True
    except KeyboardInterrupt:
        print("\ninterrupted: reporting what was measured", file=sys.stderr)
    finally:
        # Also after an interruption or a crash: the table and plot of what was measured.
        log.document["environment"]["load_average_1min_at_end"] = environment.load_average()
        log.finish(complete)
        print(report.format_table(log.results, log.checks, [c.name for c in plan.contenders]))
        print(f"\nresults: {log.path}")
        if not args.no_plot:
            print(report.plot_speedups(log.results, out_dir / f"{stem}.png", _plot_title(env)))
    measured = sum(r["status"] == "ok" for r in log.results)
    return 0 if measured else 1


if __name__ == "__main__":
    raise SystemExit(main())
