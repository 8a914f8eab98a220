// The Python extension module fused_rnn._C: importing it loads the operator library (the
// TORCH_LIBRARY registrations run at load time) and exposes what the build was made with.
#include <torch/extension.h>
#include <torch/version.h>

#include <string>

#include "cpu/buffer_pool.h"
#include "fused_rnn/launch.h"

#ifdef FUSED_RNN_WITH_CUDA
#include "sequence/graphed_loop.h"

namespace fused_rnn {
std::string cuda_toolkit_version();
std::string cuda_arch_list();
}  // namespace fused_rnn
#endif

namespace fused_rnn {
// The vectors this CPU's kernels run with: "avx512", "avx2" or "scalar".
std::string cpu_simd_level() {
#ifdef FUSED_RNN_CPU_AVX2
  if (cpu_has_avx512()) return "avx512";
  if (cpu_has_avx2()) return "avx2";
#endif
  return "scalar";
}

// Frees the stepwise loops the CUDA ops captured into graphs (sequence/graphed_loop.h);
// returns the bytes of their buffers (0 in a build without CUDA).
int64_t release_cuda_graphs() {
#ifdef FUSED_RNN_WITH_CUDA
  return release_captured_loops();
#else
  return 0;
#endif
}
}  // namespace fused_rnn

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = TORCH_VERSION;
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  info["compiler"] = std::string("msvc ") + std::to_string(_MSC_VER);
#else
  info["compiler"] = "unknown";
#endif
  // at::parallel_for runs serially in code compiled without OpenMP.
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["cpu_simd"] = fused_rnn::cpu_simd_level();
#ifdef FUSED_RNN_WITH_CUDA
  info["cuda_compiled"] = true;
  info["cuda_version"] = fused_rnn::cuda_toolkit_version();
  info["cuda_archs"] = fused_rnn::cuda_arch_list();
#else
  info["cuda_compiled"] = false;
  info["cuda_version"] = pybind11::none();
  info["cuda_archs"] = "";
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fused_rnn's compiled kernels (ops under torch.ops.fused_rnn)";
  m.def("build_info", &build_info, "What this build of fused_rnn's kernels was compiled with");
  m.def("release_cpu_buffers", &fused_rnn::cpu::release_pooled_buffers,
        "Frees the host memory kept for reuse by the CPU ops; returns the bytes freed");
  // Without the GIL: it waits for each cache's lock and for queued replays, and a thread
  // holding a cache's lock may need the GIL meanwhile (the allocator's Python stack traces).
  m.def("release_cuda_graphs", &fused_rnn::release_cuda_graphs,
        "Frees the stepwise loops the CUDA ops captured into graphs; returns their buffers' bytes",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("cpu_buffer_bytes", &fused_rnn::cpu::pooled_bytes,
        "Bytes of host memory kept for reuse by the CPU ops, not in use");
}
