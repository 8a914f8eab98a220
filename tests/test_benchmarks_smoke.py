"""The benchmark suite runs end to end and writes the JSON it promises.

A tiny custom shape on the CPU with two timed calls: this checks the harness's plumbing and the
JSON's structure, never speed (timings have no place in pass/fail tests).
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

RESULT_FIELDS = {"workload", "cell", "dtype", "mode", "contender", "status", "impl"}
TIMING_FIELDS = {"first_call_ms", "median_ms", "min_ms", "repeats", "times_ms", "peak_memory_bytes"}
ENVIRONMENT_FIELDS = {"date", "hostname", "cpu", "gpu", "gpu_driver", "torch", "cuda", "cudnn",
                      "fused_rnn_build_info", "git_commit", "torch_num_threads"}


@pytest.fixture(scope="module")
def document(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # As a user runs it, from the repository root: `benchmarks` is a folder there, not an
    # installed package, so this works however pytest was started.
    command = [sys.executable, "-m", "benchmarks", "--device", "cpu", "--shape", "6,3,5,4",
               "--cells", "lstm,gru,peephole_lstm", "--modes", "inference,training",
               "--repeats", "2", "--warmup", "1", "--check", "--out", str(out), "--no-plot"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "workload" in done.stdout  # the table
    (path,) = out.glob("cpu_*.json")
    return json.loads(path.read_text())


def test_document_structure(document):
    assert document["schema"] == "fused_rnn.benchmarks/1"
    assert document["complete"] is True
    assert ENVIRONMENT_FIELDS <= set(document["environment"])
    assert document["workloads"]["custom"]["T"] == 6
    assert document["settings"]["cells"] == ["lstm", "gru", "peephole_lstm"]


def test_every_combination_recorded(document):
    results = document["results"]
    for record in results:
        assert RESULT_FIELDS <= set(record)
        assert record["status"] in ("ok", "error", "n/a", "skipped")
    combos = {(r["cell"], r["mode"], r["contender"]) for r in results}
    contenders = document["settings"]["contenders"]
    assert len(combos) == len(results) == 3 * 2 * len(contenders)


def test_timings_positive(document):
    for record in document["results"]:
        if record["status"] == "ok":
            assert TIMING_FIELDS <= set(record)
            assert record["repeats"] == 2 and len(record["times_ms"]) == 2
            assert record["median_ms"] > 0 and record["first_call_ms"] > 0
            assert record["peak_memory_bytes"] is None  # no per-call peak on the CPU


def test_torch_and_reference_measured(document):
    status = {(r["cell"], r["mode"], r["contender"]): r["status"] for r in document["results"]}
    for mode in ("inference", "training"):
        assert status[("lstm", mode, "torch.nn")] == "ok"
        assert status[("gru", mode, "torch.nn")] == "ok"
        assert status[("peephole_lstm", mode, "torch.nn")] == "n/a"  # torch has no peephole LSTM
        assert status[("lstm", mode, "reference")] == "ok"


def test_check_agrees_with_torch(document):
    # The weights reach every contender: the reference computes what torch.nn computes.
    checks = {(c["cell"], c["contender"]): c for c in document["checks"]}
    verdict = checks[("lstm", "reference")]
    assert verdict["baseline"] == "torch.nn"
    assert verdict["ok"] and math.isfinite(verdict["output_rel_error"])


def test_speedups_summarised(document):
    rows = document["speedups"]
    assert len(rows) == 3 * 2
    lstm = next(r for r in rows if r["cell"] == "lstm" and r["mode"] == "training")
    assert lstm["fused_vs_reference"] is None or lstm["fused_vs_reference"] > 0
    assert all(ratio > 0 for ratio in lstm["vs_torch.nn"].values())


def test_algorithm_contenders(tmp_path):
    """fused_stepwise and fused_persistent time the two algorithms; the persistent one is n/a for
    the cell it does not run, and where it runs --check finds it equal to torch.nn."""
    import fused_rnn
    command = [sys.executable, "-m", "benchmarks", "--device", "cpu", "--shape", "6,3,5,16",
               "--cells", "lstm,gru_reset_before", "--modes", "training", "--repeats", "2",
               "--warmup", "1", "--check",
               "--contenders", "fused_stepwise,fused_persistent,fused_graphed,torch.nn",
               "--out", str(tmp_path), "--no-plot"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = tmp_path.glob("cpu_*.json")
    document = json.loads(path.read_text())
    status = {(r["cell"], r["contender"]): r["status"] for r in document["results"]}
    assert status[("gru_reset_before", "fused_stepwise")] == "ok"
    assert status[("gru_reset_before", "fused_persistent")] == "n/a"
    assert status[("lstm", "fused_graphed")] == "n/a"  # CUDA graphs: CUDA only
    if fused_rnn.build_info()["cpu_simd"] != "scalar":  # where the CPU's persistent path runs
        assert status[("lstm", "fused_persistent")] == "ok"
        checks = {(c["cell"], c["contender"]): c for c in document["checks"]}
        assert checks[("lstm", "fused_persistent")]["ok"]


def test_persistent_refusal_is_not_applicable(tmp_path):
    """A shape algo='persistent' refuses (here H = 30, not a multiple of 16 on the CPU; on CUDA a
    W_hh slice too large for shared memory) is n/a in the results, not an error."""
    command = [sys.executable, "-m", "benchmarks", "--device", "cpu", "--shape", "4,2,5,30",
               "--cells", "gru", "--modes", "inference", "--repeats", "1", "--warmup", "0",
               "--contenders", "fused_persistent,torch.nn", "--out", str(tmp_path), "--no-plot"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]  # (it fails when nothing was measured)
    (path,) = tmp_path.glob("cpu_*.json")
    results = {r["contender"]: r for r in json.loads(path.read_text())["results"]}
    persistent = results["fused_persistent"]
    assert persistent["status"] == "n/a" and "cannot run" in persistent["reason"], persistent
    assert results["torch.nn"]["status"] == "ok"


# ---------------------------------------------------------------------------------------------
# Interleaved timing, with fake contenders that log their calls (no RNN runs).

def _suite_modules():
    if str(REPO) not in sys.path:  # `benchmarks` is a folder of the repository root
        sys.path.insert(0, str(REPO))
    from benchmarks import contenders, report, suite, timing, workloads
    return contenders, report, suite, timing, workloads


def _fake_contender(name, calls, fail_on_call=None, error=RuntimeError):
    """A contender whose forward appends its name to ``calls``; its ``fail_on_call``-th call
    (counting from 1) and every later one raise ``error``."""
    contenders = _suite_modules()[0]

    class Fake(contenders.Contender):
        def __init__(self):
            self.name = name
            self.told = []

        def build(self, case):
            def forward(x):
                calls.append(name)
                if fail_on_call is not None and calls.count(name) >= fail_on_call:
                    raise error(f"{name} broke on call {calls.count(name)}")
                return x
            return contenders.Built(forward, [], f"fake {name}")

        def failed(self, err):
            self.told.append(err)

        def not_applicable(self, err):
            return str(err) if isinstance(err, ValueError) else None

    return Fake()


def _run_fakes(tmp_path, fakes, budget, modes=("inference",)):
    import torch
    contenders, report, suite, timing, workloads = _suite_modules()
    from benchmarks.cells import CELLS
    plan = suite.Plan(device=torch.device("cpu"),
                      workloads=[workloads.Workload("tiny", T=2, B=1, I=2, H=2, loop_friendly=True)],
                      cells=[CELLS["lstm"]], dtypes=["fp32"], modes=list(modes), contenders=fakes,
                      budget=budget)
    log = report.ResultLog(tmp_path / "fake.json", {}, {}, {})
    lines = []
    suite.Runner(plan, log, lines.append).run()
    return {(r["contender"], r["mode"]): r for r in log.results}, lines


def test_timed_calls_interleave(tmp_path):
    """First call and warm-up one contender after the other, then rounds of one timed call per
    contender, the first of each round rotating; each contender gets exactly its repeats."""
    timing = _suite_modules()[3]
    calls = []
    names = ["a", "b", "c"]
    fakes = [_fake_contender(n, calls) for n in names]
    results, lines = _run_fakes(tmp_path, fakes, timing.Budget(warmup=2, repeats=4, rewarm_below_ms=0))
    results = {contender: record for (contender, _), record in results.items()}
    untimed = 1 + 2  # first call and warm-up (no peak-memory call on the CPU)
    assert calls[:3 * untimed] == [n for n in names for _ in range(untimed)]
    timed = calls[3 * untimed:]
    assert len(timed) == 3 * 4
    rounds = [timed[i:i + 3] for i in range(0, len(timed), 3)]
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    for name in names:
        record = results[name]
        assert record["status"] == "ok" and record["repeats"] == 4 and len(record["times_ms"]) == 4
        assert record["impl"] == f"fake {name}" and record["first_call_ms"] > 0
    assert len(lines) == 3 and all(line.startswith(f"[{i + 1}/3] tiny/lstm/fp32/inference ")
                                   for i, line in enumerate(lines))


def test_short_calls_are_rewarmed_in_every_round(tmp_path):
    """A call below rewarm_below_ms that would follow another contender's call gets an untimed
    call of its own first (so it is timed warm); one that follows its own call, or a longer one,
    does not."""
    timing = _suite_modules()[3]
    calls = []
    fakes = [_fake_contender("a", calls), _fake_contender("b", calls)]
    results, _ = _run_fakes(tmp_path, fakes, timing.Budget(warmup=0, repeats=2, rewarm_below_ms=1e9))
    assert calls[2:] == ["a", "a", "b", "b", "b", "a", "a"]  # round 2 starts with b, after b
    assert all(results[(n, "inference")]["repeats"] == 2 for n in ("a", "b"))
    calls.clear()
    _run_fakes(tmp_path, fakes, timing.Budget(warmup=0, repeats=2, rewarm_below_ms=1e-9))
    assert calls[2:] == ["a", "b", "b", "a"]


def test_time_budget_interleaves_until_each_has_enough(tmp_path):
    # No fixed repeats and no time to spend: min_repeats each, still in alternating rounds.
    timing = _suite_modules()[3]
    calls = []
    fakes = [_fake_contender(n, calls) for n in ("a", "b")]
    budget = timing.Budget(warmup=0, seconds=0.0, min_repeats=3, max_repeats=10, rewarm_below_ms=0)
    results, _ = _run_fakes(tmp_path, fakes, budget)
    results = {contender: record for (contender, _), record in results.items()}
    assert calls[2:] == ["a", "b", "b", "a", "a", "b"]
    assert results["a"]["repeats"] == results["b"]["repeats"] == 3


def test_contender_failing_in_timed_calls_is_dropped(tmp_path):
    """One raising in its timed calls is recorded as an error (with its traceback, the contender
    told), sits out the later rounds, and the others still get all their timings; one that raises
    what it calls not applicable is n/a."""
    timing = _suite_modules()[3]
    calls = []
    # warmup=1: calls 1-2 untimed, so call 4 is the broken one's second timed call.
    broken = _fake_contender("broken", calls, fail_on_call=4)
    refused = _fake_contender("refused", calls, fail_on_call=3, error=ValueError)
    fine = _fake_contender("fine", calls)
    results, lines = _run_fakes(tmp_path, [broken, refused, fine],
                                timing.Budget(warmup=1, repeats=5, rewarm_below_ms=0))
    results = {contender: record for (contender, _), record in results.items()}
    assert calls.count("broken") == 4 and calls.count("refused") == 3 and calls.count("fine") == 2 + 5
    assert results["broken"]["status"] == "error"
    assert "RuntimeError: broken broke on call 4" in results["broken"]["error"]
    assert "broke on call 4" in results["broken"]["traceback"]
    assert results["refused"]["status"] == "n/a" and "refused broke on call 3" in results["refused"]["reason"]
    assert len(broken.told) == 1 and len(refused.told) == 1 and not fine.told
    assert results["fine"]["status"] == "ok" and results["fine"]["repeats"] == 5
    assert len(lines) == 3 and all("[" in line for line in lines)


def test_contender_failing_its_first_call_is_left_out(tmp_path):
    timing = _suite_modules()[3]
    calls = []
    broken = _fake_contender("broken", calls, fail_on_call=1)
    fine = _fake_contender("fine", calls)
    results, _ = _run_fakes(tmp_path, [broken, fine], timing.Budget(warmup=1, repeats=3),
                            modes=("inference", "training"))
    assert calls.count("broken") == 2  # its first call, once per mode
    for mode in ("inference", "training"):
        assert results[("broken", mode)]["status"] == "error"
        assert results[("fine", mode)]["status"] == "ok" and results[("fine", mode)]["repeats"] == 3
    assert len(broken.told) == 2


def test_measure_alone():
    """measure(), for callers timing one function, still does first call, warm-up, repeats."""
    import torch
    timing = _suite_modules()[3]
    count = []
    result = timing.measure(lambda: count.append(1), torch.device("cpu"), timing.Budget(warmup=2, repeats=4))
    assert len(count) == 1 + 2 + 4 and len(result.times_ms) == 4 and result.peak_memory_bytes is None
    budget = timing.Budget(warmup=0, seconds=0.0, min_repeats=2, max_repeats=5)
    assert len(timing.measure(lambda: None, torch.device("cpu"), budget).times_ms) == 2
    with pytest.raises(ZeroDivisionError):
        timing.measure(lambda: 1 / 0, torch.device("cpu"), budget)
