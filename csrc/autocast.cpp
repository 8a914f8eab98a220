// Autocast (mixed precision) for the ops a user reaches: inside a torch.autocast region every
// floating-point tensor argument is cast to the region's dtype (fp16/bf16) and the op runs there,
// whatever the parameters' dtype, as torch casts its own RNNs (cuDNN's and oneDNN's are on
// autocast's lower-precision list). The casts are recorded by autograd, so gradients reach the
// float32 parameters; autocast's weight cache casts a leaf parameter once per region.
//
// Registered under the Autocast dispatch keys rather than cast in Python, so that torch.compile
// and torch.export see the casts like any other autocast op. The forward and backward ops below
// the sequence ops need no kernel here: the sequence op's cast runs first and the nested calls
// run with autocast excluded, so the ATen products inside never re-cast.
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "op_calls.h"

namespace fused_rnn {
namespace {

using op_calls::OptTensor;
using op_calls::Tensor;

// elman_sequence and gru_sequence take the same arguments (one state h; the last flag is relu or
// reset_after).
using SingleStateSignature = std::tuple<Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
    const OptTensor&, const OptTensor&, const OptTensor&, bool, bool, c10::string_view);
struct ElmanSequence {
  static constexpr const char* name = "fused_rnn::elman_sequence";
  using Signature = SingleStateSignature;
};
struct GruSequence {
  static constexpr const char* name = "fused_rnn::gru_sequence";
  using Signature = SingleStateSignature;
};
struct LstmSequence {
  static constexpr const char* name = "fused_rnn::lstm_sequence";
  using Signature = std::tuple<Tensor, Tensor, Tensor>(
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
      const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
      bool, c10::string_view);
};

// A plain function with the op's signature that calls the op through the dispatcher: what
// ATen's autocast wrapper redispatches to (after excluding the autocast key and casting).
template <class Op, class Signature = typename Op::Signature>
struct Redispatch;
template <class Op, class Ret, class... Args>
struct Redispatch<Op, Ret(Args...)> {
  static Ret call(Args... args) { return op_calls::call<Op>(args...); }
};

// The lower-precision autocast kernel of Op on one device type.
template <class Op, c10::DeviceType device>
constexpr auto lower_precision =
    &at::autocast::WrapFunction<at::autocast::CastPolicy::lower_precision_fp, device,
                                typename Op::Signature, typename Op::Signature,
                                &Redispatch<Op>::call>::type::call;

template <c10::DeviceType device>
void register_autocast(torch::Library& m) {
  m.impl("elman_sequence", lower_precision<ElmanSequence, device>);
  m.impl("lstm_sequence", lower_precision<LstmSequence, device>);
  m.impl("gru_sequence", lower_precision<GruSequence, device>);
  m.impl("linear", lower_precision<op_calls::Linear, device>);
}

}  // namespace
}  // namespace fused_rnn

TORCH_LIBRARY_IMPL(fused_rnn, AutocastCPU, m) {
  fused_rnn::register_autocast<c10::DeviceType::CPU>(m);
}
TORCH_LIBRARY_IMPL(fused_rnn, AutocastCUDA, m) {
  fused_rnn::register_autocast<c10::DeviceType::CUDA>(m);
}
