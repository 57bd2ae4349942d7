// What every op call shares: turning CUDA errors into exceptions that name the op, making
// the requested device current for the call, and what that device supports.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fusedopt::cuda {

// Throws std::runtime_error("fusedopt cuda <op>: <CUDA's description>"), after clearing
// CUDA's last-error slot so the failure is not reported a second time by someone else.
[[noreturn]] void throw_cuda_error(const char* op, cudaError_t error);

inline void check_cuda(const char* op, cudaError_t error) {
  if (error != cudaSuccess) throw_cuda_error(op, error);
}

// cudaFuncGetAttributes of an optimizer's update kernel (update.cuh) on the current device:
// cudaSuccess when the driver can load fusedopt's kernels there. All kernels are built for
// the same architectures with the same toolkit, so each stands for all.
template <typename Kind> cudaError_t probe_update_kernel();

// Whether launches on `device` may use a 32 KB parameter block: fusedopt was built for
// it, the driver is CUDA 12.1 or newer (minor-version compatibility lets a 12.0 driver
// run a 12.1+ build) and the GPU is Volta or newer. Cached per device; no stream work,
// so it is safe during CUDA-graph capture.
bool supports_large_parameter_blocks(const char* op, int device);

// Makes `device` current for the object's lifetime, then restores the previous device.
class DeviceScope {
 public:
  DeviceScope(const char* op, int device) {
    check_cuda(op, cudaGetDevice(&previous_));
    if (device != previous_) check_cuda(op, cudaSetDevice(device));
    switched_ = device != previous_;
  }
  ~DeviceScope() {
    if (switched_) cudaSetDevice(previous_);  // nothing to report from a destructor
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

// The state of one op call: `device` is current while it lives, launches go to `stream`,
// and errors are reported under the op's name.
class OpCall {
 public:
  OpCall(const char* op, int device, uintptr_t stream)
      : op_(op),
        stream_(reinterpret_cast<cudaStream_t>(stream)),
        device_scope_(op, device),
        large_parameter_blocks_(supports_large_parameter_blocks(op, device)) {}

  const char* op() const { return op_; }
  cudaStream_t stream() const { return stream_; }
  bool large_parameter_blocks() const { return large_parameter_blocks_; }
  // Launch errors (bad configuration, no kernel image) surface here, not at a later sync.
  void check_launch() const { check_cuda(op_, cudaGetLastError()); }

 private:
  const char* op_;
  cudaStream_t stream_;
  DeviceScope device_scope_;
  bool large_parameter_blocks_;
};

}  // namespace fusedopt::cuda
