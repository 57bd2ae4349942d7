// The multi-tensor launcher: runs an op over every chunk of every tensor of a table in as
// few kernel launches as the parameter block allows (launch_plan.h plans them), with
// no device memory, no host synchronisation and only stream work, so a whole step can be
// captured in a CUDA graph.
//
// An op is a small struct, passed by value as the kernel's second parameter, with
//   using Storage = <the param dtype: float, double, Half or BFloat16>;
//   static constexpr int kSlots = <most addresses a tensor's record carries>;
//   __device__ void operator()(const TensorChunk<kSlots>&) const;   // called by every thread
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/cuda_utils.cuh"
#include "cuda/launch_plan.h"
#include "fusedopt/tensor_table.h"

namespace fusedopt::cuda {

// What a block hands its op: one tensor's addresses, in the order of the rows the launcher
// was given (nullptr in the slots a shorter record leaves out), and the element range of
// the block's chunk.
template <int kSlots>
struct TensorChunk {
  void* address[kSlots];
  int64_t begin, end;

  // address[slot] for a slot known only at run time, as selects: indexing the array with
  // a run-time value would move it to local memory.
  __device__ __forceinline__ void* at(int slot) const {
    void* found = nullptr;
#pragma unroll
    for (int s = 0; s < kSlots; ++s) found = s == slot ? address[s] : found;
    return found;
  }
};

template <typename Op, int64_t kParameterLimit>
__global__ void __launch_bounds__(kThreadsPerBlock)
    multi_tensor_kernel(const __grid_constant__ MultiTensorArgs<kParameterLimit> args, const __grid_constant__ Op op) {
  constexpr int64_t kChunkElements = chunk_elements(sizeof(typename Op::Storage));
  const uint32_t chunk = blockIdx.x;
  const int t = args.tensor_of_chunk(chunk);
  TensorChunk<Op::kSlots> tensor;
#pragma unroll
  for (int slot = 0; slot < Op::kSlots; ++slot)
    tensor.address[slot] = slot < args.addresses() ? reinterpret_cast<void*>(args.address(t, slot)) : nullptr;
  tensor.begin = int64_t(chunk - args.first_chunk(t)) * kChunkElements;
  const int64_t numel = args.numel(t);
  tensor.end = tensor.begin + kChunkElements < numel ? tensor.begin + kChunkElements : numel;
  op(tensor);
}

// The coefficients of a block's update, computed once by thread 0 and shared: they depend
// on device memory (the step counter, GradScaler's scale, the clip coefficient), which one
// thread reads instead of all. Returns false, in every thread, when GradScaler found an
// inf or NaN: the step is skipped. Every thread of the block must call it.
template <typename Coefficients, typename Make>
__device__ __forceinline__ bool block_coefficients(const GradTransform& transform, const Make& make,
                                                   Coefficients& coefficients) {
  // Raw storage: a __shared__ variable cannot have a constructor run for it.
  alignas(Coefficients) __shared__ unsigned char shared[sizeof(Coefficients)];
  __shared__ bool skipped;
  if (threadIdx.x == 0) {
    skipped = step_skipped(transform);
    if (!skipped) new (shared) Coefficients(make());
  }
  __syncthreads();
  if (skipped) return false;
  coefficients = *reinterpret_cast<const Coefficients*>(shared);
  return true;
}

// Adds 1 to the float32 step counter (row kStepRow) of every tensor of the table, unless
// GradScaler skips the step, in a kernel of its own queued before the update: every block
// of the update then reads the incremented counter, and none races with the increment.
void increment_step_counters(const TensorTable& table, const GradTransform& transform, const OpCall& call);

// The frame of every optimizer's entry point: on `device` and `stream`, with errors naming
// `op`, calls body(ParamStorage{}, StateStorage{}, call) for the table's storage types.
template <typename Body>
void run_for_storage(const char* op, DType dtype, bool master_weights, int device, uintptr_t stream, Body&& body) {
  const OpCall call(op, device, stream);
  if (!dispatch_storage(dtype, master_weights, [&](auto param, auto state) { body(param, state, call); }))
    throw std::invalid_argument(std::string("fusedopt cuda ") + op + ": unknown dtype code");
}

// Runs `op` over every element of every tensor of `table`. Each tensor's record carries the
// table rows rows[0 .. addresses), which the op sees as its slots in that order.
template <typename Op>
void multi_tensor_apply(const TensorTable& table, const int64_t* rows, int addresses, const Op& op,
                        const OpCall& call) {
  static_assert(sizeof(Op) <= kOpParameterBytes, "the op's parameters outgrow their share of the block");
  static_assert(std::is_trivially_copyable_v<Op>, "an op travels by value in the parameter block");
  constexpr int64_t element_bytes = sizeof(typename Op::Storage);
  if (addresses > Op::kSlots) throw std::invalid_argument("fusedopt cuda: more addresses than the op has slots");
  const auto launch = [&](const auto& args) {
    constexpr int64_t kLimit = std::decay_t<decltype(args)>::kLimit;
    multi_tensor_kernel<Op, kLimit><<<args.chunks, kThreadsPerBlock, 0, call.stream()>>>(args, op);
    call.check_launch();
  };
#if FUSEDOPT_LARGE_PARAMETER_BLOCKS
  if (call.large_parameter_blocks() && needs_large_parameter_block(table, addresses, element_bytes)) {
    plan_launches<kLargeParameterLimit>(table, rows, addresses, element_bytes, launch);
    return;
  }
#endif
  plan_launches<kClassicParameterLimit>(table, rows, addresses, element_bytes, launch);
}

}  // namespace fusedopt::cuda
