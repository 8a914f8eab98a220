// CUDA instantiations of the Elman pointwise steps and of its persistent kernels.
#include "fused_rnn/cell_steps.h"
#include "launch_cuda.cuh"
#include "persistent.cuh"

FUSED_RNN_INSTANTIATE_CUDA_STEP(ElmanForwardStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP_FROM_DEVICE(ElmanForwardStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP(ElmanBackwardStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP_FROM_DEVICE(ElmanBackwardStep)
FUSED_RNN_INSTANTIATE_PERSISTENT(ElmanForwardStep, ElmanBackwardStep)
