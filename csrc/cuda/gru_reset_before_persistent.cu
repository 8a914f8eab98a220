// CUDA instantiations of the reset_before GRU's persistent kernels (two products and two grid
// barriers a step: persistent_reset_before.cuh), apart from gru_steps.cu so the two compile in
// parallel.
#include "persistent_reset_before.cuh"

FUSED_RNN_INSTANTIATE_RESET_BEFORE()
