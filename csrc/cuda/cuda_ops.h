// Host-side API of the CUDA kernels (implemented in csrc/cuda/*.cu). Plain C++: the
// bindings include it without the CUDA headers. Tables live in host memory; the addresses
// in them are device addresses that Python has checked.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fusedopt/adam.h"
#include "fusedopt/rmsprop.h"
#include "fusedopt/sgd.h"
#include "fusedopt/tensor_table.h"

namespace fusedopt::cuda {

// Empty when the CUDA kernels can run on `device`, else a sentence saying why not
// (no driver, driver older than the toolkit, no kernel image for the GPU's architecture).
std::string unusable_reason(int device);

// Each op increments the step counters it uses (kStepRow) on the device and updates all
// tensors of the table in as few launches as the parameter block allows, on `stream`
// (a cudaStream_t as an integer). Errors are thrown as std::runtime_error naming the op.
void adam(const TensorTable& table, DType dtype, const AdamConfig& config, int device, uintptr_t stream);
void sgd(const TensorTable& table, DType dtype, const SGDConfig& config, int device, uintptr_t stream);
void rmsprop(const TensorTable& table, DType dtype, const RMSpropConfig& config, int device, uintptr_t stream);

// The launch plan: how the tensors of a table are cut into chunks and the chunks grouped
// into launches. Pure host code, exposed so the CPU tests can check it.
struct LaunchPlanSummary {
  int64_t launches;
  std::vector<int64_t> tensors_per_launch;
  std::vector<int64_t> chunks_per_launch;
};
LaunchPlanSummary describe_launch_plan(const std::vector<int64_t>& numels, int64_t tensor_lists,
                                       int64_t element_bytes);

}  // namespace fusedopt::cuda
