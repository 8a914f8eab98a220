// CPU kernels: the shared time loops with the at::parallel_for pointwise launcher.
#include "../sequence/register.h"

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) { fused_rnn::register_sequence_ops(m); }
