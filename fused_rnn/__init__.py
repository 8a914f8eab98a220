"""fused_rnn: fused C++/CUDA kernels for classic recurrent cells, as drop-in torch.nn modules."""
from . import functional, quantization, reference, training
from ._build_info import build_info, release_cpu_buffers, release_cuda_graphs
from .cells import GRUCell, LSTMCell, PeepholeLSTMCell, RNNCell
from .modules import GRU, LSTM, RNN, PeepholeLSTM
from ._dynamo_rnn import allow_fused_modules_in_dynamo

allow_fused_modules_in_dynamo()  # torch.compile may trace our nn.LSTM/GRU/RNN instances

__version__ = "0.1.0"

__all__ = ["RNN", "LSTM", "GRU", "PeepholeLSTM", "RNNCell", "LSTMCell", "GRUCell", "PeepholeLSTMCell",
           "functional", "quantization", "reference", "training", "build_info", "release_cpu_buffers",
           "release_cuda_graphs", "__version__"]
