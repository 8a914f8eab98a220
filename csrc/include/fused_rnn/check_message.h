// The text of the argument checks' error messages, built without iostreams:
//   TORCH_CHECK(ok, message("fused_rnn: h0 must have shape ", shape, ", got ", h0.sizes()));
//
// Why: on the GPU machine (torch 2.11, the extension built there with /opt/gcc's g++), a
// TORCH_CHECK whose message streamed a number, or a shape (which streams numbers), crashed the
// process with a segmentation fault inside c10::str's std::ostringstream instead of raising,
// while messages made of strings alone raised as they should (two GPU runs of
// tools/gpu_check.sh, benchmarks/results/GPU_RUNS.md). So every check hands TORCH_CHECK one string: numbers go through
// std::to_string, shapes are written "[2, 3]", dtypes and devices by c10's own names.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <string>
#include <type_traits>

namespace fused_rnn {
namespace message_parts {

inline std::string text(const char* part) { return part; }
inline std::string text(const std::string& part) { return part; }
inline std::string text(c10::ScalarType dtype) { return c10::toString(dtype); }
inline std::string text(const c10::Device& device) { return device.str(); }

inline std::string text(c10::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

template <class Number, std::enable_if_t<std::is_arithmetic_v<Number>, int> = 0>
std::string text(Number value) {
  return std::to_string(value);
}

}  // namespace message_parts

// The parts (strings, numbers, shapes, dtypes, devices) written one after another.
template <class... Parts>
std::string message(const Parts&... parts) {
  return (std::string() + ... + message_parts::text(parts));
}

}  // namespace fused_rnn
