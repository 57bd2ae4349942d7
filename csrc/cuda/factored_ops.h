// Host-side API of Adafactor's CUDA kernels (csrc/cuda/factored.cu), apart from cuda_ops.h
// so the element-wise units do not depend on it (as cpu/factored_kernels.h for the CPU).
#pragma once

#include <cstdint>

#include "fusedopt/factored.h"
#include "fusedopt/tensor_table.h"

namespace fusedopt::cuda {

// One step over every tensor of a factored table (fusedopt/factored.h, built and checked by
// fusedopt/_factored.py; host memory, device addresses), the CPU kernel's bits, on `stream`
// without a host sync: the step counters (one launch per tensors a parameter block holds),
// then passes A, tensor, B, scale and C, one launch each for the whole table. The workspace
// (device memory, 16-byte aligned, adafactor_workspace_bytes(table) long, which depends on
// the tensors' shapes) holds the records and partial sums between the launches; the next call
// on the stream may reuse it. Bad sizes in the table or a workspace too small:
// std::invalid_argument before any launch.
int64_t adafactor_workspace_bytes(const TensorTable& table);
void adafactor(const TensorTable& table, DType dtype, const AdafactorOptions& options, uintptr_t workspace,
               int64_t workspace_bytes, int device, uintptr_t stream);

}  // namespace fusedopt::cuda
