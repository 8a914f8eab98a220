"""Where the numbers were taken: machine, software versions, build and commit.

Absolute times only mean something next to this record; every probe is best effort and reports
None rather than failing the run.
"""
from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

_REPO = Path(__file__).resolve().parent.parent

# The variables that cap the CPU's instruction set of ATen, oneDNN and MKL.
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def _command(args: List[str], cwd: Optional[Path] = None) -> Optional[str]:
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_model() -> Optional[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _fused_build_info() -> Any:
    try:
        import fused_rnn
        return fused_rnn.build_info()
    except Exception as error:  # not built yet, or no build_info: say why
        return f"unavailable: {type(error).__name__}: {error}"


def _gpu(device: torch.device) -> Dict[str, Any]:
    if device.type != "cuda" or not torch.cuda.is_available():
        return {"gpu": None, "gpu_driver": None}
    index = device.index if device.index is not None else torch.cuda.current_device()
    properties = torch.cuda.get_device_properties(index)
    driver = _command(["nvidia-smi", f"--id={index}", "--query-gpu=driver_version", "--format=csv,noheader"])
    return {
        "gpu": properties.name,
        "gpu_memory_bytes": properties.total_memory,
        "gpu_compute_capability": f"{properties.major}.{properties.minor}",
        "gpu_driver": driver,
    }


def load_average() -> Optional[float]:
    """The 1-minute load average: other work on the machine skews CPU timings badly (a preempted
    OpenMP thread stalls every barrier), so the record says how busy the machine was."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def collect(device: torch.device) -> Dict[str, Any]:
    commit = _command(["git", "rev-parse", "HEAD"], cwd=_REPO)
    # --no-optional-locks: a benchmark must not touch the repository, not even the index's stat cache.
    dirty = _command(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "load_average_1min": load_average(),
        "device": str(device),
        **_gpu(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "fused_rnn_build_info": _fused_build_info(),
        # The switches of experimental kernels (FUSED_RNN_PERSISTENT_CLUSTER, ..._MMA) this ran with.
        "fused_rnn_environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith("FUSED_RNN_")},
        # The CPU's instruction-set level as ATen (and with it fused_rnn), oneDNN and MKL ran it:
        # lowered by these variables, an AVX-512 machine stands in for an AVX2 one.
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_environment": {k: os.environ[k] for k in ISA_VARIABLES if k in os.environ},
        "git_commit": commit,
        "git_dirty": bool(dirty) if commit is not None and dirty is not None else None,
    }


def device_slug(device: torch.device) -> str:
    """A filename-safe name of the device kind: "cpu", "nvidia-h100-80gb-hbm3", ..."""
    if device.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
    else:
        name = device.type
    slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower())
    return "-".join(part for part in slug.split("-") if part)
