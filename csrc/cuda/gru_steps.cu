// CUDA instantiations of the GRU pointwise steps (both variants) and of the reset_after GRU's
// persistent kernels (reset_before's: gru_reset_before_persistent.cu).
#include "fused_rnn/cell_steps.h"
#include "launch_cuda.cuh"
#include "persistent.cuh"

FUSED_RNN_INSTANTIATE_CUDA_STEP(GruForwardStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP_FROM_DEVICE(GruForwardStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP(GruBackwardStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP_FROM_DEVICE(GruBackwardStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP(GruResetBeforeGatesStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP(GruResetBeforeStateStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP(GruResetBeforeBackwardZnStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP(GruResetBeforeBackwardRStep)
FUSED_RNN_INSTANTIATE_PERSISTENT(GruForwardStep, GruBackwardStep)
