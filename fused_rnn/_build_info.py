"""fused_rnn.build_info(): what this installation's kernels were built with."""
from typing import Any, Dict

import torch


def build_info() -> Dict[str, Any]:
    """Package version, the torch and CUDA versions the kernels were compiled with, whether CUDA
    kernels were compiled and for which architectures, and the C++ compiler."""
    from . import __version__, _ops

    info: Dict[str, Any] = {"version": __version__, "torch_runtime": torch.__version__}
    if _ops.LOAD_ERROR is not None:
        info.update(kernels_loaded=False, load_error=str(_ops.LOAD_ERROR), cuda_compiled=False)
        return info
    info.update(kernels_loaded=True, **_ops.compiled_build_info())
    archs = info.get("cuda_archs") or ""
    # nvcc's list is compute capabilities times 10 (e.g. "800,900" -> ["8.0", "9.0"]).
    info["cuda_archs"] = [f"{int(a) // 10}.{int(a) % 10}" for a in archs.split(",") if a.strip()]
    return info
