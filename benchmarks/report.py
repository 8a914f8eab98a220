"""What a run leaves behind: the JSON (rewritten after every measurement, so a crash or Ctrl-C
loses nothing already measured), the terminal table and the PNG of speedups."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .contenders import ORDER

SCHEMA = "fused_rnn.benchmarks/1"
CaseKey = Tuple[str, str, str, str]  # workload, cell, dtype, mode


class ResultLog:
    """The run's JSON document, kept on disk up to date."""

    def __init__(self, path: Path, environment: Dict[str, Any], settings: Dict[str, Any],
                 workloads: Dict[str, Any]):
        self.path = path
        self.document: Dict[str, Any] = {
            "schema": SCHEMA, "environment": environment, "settings": settings, "workloads": workloads,
            "results": [], "checks": [], "speedups": [], "complete": False,
        }
        self.write()

    @property
    def results(self) -> List[Dict[str, Any]]:
        return self.document["results"]

    @property
    def checks(self) -> List[Dict[str, Any]]:
        return self.document["checks"]

    def add_result(self, record: Dict[str, Any]) -> None:
        self.results.append(record)
        self.write()

    def add_check(self, record: Dict[str, Any]) -> None:
        self.checks.append(record)
        self.write()

    def finish(self, complete: bool = True) -> None:
        self.document["speedups"] = speedups(self.results)
        self.document["complete"] = complete  # False: interrupted, the plan was not run to the end
        self.write()

    def write(self) -> None:
        # Write-then-rename: a reader (or a crash) never sees half a file.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(self.path.suffix + ".partial")
        partial.write_text(json.dumps(self.document, indent=1, default=str) + "\n")
        os.replace(partial, self.path)


def case_key(record: Dict[str, Any]) -> CaseKey:
    return record["workload"], record["cell"], record["dtype"], record["mode"]


def _by_case(results: List[Dict[str, Any]]) -> Dict[CaseKey, Dict[str, Dict[str, Any]]]:
    cases: Dict[CaseKey, Dict[str, Dict[str, Any]]] = {}
    for record in results:
        cases.setdefault(case_key(record), {})[record["contender"]] = record
    return cases


def _median(record: Optional[Dict[str, Any]]) -> Optional[float]:
    if record and record.get("status") == "ok":
        return record["median_ms"]
    return None


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def speedups(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per case: each contender's speedup over torch.nn (torch.nn ms / contender ms, > 1 is
    faster), fused's speedup over the reference loop, and fused's peak memory relative to torch.nn."""
    rows = []
    for (workload, cell, dtype, mode), by_contender in _by_case(results).items():
        torch_ms = _median(by_contender.get("torch.nn"))
        vs_torch = {name: _ratio(torch_ms, _median(record))
                    for name, record in by_contender.items() if name != "torch.nn"}
        fused, torch_nn = by_contender.get("fused") or {}, by_contender.get("torch.nn") or {}
        memory = _ratio(fused.get("peak_memory_bytes"), torch_nn.get("peak_memory_bytes"))
        rows.append({
            "workload": workload, "cell": cell, "dtype": dtype, "mode": mode,
            "vs_torch.nn": {name: ratio for name, ratio in vs_torch.items() if ratio is not None},
            "fused_vs_reference": _ratio(_median(by_contender.get("reference")), _median(fused)),
            "fused_memory_vs_torch.nn": memory,
        })
    return rows


# ---------------------------------------------------------------------------------------------
# Terminal table

def _time_cell(record: Optional[Dict[str, Any]], failed_checks: set) -> str:
    if record is None:
        return ""
    status = record["status"]
    if status == "ok":
        flag = "!" if (case_key(record)[:3] + (record["contender"],)) in failed_checks else ""
        return f"{record['median_ms']:.3f}{flag}"
    return {"n/a": "n/a", "skipped": "-", "error": "ERR"}.get(status, status)


def _speedup_cell(ratio: Optional[float]) -> str:
    return f"{ratio:.2f}x" if ratio is not None else ""


def format_table(results: List[Dict[str, Any]], checks: List[Dict[str, Any]], contenders: List[str]) -> str:
    failed_checks = {(c["workload"], c["cell"], c["dtype"], c["contender"]) for c in checks if not c["ok"]}
    summary = {case_key(row): row for row in speedups(results)}
    show_memory = any(r.get("peak_memory_bytes") is not None for r in results)
    # The ratio columns that this run can fill: (title, how to read it off a speedups row).
    ratios = []
    for name in ("fused", "fused_stepwise", "fused_persistent"):
        if name in contenders and "torch.nn" in contenders:
            ratios.append((f"{name} vs torch.nn",
                           lambda row, name=name: row["vs_torch.nn"].get(name)))
    if "fused" in contenders and "reference" in contenders:
        ratios.append(("fused vs reference", lambda row: row["fused_vs_reference"]))
    if "fused" in contenders and "torch.nn" in contenders and show_memory:
        ratios.append(("fused mem / torch.nn", lambda row: row["fused_memory_vs_torch.nn"]))
    header = ["workload", "cell", "dtype", "mode"] + [f"{name} ms" for name in contenders]
    header += [title for title, _ in ratios]
    rows = [header]
    for key, by_contender in _by_case(results).items():
        row = list(key) + [_time_cell(by_contender.get(name), failed_checks) for name in contenders]
        row += [_speedup_cell(read(summary[key])) for _, read in ratios]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if i < 4 else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    notes = ["ms: median per call; speedup = other's ms / fused's ms (> 1: fused is faster); "
             "n/a: no such implementation; -: skipped (see JSON); ERR: raised (below)"]
    if failed_checks:
        notes.append("!: output differs from the baseline beyond tolerance (see JSON checks)")
    errors = [r for r in results if r["status"] == "error"]
    seen = set()
    for r in errors:
        message = (r.get("error") or "").splitlines()[0][:160] if r.get("error") else ""
        if (r["contender"], message) in seen:
            continue  # the same failure on every case: say it once
        seen.add((r["contender"], message))
        notes.append(f"ERR {r['contender']} ({'/'.join(case_key(r))}): {message}")
    return "\n".join(lines + [""] + notes)


# ---------------------------------------------------------------------------------------------
# Plot

def plot_speedups(results: List[Dict[str, Any]], path: Path, title: str = "") -> str:
    """Horizontal bars, log scale: each contender's speedup over torch.nn, and fused's over the
    reference loop. Returns a line for the terminal; matplotlib is optional."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display on benchmark machines
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install matplotlib)"

    rows = speedups(results)
    panels = []
    contenders = [name for name in ORDER if any(name in row["vs_torch.nn"] for row in rows)]
    vs_torch = [(row, {n: row["vs_torch.nn"][n] for n in contenders if n in row["vs_torch.nn"]}) for row in rows]
    vs_torch = [(row, bars) for row, bars in vs_torch if bars]
    if vs_torch:
        panels.append(("speedup over torch.nn", vs_torch, contenders))
    vs_reference = [(row, {"fused": row["fused_vs_reference"]}) for row in rows if row["fused_vs_reference"]]
    if vs_reference:
        panels.append(("fused speedup over the reference loop", vs_reference, ["fused"]))
    if not panels:
        return "plot skipped: no speedup to plot (torch.nn and fused/reference results needed)"

    bars_per_row = max(len(names) for _, _, names in panels)
    height = max(len(data) for _, data, _ in panels) * (0.15 * bars_per_row + 0.15) + 1.8
    figure, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), height), squeeze=False)
    colors = {"fused": "tab:green", "reference": "tab:gray", "compiled": "tab:orange"}
    for axis, (heading, data, names) in zip(axes[0], panels):
        labels = [" ".join(case_key(row)) for row, _ in data]
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            ys = [i + j * width for i in range(len(data))]
            values = [bars.get(name, math.nan) for _, bars in data]
            axis.barh(ys, values, height=width, label=name, color=colors.get(name))
        axis.set_yticks([i + 0.4 - width / 2 for i in range(len(data))], labels, fontsize=7)
        axis.invert_yaxis()
        axis.set_xscale("log")
        axis.axvline(1.0, color="black", linewidth=0.8)
        axis.set_title(heading)
        axis.set_xlabel("x (> 1: faster)")
        axis.legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return f"plot: {path}"
