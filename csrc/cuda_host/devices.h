// The two devices the host build emulates, and the executor's controls for the tests.
// Plain C++ (no CUDA built-ins), so that bindings.cpp can include it through controls.h.
//
// Device 0 is an H100/H200-like GPU (compute capability 9.0) whose driver accepts the
// 32,764-byte kernel parameter blocks of CUDA 12.1+; device 1 is a Pascal GPU (6.0) that
// accepts only the classic 4,096 bytes. Tests pick the launch layout through the device
// index they pass, exactly as the real op decides it per device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_host/runtime_api.h"

namespace fusedopt::cuda_host {

constexpr int kDeviceCount = 2;
constexpr int kDriverVersion = 13000;

struct DeviceDescription {
  int major, minor;
  size_t parameter_limit;  // bytes a kernel's parameters may total
};
// nullptr for an index that names no device.
const DeviceDescription* device_description(int device);

// What one launch asked for, and how many of its blocks ran.
struct LaunchRecord {
  int device;
  unsigned grid[3], block[3];  // x, y, z
  size_t parameter_bytes;
  std::string parameters;  // the kernel's parameter types, demangled
  uint64_t blocks_run;
  cudaError_t error;
};
std::vector<LaunchRecord> launch_log();
void clear_launch_log();

// The order blocks and threads run in: forward (0, 1, ...) or reverse. A kernel whose
// threads share data without a barrier computes something else in one of the two.
void set_reverse_order(bool reverse);

// Runs only the blocks whose linear index is in [first, last) (all others are skipped);
// lets a test run the last block of a tensor past 2^31 elements without touching the rest.
void set_block_window(uint64_t first, uint64_t last);

// Runs one of the executor's own test kernels (selftest.cpp) on `blocks` blocks of 256
// threads of `device` and returns what they wrote; throws std::runtime_error when the
// launch fails.
std::vector<unsigned> run_selftest(const std::string& name, unsigned blocks, int device);

// The shim's 16-bit conversions (the GPU's cvt.rn; builtins.h) over arrays, for the tests
// to compare with torch's.
void float_to_half_bits(const float* in, uint16_t* out, int64_t count);
void float_to_bfloat16_bits(const float* in, uint16_t* out, int64_t count);
void half_bits_to_float(const uint16_t* in, float* out, int64_t count);

}  // namespace fusedopt::cuda_host
