// CUDA instantiations of the GRU pointwise steps (both variants) and of the persistent kernels
// (reset_after only: reset_before needs a second GEMM between its two pointwise steps).
#include "fused_rnn/cell_steps.h"
#include "launch_cuda.cuh"
#include "persistent.cuh"

FUSED_RNN_INSTANTIATE_CUDA_STEP(GruForwardStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP(GruBackwardStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP(GruResetBeforeGatesStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP(GruResetBeforeStateStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP(GruResetBeforeBackwardZnStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP(GruResetBeforeBackwardRStep)
FUSED_RNN_INSTANTIATE_PERSISTENT(GruForwardStep, GruBackwardStep)
