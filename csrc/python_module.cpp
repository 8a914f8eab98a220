// The Python extension module fused_rnn._C: importing it loads the operator library (the
// TORCH_LIBRARY registrations run at load time) and exposes what the build was made with.
#include <torch/extension.h>
#include <torch/version.h>

#include <string>

#ifdef FUSED_RNN_WITH_CUDA
namespace fused_rnn {
std::string cuda_toolkit_version();
std::string cuda_arch_list();
}  // namespace fused_rnn
#endif

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
}
