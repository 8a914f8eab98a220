// What the CUDA part of this build was compiled with (read by csrc/python_module.cpp).
#include <cuda_runtime_api.h>

#include <string>

namespace fused_rnn {

#define FUSED_RNN_STR_(x) #x
#define FUSED_RNN_STR(x) FUSED_RNN_STR_(x)

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
