"""Writes OUT/gpu_check.json from what tools/gpu_check.sh has done so far: the environment,
each stage's exit code and time, every test's outcome (WORK/junit.xml) and the sanitizer's
error counts (OUT/gpu_check.log). Run after every stage, so the JSON is current even if the run
is cut off.   usage: gpu_check_report.py OUT WORK GIT_COMMIT"""
import json
import os
import platform
import re
import subprocess
import sys
import xml.etree.ElementTree as ET


def environment(commit: str) -> dict:
    env = {"git_commit": commit, "python": platform.python_version(), "host": platform.node()}
    try:
        import torch
        env.update(torch=torch.__version__, cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    except Exception as error:  # the report must not fail because torch did
        env["torch_error"] = repr(error)
    try:
        env["driver"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as error:
        env["driver_error"] = repr(error)
    return env


def stages(work: str) -> list:
    path = os.path.join(work, "stages.txt")
    if not os.path.exists(path):
        return []
    rows = [line.split() for line in open(path) if line.strip()]
    return [{"stage": name, "rc": int(rc), "seconds": int(sec)} for name, rc, sec in rows]


def tests(work: str) -> dict:
    path = os.path.join(work, "junit.xml")
    if not os.path.exists(path):
        return {}
    outcomes = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped: " + (child.get("message") or "")
        outcomes[name] = outcome
    return outcomes


def sanitizer(out: str) -> dict:
    log = os.path.join(out, "gpu_check.log")
    text = open(log, errors="replace").read() if os.path.exists(log) else ""
    found = {}
    # Every sanitizer stage: memcheck, racecheck and their _cluster, _mma variants. A section runs
    # from the stage's header line to the next stage line ("===== " with a space: the sanitizer's
    # own lines start with "=========").
    for section in re.finditer(r"^===== ((?:memcheck|racecheck)\w*) \(.*?(?=^===== |\Z)", text,
                               re.S | re.M):
        counts = re.findall(r"ERROR SUMMARY: (\d+) error|\((\d+) errors, \d+ warnings\)",
                            section.group(0))
        counts = [a or b for a, b in counts]
        found[section.group(1)] = {"errors": sum(map(int, counts)) if counts else None}
    return found


def main(out: str, work: str, commit: str) -> None:
    outcomes = tests(work)
    summary = {k: sum(1 for v in outcomes.values() if v.startswith(k))
               for k in ("passed", "failed", "skipped")}
    report = {"environment": environment(commit), "stages": stages(work),
              "test_summary": summary, "sanitizer": sanitizer(out), "tests": outcomes}
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
