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
    if fused_rnn.build_info()["cpu_simd"] == "avx512":  # where the CPU's persistent path runs
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
