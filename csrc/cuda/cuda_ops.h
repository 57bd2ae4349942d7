// Host-side API of the CUDA kernels (implemented in csrc/cuda/*.cu). Plain C++: the
// bindings include it without the CUDA headers. Tables live in host memory; the addresses
// in them are device addresses that Python has checked.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fusedopt/optimizer.h"
#include "fusedopt/sparse_rows.h"
#include "fusedopt/tensor_table.h"

namespace fusedopt::cuda {

// Empty when the CUDA kernels can run on `device`, else a sentence saying why not: no
// driver, a driver too old for this build's CUDA major version, or no kernel the driver
// can load for the GPU (no machine code for its architecture and PTX the driver is too
// old to compile). Decided by loading an update kernel, so a driver older than the
// toolkit that can run the machine code (CUDA's minor-version compatibility) is accepted.
std::string unusable_reason(int device);

// What an op call gets besides the table and the config (fusedopt/backends/native.py
// provides it): device memory the op's prologue kernel writes the update's coefficients
// into (see multi_tensor_apply.cuh), and the chunk size. The workspace belongs to the
// call's stream: the next call on that stream may reuse it.
constexpr int64_t kWorkspaceBytesPerTensor = 128;  // one coefficient record
struct LaunchResources {
  uintptr_t workspace = 0;    // device address, 16-byte aligned, `workspace_bytes` long
  int64_t workspace_bytes = 0;
  int64_t chunk_bytes = 0;    // bytes of each param-dtype list one thread block updates (0: the default)
};
// Workspace bytes a call on a table of `tensors` tensors needs: a launch-wide record, then
// one record per tensor.
inline int64_t workspace_bytes(int64_t tensors) { return (tensors + 1) * kWorkspaceBytesPerTensor; }
// The chunk size calls use unless told otherwise (launch_plan.h says why this one).
int64_t default_chunk_bytes();

// update<Kind> (cuda/update.cuh, instantiated for every optimizer of the generated list)
// advances the step counters the optimizer keeps (kStepRow) on the device and updates all
// tensors of the table in as few launches as the parameter block allows, on `stream` (a
// cudaStream_t as an integer). Errors are thrown as std::runtime_error naming the op
// (`name`, the optimizer's kind); bad arguments (a workspace too small, a chunk size that
// is no multiple of 4 KB) as std::invalid_argument, before anything is launched.
template <typename Kind>
void update(const char* name, const TensorTable& table, DType dtype, const UpdateConfig<Kind>& config,
            const LaunchResources& resources, int device, uintptr_t stream);

// norms<Kind> (cuda/norms.cuh, instantiated beside update<Kind>): the reduction pass of a kind
// with kNormPass (LAMB), for the update that follows: per tensor i, the sums of the kind's two
// norm terms over its elements into out[2i] and out[2i + 1] (device memory, 2 * table.n float64),
// with the bits of the CPU's norms (cpu/update_cpu.h). The coefficients are those of the
// coming update (each step counter + 1; no counter advances), written by a prologue into
// `resources.workspace`; block partials go to `partials` (device memory, at least
// 2 * sum of sum_blocks(numel) float64 values). options.tensor_scale is not read. A kind
// without a norm pass throws std::invalid_argument, as do bad buffers, before any launch.
template <typename Kind>
void norms(const char* name, const TensorTable& table, DType dtype, const UpdateConfig<Kind>& config,
           const LaunchResources& resources, uintptr_t partials, int64_t partial_count, uintptr_t out, int device,
           uintptr_t stream);

// Sums of squares of every tensor of a table whose rows are (numel, address), one float64 per
// tensor into `out` (device memory, table.n values), in fusedopt/reduce.h's order (the CPU
// kernel's bits): block partials go to `partials` (device memory, at least
// sum of sum_blocks(numel) float64 values), then each tensor's are added in block order.
void sum_of_squares_per_tensor(const TensorTable& table, DType dtype, uintptr_t partials, int64_t partial_count,
                               uintptr_t out, int device, uintptr_t stream);

// Lazy (sparse-row) Adam (csrc/cuda/sparse_adam.cu): one step over every tensor of a
// sparse-row table (fusedopt/sparse_rows.h; host memory, device addresses Python has
// checked, row indices included), the CPU kernel's bits. On `stream`: advances every step
// counter, then updates the present rows of all tensors in one launch. lr is `lr`, or the
// float64 at device address `lr_tensor` when that is not null, read on the device. The
// workspace (device memory, 16-byte aligned, sparse_adam_workspace_bytes(table.n) long)
// holds each tensor's coefficients and addresses for the launch; the next call on the
// stream may reuse it. float32 and float64 only: anything else, or a workspace too small, is
// std::invalid_argument before anything is launched.
constexpr int64_t kSparseRecordBytes = 160;  // one tensor's record
inline int64_t sparse_adam_workspace_bytes(int64_t tensors) { return tensors * (kSparseRecordBytes + 8); }
void sparse_adam(const sparse_rows::Table& table, DType dtype, const optimizers::adam::Hyper& hyper, double lr,
                 const double* lr_tensor, uintptr_t workspace, int64_t workspace_bytes, int device,
                 uintptr_t stream);

// The launch plan: how the tensors of a table are cut into chunks and the chunks grouped
// into launches. Pure host code, exposed so the CPU tests can check it: it runs the
// planner the launcher runs, on a table whose carried rows hold each tensor's index, and
// reports what the filled parameter blocks say. `tensor_lists` is the number of addresses
// each tensor carries (param, grad, Adam's coefficient record, the states...);
// `large_parameter_block` describes a GPU and driver that accept 32 KB parameter blocks
// (false: the classic 4 KB layout every GPU accepts); `chunk_bytes` 0 means the default.
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
                                       int64_t element_bytes, bool large_parameter_block = true,
                                       int64_t chunk_bytes = 0);

}  // namespace fusedopt::cuda
