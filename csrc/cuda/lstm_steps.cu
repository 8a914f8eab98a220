// CUDA instantiations of the LSTM pointwise steps (peepholes and projection included) and of the
// persistent kernels (without projection).
#include "fused_rnn/cell_steps.h"
#include "launch_cuda.cuh"
#include "persistent.cuh"

FUSED_RNN_INSTANTIATE_CUDA_STEP(LstmForwardStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP_FROM_DEVICE(LstmForwardStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP(LstmBackwardStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP_FROM_DEVICE(LstmBackwardStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP(MaskedStateStep)
FUSED_RNN_INSTANTIATE_CUDA_STEP(ProjectionCarryStep)
FUSED_RNN_INSTANTIATE_PERSISTENT(LstmForwardStep, LstmBackwardStep)
