// CUDA instantiations of the Elman pointwise steps.
#include "fused_rnn/cell_steps.h"
#include "launch_cuda.cuh"

FUSED_RNN_INSTANTIATE_CUDA_STEP(ElmanForwardStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP(ElmanBackwardStep)
