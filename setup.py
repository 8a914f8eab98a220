"""Builds fused_rnn._C with torch.utils.cpp_extension.

CPU kernels are always built. The CUDA kernels are built when nvcc and a CUDA build of torch are
both present; FUSED_RNN_CUDA=0 or 1 forces either way. TORCH_CUDA_ARCH_LIST picks the GPU
architectures (default when no GPU is visible: 8.0 and 9.0 with PTX); MAX_JOBS bounds ninja.
Install with `pip install --no-build-isolation -e .` (the build compiles against the torch you
have installed), or build an sdist with `python -m build --sdist --no-isolation`. The package
requires the torch release it was compiled against (e.g. torch==2.14.*): its binary loads with no
other. Builds write their intermediate files to a temporary folder, not into the source tree.
"""
import atexit
import glob
import os
import re
import shutil
import sys
import tempfile

import setuptools
from setuptools import find_packages, setup

# pyproject.toml's SPDX `license` string needs setuptools >= 77. With --no-build-isolation pip does
# not install build-system.requires, so an older setuptools would fail with a schema error that
# does not say this.
if int(setuptools.__version__.split(".")[0]) < 77:
    sys.exit(f"fused_rnn needs setuptools >= 77 to build (found {setuptools.__version__}): "
             "pip install 'setuptools>=77'")

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """The CUDA toolkit root. torch guesses it from the nvcc on PATH, which breaks when that
    nvcc is a wrapper script outside the toolkit (e.g. /usr/local/bin/nvcc): look for the
    directory that really holds bin/nvcc and include/cuda_runtime.h."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")) and os.path.isfile(
                os.path.join(root, "include", "cuda_runtime.h")):
            return root
    return None


_cuda_home = _find_cuda_home()
if _cuda_home:
    # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME at import.
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda():
    forced = os.environ.get("FUSED_RNN_CUDA")
    available = _cuda_home is not None and torch.version.cuda is not None
    if forced == "1":
        if not available:
            sys.exit("FUSED_RNN_CUDA=1 but no CUDA toolkit (nvcc) or no CUDA build of torch was found")
        return True
    if forced == "0":
        return False
    return available


def _pip_cuda_include_dirs():
    """Headers that a pip-installed CUDA torch ships beside it (cuBLAS, cuSPARSE, ...). A minimal
    system toolkit may lack them while ATen/cuda/CUDAContext.h includes them."""
    site = os.path.dirname(os.path.dirname(torch.__file__))
    dirs = []
    for include in sorted(glob.glob(os.path.join(site, "nvidia", "*", "include"))):
        if glob.glob(os.path.join(include, "cublas*.h")):
            dirs.append(include)
    return dirs


def _cublas_link_args():
    """Links cuBLASLt and cuBLAS, which the time loops call directly (csrc/cuda/step_gemm_cublaslt.cpp
    and step_gemm_cublas.cpp). A pip-installed CUDA torch ships them beside itself under versioned
    names only (libcublasLt.so.13), which -lcublasLt does not find: link those files by name. At
    run time the loader reuses the copies torch has loaded. Without them, a full toolkit's
    (CUDA_HOME/lib64)."""
    site = os.path.dirname(os.path.dirname(torch.__file__))
    args = []
    for name in ("cublasLt", "cublas"):
        pattern = os.path.join(site, "nvidia", "*", "lib", f"lib{name}.so.*")
        versioned = [path for path in sorted(glob.glob(pattern))
                     if re.fullmatch(rf"lib{name}\.so\.\d+", os.path.basename(path))]
        if versioned:
            directory, file = os.path.split(versioned[0])
            args += [f"-L{directory}", f"-l:{file}", f"-Wl,-rpath,{directory}"]
        else:
            args.append(f"-l{name}")
    return args


def _set_default_arch_list():
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return
    if torch.cuda.is_available():
        return  # torch builds for the visible GPUs
    os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"


def _extension():
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) +
                         glob.glob(os.path.join("csrc", "sequence", "*.cpp")) +
                         glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    # The C++ standard is the one torch asks for (C++17 up to 2.9, C++20 after): not set here.
    # -fopenmp: at::parallel_for is a header template that runs serially unless the extension
    # itself is compiled with OpenMP. The loader reuses the libgomp.so.1 torch already loaded.
    cxx_flags = ["-O3", "-fopenmp"]
    link_flags = ["-fopenmp"]
    if not _want_cuda():
        return CppExtension("fused_rnn._C", cpp_sources, include_dirs=include_dirs,
                            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)
    _set_default_arch_list()
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")) +
                          glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    return CUDAExtension(
        "fused_rnn._C", cpp_sources + cuda_sources,
        include_dirs=include_dirs + _pip_cuda_include_dirs(),
        define_macros=[("FUSED_RNN_WITH_CUDA", None)],
        extra_link_args=link_flags + _cublas_link_args(),
        extra_compile_args={"cxx": cxx_flags,
                            "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]})


def _torch_requirement():
    """The torch release the kernels are compiled against, as a requirement (torch==2.14.*): the
    extension uses torch's C++ API, whose ABI changes between minor releases, so the binary loads
    with this release only (patch releases are meant to keep the ABI). CUDA and CPU builds of one
    release differ only in the local label (+cu130, +cpu), which a wildcard pin cannot name."""
    match = re.match(r"(\d+)\.(\d+)", torch.__version__)
    if match is None:
        sys.exit(f"cannot read torch's version {torch.__version__!r}")
    return f"torch=={match.group(1)}.{match.group(2)}.*"


def _out_of_tree_build_options():
    """setuptools writes its egg-info (metadata, made again by each command that needs it) and
    its build/ folder into the source tree unless told otherwise. A temporary folder, removed
    when setup.py exits, takes the egg-info always and a wheel build's compilation (pip install .,
    python -m build); pip's editable builds choose temporary folders themselves. A developer's
    `python setup.py build_ext --inplace` keeps build/ (gitignored), where ninja recompiles only
    what changed. --egg-base / --build-base on a setup.py command line still win."""
    scratch = tempfile.mkdtemp(prefix="fused_rnn-build-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    options = {"egg_info": {"egg_base": scratch}}
    if "bdist_wheel" in sys.argv[1:]:
        options["build"] = {"build_base": os.path.join(scratch, "build")}
    return options


setup(
    packages=find_packages(include=["fused_rnn", "fused_rnn.*"]),
    install_requires=[_torch_requirement(), "numpy"],
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
    options=_out_of_tree_build_options(),
)
