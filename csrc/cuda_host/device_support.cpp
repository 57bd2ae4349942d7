// The host build's stand-in for csrc/cuda/device_support.cu, which asks the driver about
// real GPUs: here the answers come from the two emulated devices (devices.h). Everything
// else of csrc/cuda is compiled as it is.
#include <stdexcept>
#include <string>

#include "cuda/cuda_ops.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/launch_plan.h"
#include "cuda_host/devices.h"

namespace fusedopt::cuda {

[[noreturn]] void throw_cuda_error(const char* op, cudaError_t error) {
  const std::string message = cudaGetErrorString(error);
  cudaGetLastError();
  throw std::runtime_error(std::string("fusedopt cuda ") + op + ": " + message);
}

bool supports_large_parameter_blocks(const char* op, int device) {
  const cuda_host::DeviceDescription* d = cuda_host::device_description(device);
  if (d == nullptr) throw_cuda_error(op, cudaErrorInvalidDevice);
#if FUSEDOPT_LARGE_PARAMETER_BLOCKS
  return d->parameter_limit > size_t(kClassicParameterLimit);
#else
  return false;
#endif
}

std::string unusable_reason(int device) {
  if (cuda_host::device_description(device) != nullptr) return "";
  return "there is no CUDA device " + std::to_string(device) + " (" + std::to_string(cuda_host::kDeviceCount) +
         " emulated on the host)";
}

}  // namespace fusedopt::cuda
