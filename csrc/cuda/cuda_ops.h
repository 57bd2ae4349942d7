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
// into launches. Pure host code, exposed so the CPU tests can check it: it runs the
// planner the launcher runs, on a table whose carried rows hold each tensor's index, and
// reports what the filled parameter blocks say. `tensor_lists` is the number of addresses
// each tensor carries (Adam: param, grad, step, exp_avg, exp_avg_sq[, max_exp_avg_sq]);
// `large_parameter_block` describes a GPU and driver that accept 32 KB parameter blocks
// (false: the classic 4 KB layout every GPU accepts).
struct LaunchPlanSummary {
  int64_t launches = 0;
  std::vector<int64_t> tensors_per_launch;
  std::vector<int64_t> chunks_per_launch;
  int64_t chunk_elements = 0;         // elements per chunk (one thread block each)
  int64_t parameter_block_limit = 0;  // bytes the kernel's parameters may total: 4096 or 32764
  std::vector<int64_t> parameter_bytes_per_launch;  // bytes of that limit each launch fills
  // For every tensor each launch carries, launch by launch: its index in `numels`, and the
  // first block of the launch's grid that updates it (its chunks are consecutive blocks).
  std::vector<int64_t> tensor_index;
  std::vector<int64_t> first_chunk;
};
LaunchPlanSummary describe_launch_plan(const std::vector<int64_t>& numels, int64_t tensor_lists,
                                       int64_t element_bytes, bool large_parameter_block = true);

}  // namespace fusedopt::cuda
