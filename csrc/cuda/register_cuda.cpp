// CUDA kernels: the shared time loops (cuBLAS GEMMs through ATen on the current stream) with the
// pointwise steps launched by csrc/cuda/launch_cuda.cuh.
#include "../sequence/register.h"

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) { fused_rnn::register_sequence_ops(m); }
