// Whether and how the CUDA kernels can run on a device: unusable_reason for Python's
// backend choice (and `python -m fusedopt`), and the parameter-block size the launcher
// may use.
#include <atomic>
#include <stdexcept>
#include <string>

#include "cuda/cuda_ops.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/launch_plan.h"

#define FUSEDOPT_STRINGIFY_VALUE(...) #__VA_ARGS__
#define FUSEDOPT_STRINGIFY(...) FUSEDOPT_STRINGIFY_VALUE(__VA_ARGS__)

namespace fusedopt::cuda {
namespace {

std::string version_string(int version) {  // 12040 -> "12.4"
  return std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
}

// nvcc's __CUDA_ARCH_LIST__ (e.g. 800,900) as "sm_80, sm_90".
std::string built_architectures() {
#if defined(__CUDA_ARCH_LIST__)
  const std::string list = FUSEDOPT_STRINGIFY(__CUDA_ARCH_LIST__);
  std::string names;
  for (size_t start = 0; start < list.size();) {
    size_t end = list.find(',', start);
    if (end == std::string::npos) end = list.size();
    names += (names.empty() ? "sm_" : ", sm_") + std::to_string(std::stoi(list.substr(start, end - start)) / 10);
    start = end + 1;
  }
  return names;
#else
  return "the architectures in FUSEDOPT_CUDA_ARCHS";
#endif
}

std::string driver_too_old(int driver) {
  return "the NVIDIA driver supports CUDA " + version_string(driver) + ", and fusedopt was built with CUDA " +
         version_string(CUDART_VERSION) + ", which needs a driver for CUDA " + std::to_string(CUDART_VERSION / 1000) +
         ".0 or newer; update the driver, or reinstall fusedopt with a CUDA toolkit the driver supports";
}

// Whether the driver can load fusedopt's kernels on `device`: asks for an update kernel's
// attributes, which loads its module. The driver's version alone does not decide it: with
// CUDA's minor-version compatibility an older driver of the same major version runs the
// machine code (but cannot compile newer PTX, which this probe then reports).
std::string kernel_image_problem(int device, int driver) {
  const DeviceScope scope("unusable_reason", device);
  const cudaError_t error = probe_update_kernel();
  if (error == cudaSuccess) return "";
  cudaGetLastError();
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  const std::string gpu = "GPU " + std::to_string(device) + " (compute capability " + std::to_string(major) + "." +
                          std::to_string(minor) + ")";
  if (error == cudaErrorNoKernelImageForDevice || error == cudaErrorInvalidDeviceFunction)
    return "fusedopt's CUDA kernels were built for " + built_architectures() + ", which cannot run on " + gpu +
           "; reinstall with FUSEDOPT_CUDA_ARCHS=\"" + std::to_string(major) + std::to_string(minor) +
           "-real\" (or a list including it) in the environment of `pip install .`";
  if (error == cudaErrorUnsupportedPtxVersion)
    return "the NVIDIA driver (CUDA " + version_string(driver) + ") is too old to compile the PTX of fusedopt (CUDA " +
           version_string(CUDART_VERSION) + ") for " + gpu +
           ", and there is no machine code for it; update the driver, or reinstall with FUSEDOPT_CUDA_ARCHS=\"" +
           std::to_string(major) + std::to_string(minor) + "-real\"";
  if (error == cudaErrorInsufficientDriver || error == cudaErrorCallRequiresNewerDriver) return driver_too_old(driver);
  return "loading fusedopt's CUDA kernels on " + gpu + " failed: " + cudaGetErrorString(error);
}

}  // namespace

[[noreturn]] void throw_cuda_error(const char* op, cudaError_t error) {
  cudaGetLastError();
  throw std::runtime_error(std::string("fusedopt cuda ") + op + ": " + cudaGetErrorString(error));
}

bool supports_large_parameter_blocks(const char* op, int device) {
#if FUSEDOPT_LARGE_PARAMETER_BLOCKS
  constexpr int kCachedDevices = 64;
  enum : int8_t { kUnknown = 0, kNo = 1, kYes = 2 };
  static std::atomic<int8_t> cache[kCachedDevices];
  const bool cacheable = device >= 0 && device < kCachedDevices;
  if (cacheable) {
    const int8_t known = cache[device].load(std::memory_order_relaxed);
    if (known != kUnknown) return known == kYes;
  }
  // A 12.0 driver runs a 12.1+ build through minor-version compatibility, without the
  // large parameter blocks, which need a 12.1 driver.
  int driver = 0, major = 0;
  check_cuda(op, cudaDriverGetVersion(&driver));
  check_cuda(op, cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  const bool supported = driver >= 12010 && major >= 7;
  if (cacheable) cache[device].store(supported ? kYes : kNo, std::memory_order_relaxed);
  return supported;
#else
  (void)op;
  (void)device;
  return false;
#endif
}

std::string unusable_reason(int device) {
  int driver = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess || driver == 0) {  // 0: libcuda could not be loaded
    cudaGetLastError();
    return "no NVIDIA driver was found; install one (`nvidia-smi` should list the GPU)";
  }
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error == cudaErrorInsufficientDriver) {  // an older major version: no compatibility
    cudaGetLastError();
    return driver_too_old(driver);
  }
  if (error != cudaSuccess) {
    cudaGetLastError();
    return std::string("CUDA reports no usable GPU (") + cudaGetErrorString(error) + "); check `nvidia-smi`";
  }
  if (device < 0 || device >= count)
    return "there is no CUDA device " + std::to_string(device) + " (" + std::to_string(count) + " visible)";
  try {
    return kernel_image_problem(device, driver);
  } catch (const std::runtime_error& e) {  // making the device current failed
    return e.what();
  }
}

}  // namespace fusedopt::cuda
