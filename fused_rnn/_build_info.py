"""fused_rnn.build_info(): what this installation's kernels were built with."""
from typing import Any, Dict

import torch


def build_info() -> Dict[str, Any]:
    """Package version, the torch and CUDA versions the kernels were compiled with, whether CUDA
    kernels were compiled and for which architectures, the C++ compiler, whether the CPU loops
    run in parallel (openmp) and the SIMD level the CPU kernels use here (cpu_simd)."""
    from . import __version__, _ops

    info: Dict[str, Any] = {"version": __version__, "torch_runtime": torch.__version__}
    if _ops.LOAD_ERROR is not None:
        info.update(kernels_loaded=False, load_error=str(_ops.LOAD_ERROR), cuda_compiled=False)
        return info
    info.update(kernels_loaded=True, **_ops.compiled_build_info())
    # nvcc's __CUDA_ARCH_LIST__ holds major*100 + minor*10 (e.g. "800,900" -> ["8.0", "9.0"]);
    # CUDART_VERSION holds major*1000 + minor*10 (e.g. 13000 -> "13.0").
    archs = [int(a) for a in (info.get("cuda_archs") or "").split(",") if a.strip()]
    info["cuda_archs"] = [f"{a // 100}.{a % 100 // 10}" for a in archs]
    if info.get("cuda_version"):
        version = int(info["cuda_version"])
        info["cuda_version"] = f"{version // 1000}.{version % 1000 // 10}"
    return info


def release_cpu_buffers() -> int:
    """Frees the host memory the CPU ops keep for reuse and returns how many bytes that was.

    Large CPU buffers (inputs' projections, saved activations, their gradients) are kept when
    freed and handed to the next call of a similar size, so that a training loop does not
    page-fault tens of megabytes in again every step (as a CUDA caching allocator does). Call
    this to give that memory back, e.g. after training. Returns 0 without compiled kernels."""
    from . import _ops

    return 0 if _ops.LOAD_ERROR is not None else int(_ops._C.release_cpu_buffers())


def release_cuda_graphs() -> int:
    """Frees the CUDA graphs the ops captured of their stepwise loops, and their buffers, and
    returns the bytes of those buffers.

    For float16 and bfloat16 on CUDA (float32 too with FUSED_RNN_STEPWISE_GRAPHS=all) the ops
    replay their stepwise loops from CUDA graphs captured on a shape's second call. Each captured
    loop keeps its buffers (a backward loop one the size of the saved gates) for the next call, up
    to 16 loops per step type and 1/64 of the device's memory. Call this to give that memory
    back, e.g. after training; later calls capture again. Returns 0 without compiled CUDA
    kernels."""
    from . import _ops

    return 0 if _ops.LOAD_ERROR is not None else int(_ops._C.release_cuda_graphs())
