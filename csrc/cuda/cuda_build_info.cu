// What the CUDA part of this build was compiled with (read by csrc/python_module.cpp).
#include <cuda_runtime_api.h>

#include <string>

namespace fused_rnn {

// Variadic: with several architectures the list has commas (800,900), which a one-argument
// macro would take for several arguments.
#define FUSED_RNN_STR_(...) #__VA_ARGS__
#define FUSED_RNN_STR(...) FUSED_RNN_STR_(__VA_ARGS__)

std::string cuda_toolkit_version() { return std::to_string(CUDART_VERSION); }

// nvcc defines __CUDA_ARCH_LIST__ as the comma-separated list of compute capabilities the file
// is compiled for (e.g. 800,900).
std::string cuda_arch_list() {
#ifdef __CUDA_ARCH_LIST__
  return FUSED_RNN_STR(__CUDA_ARCH_LIST__);
#else
  return "";
#endif
}

}  // namespace fused_rnn
