// CUDA instantiations of the LSTM pointwise steps (peepholes and projection included).
#include "fused_rnn/cell_steps.h"
#include "launch_cuda.cuh"

FUSED_RNN_INSTANTIATE_CUDA_STEP(LstmForwardStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP(LstmBackwardStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP(MaskedStateStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP(ProjectionCarryStep)
