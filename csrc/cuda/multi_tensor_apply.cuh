// The multi-tensor launcher: runs an op over every chunk of every tensor of a table in as
// few kernel launches as the parameter block allows (launch_plan.h plans them), with only
// stream work, no host synchronisation and no memory of its own (the coefficient records
// live in the workspace Python passes), so a whole step can be captured in a CUDA graph.
//
// A step is two kernels. The prologue kernel (a thread per tensor) advances the step
// counters and computes the update's coefficients once (Adam: per tensor, from its step;
// the others: once for the launch) from what only the device knows: the counters,
// GradScaler's scale and found_inf, the clip coefficient, a learning rate given as a
// tensor. It writes them as Prepared records. Every block of the update kernel then reads
// its record: no block recomputes them, and none waits at a barrier for one thread to.
// SGD with none of those device values skips the prologue: its host computes the record.
//
// An op (update.cuh's UpdateChunkOp) is a small struct, passed by value as both kernels'
// second parameter, with
//   using Storage = <the param dtype: float, double, Half or BFloat16>;
//   using Coefficients = <what the update needs: Scalars<Kind, T>>;
//   static constexpr int kSlots = <most addresses a tensor's record carries>;
//   static constexpr int kMinBlocks = <the update kernel's launch bound: Kind::min_blocks>;
//   static constexpr int kScalarStates = <per-tensor float32 scalars the prologue advances>;
//   __device__ Coefficients coefficients(double step, float* const* scalars) const;  // in the prologue
//   __device__ const Prepared<Coefficients>& prepared(const TensorChunk<kSlots>&) const;
//   __device__ void operator()(const TensorChunk<kSlots>&, const Coefficients&) const;
// and a member `config` whose options.grad_transform says whether the step is skipped.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/cuda_ops.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/launch_plan.h"
#include "fusedopt/tensor_table.h"

namespace fusedopt::cuda {

// What a block hands its op: one tensor's addresses, in the order of the slots the launcher
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

// The prologue's result for one tensor, or for a whole launch: the coefficients, and
// whether GradScaler found an inf or NaN (then nothing is updated and the coefficients
// are not computed).
template <typename Coefficients>
struct Prepared {
  Coefficients coefficients;
  int32_t skip;
};

// A launch-wide record: the prologue's, in the workspace, or the one the host computed
// (SGD without device values), which travels in the kernel's parameters.
template <typename Coefficients>
struct SharedPrepared {
  const Prepared<Coefficients>* device = nullptr;
  Prepared<Coefficients> host = {};

  __device__ __forceinline__ const Prepared<Coefficients>& get() const { return device != nullptr ? *device : host; }
};

// The records in a call's workspace: the launch-wide one, then one per table column.
struct WorkspaceRecords {
  uintptr_t base;
  void* shared() const { return reinterpret_cast<void*>(base); }
  void* tensor(int64_t column) const { return reinterpret_cast<void*>(base + (column + 1) * kWorkspaceBytesPerTensor); }
};

template <typename Op, int64_t kParameterLimit>
__global__ void __launch_bounds__(kThreadsPerBlock, Op::kMinBlocks)
    multi_tensor_kernel(const __grid_constant__ MultiTensorArgs<kParameterLimit> args, const __grid_constant__ Op op) {
  const uint32_t chunk = blockIdx.x;
  const int t = args.tensor_of_chunk(chunk);
  TensorChunk<Op::kSlots> tensor;
#pragma unroll
  for (int slot = 0; slot < Op::kSlots; ++slot)
    tensor.address[slot] = slot < args.addresses() ? reinterpret_cast<void*>(args.address(t, slot)) : nullptr;
  tensor.begin = int64_t(chunk - args.first_chunk(t)) * args.chunk_elements;
  const int64_t numel = args.numel(t);
  tensor.end = tensor.begin + args.chunk_elements < numel ? tensor.begin + args.chunk_elements : numel;
  const Prepared<typename Op::Coefficients>& prepared = op.prepared(tensor);
  if (prepared.skip) return;  // the same for every thread of the block
  const typename Op::Coefficients coefficients = prepared.coefficients;  // once, into registers
  op(tensor, coefficients);
}

constexpr int kPrologueThreadsPerBlock = 128;

// A skipped step computes nothing: the tensor's scalar states, like its counter, stay.
template <typename Op>
__device__ __forceinline__ void prepare(void* record, const Op& op, bool skip, double step, float* const* scalars) {
  auto* out = static_cast<Prepared<typename Op::Coefficients>*>(record);
  out->skip = skip;
  if (!skip) out->coefficients = op.coefficients(step, scalars);
}

// Pointers per tensor in PrologueArgs::counters: the step counter, then the scalar states.
template <typename Op>
constexpr int kProloguePointers = 1 + Op::kScalarStates;

// Thread i advances tensor i's counter (unless the step is skipped) and, when the launch has
// per-tensor records, writes that tensor's, advancing its scalar states (the only thread
// that touches them: the update kernel reads only the record); thread 0 writes the
// launch-wide record. With args.next_step (a norm pass, cuda/norms.cuh) thread i leaves
// the counter as it is and writes the record of the coming update, from the counter + 1,
// as the CPU's norms do; it is written even when GradScaler will skip that update, since
// the CPU's norms are computed all the same.
template <typename Op, int64_t kParameterLimit>
__global__ void __launch_bounds__(kPrologueThreadsPerBlock)
    prologue_kernel(const __grid_constant__ PrologueArgs<kParameterLimit> args, const __grid_constant__ Op op) {
  const int i = int(blockIdx.x) * kPrologueThreadsPerBlock + int(threadIdx.x);
  const bool skip = !args.next_step && step_skipped(op.config.options.grad_transform);
  if (i == 0 && args.shared != nullptr) prepare(args.shared, op, skip, 0.0, nullptr);
  if (i >= args.count) return;
  float* const* pointers = args.counters + int64_t(i) * kProloguePointers<Op>;
  float* step = pointers[0];
  if (!skip && !args.next_step) *step += 1.0f;
  if (args.per_tensor != nullptr)
    prepare(static_cast<char*>(args.per_tensor) + int64_t(i) * kWorkspaceBytesPerTensor, op, skip,
            args.next_step ? double(*step) + 1.0 : double(*step), pointers + 1);
}

// What the prologue does for one call.
struct PrologueWork {
  bool advance_steps;  // Adam, RMSprop: every tensor's counter (empty tensors' too: torch advances them)
  bool per_tensor;     // Adam: a record per tensor, from its advanced counter
  bool shared;         // a launch-wide record
  int64_t scalar_row = 0;  // the first scalar-state row of the table (kinds with kScalarStates)
  // A norm pass: per-tensor records for the coming update (counter + 1), no counter advanced
  // (advance_steps false, per_tensor true, no scalar states).
  bool next_step = false;
  // Whether the prologue visits every tensor (a thread each), not only the launch-wide record.
  bool per_column() const { return advance_steps || per_tensor; }
};

template <typename Op, int64_t kParameterLimit>
void prologue_with(const TensorTable& table, const Op& op, const PrologueWork& work, const WorkspaceRecords& records,
                   const OpCall& call) {
  using Args = PrologueArgs<kParameterLimit>;
  constexpr int kPointers = kProloguePointers<Op>;
  constexpr int64_t kTensors = Args::kCapacity / kPointers;  // tensors one launch carries
  const int64_t columns = work.per_column() ? table.n : 0;
  for (int64_t first = 0; first == 0 || first < columns; first += kTensors) {
    Args args;  // only counters[0 .. count * kPointers) is meaningful
    args.count = int32_t(columns - first < kTensors ? columns - first : kTensors);
    args.next_step = work.next_step;
    args.per_tensor = work.per_tensor ? records.tensor(first) : nullptr;
    args.shared = work.shared && first == 0 ? records.shared() : nullptr;
    for (int32_t i = 0; i < args.count; ++i) {
      args.counters[i * kPointers] = table.ptr<float>(kStepRow, first + i);
      for (int j = 1; j < kPointers; ++j) args.counters[i * kPointers + j] = table.ptr<float>(work.scalar_row + j - 1, first + i);
    }
    const int threads = args.count > 0 ? args.count : 1;
    const unsigned blocks = unsigned((threads + kPrologueThreadsPerBlock - 1) / kPrologueThreadsPerBlock);
    prologue_kernel<Op, kParameterLimit><<<blocks, kPrologueThreadsPerBlock, 0, call.stream()>>>(args, op);
    call.check_launch();
  }
}

// Queues the prologue before the update on the call's stream: every block of the update
// then reads finished records and advanced counters, and none races with the prologue.
template <typename Op>
void run_prologue(const TensorTable& table, const Op& op, const PrologueWork& work, const WorkspaceRecords& records,
                  const OpCall& call) {
  static_assert(sizeof(Op) <= kOpParameterBytes, "the op's parameters outgrow their share of the block");
  static_assert(sizeof(Prepared<typename Op::Coefficients>) <= kWorkspaceBytesPerTensor,
                "a coefficient record outgrows its share of the workspace");
#if FUSEDOPT_LARGE_PARAMETER_BLOCKS
  if (call.large_parameter_blocks() && work.per_column() &&
      table.n > PrologueArgs<kClassicParameterLimit>::kCapacity / kProloguePointers<Op>) {
    prologue_with<Op, kLargeParameterLimit>(table, op, work, records, call);
    return;
  }
#endif
  prologue_with<Op, kClassicParameterLimit>(table, op, work, records, call);
}

// The workspace of a call, checked: it must hold a launch-wide record and one per tensor.
inline WorkspaceRecords workspace_records(const char* op, const TensorTable& table, const LaunchResources& resources) {
  if (resources.workspace == 0 || resources.workspace % 16 != 0 ||
      resources.workspace_bytes < workspace_bytes(table.n))
    throw std::invalid_argument(std::string("fusedopt cuda ") + op + ": the workspace must be 16-byte aligned and " +
                                std::to_string(workspace_bytes(table.n)) + " bytes long for " +
                                std::to_string(table.n) + " tensors");
  return WorkspaceRecords{resources.workspace};
}

// The frame of every optimizer's entry point: on `device` and `stream`, with errors naming
// `op`, calls body(ParamStorage{}, StateStorage{}, master copy flag, call) for the table's
// storage types (fusedopt/common.h's dispatch_storage).
template <typename Body>
void run_for_storage(const char* op, DType dtype, bool master_weights, bool bf16_states, bool float32_states, int device,
                     uintptr_t stream, Body&& body) {
  const OpCall call(op, device, stream);
  if (!dispatch_storage(dtype, master_weights, bf16_states, float32_states,
                        [&](auto param, auto state, auto master) { body(param, state, master, call); }))
    throw std::invalid_argument(std::string("fusedopt cuda ") + op + ": unknown dtype code");
}

// A slot of a tensor's record: a table row, kCoefficientRecord for the tensor's Prepared
// record in the workspace, or kColumnIndex.
constexpr int64_t kCoefficientRecord = -1;
// A slot that carries the tensor's table column itself, not an address (the rounding key of
// bf16_stochastic_round mixes in the tensor's index in the call).
constexpr int64_t kColumnIndex = -2;

// Runs `op` over every element of every tensor of `table`, in chunks of `chunk_bytes` (0:
// the default) of each param-dtype list. Each tensor's record carries slots[0 ..
// addresses), which the op sees in that order.
template <typename Op>
void multi_tensor_apply(const TensorTable& table, const int64_t* slots, int addresses, const Op& op,
                        const WorkspaceRecords& records, int64_t chunk_bytes, const OpCall& call) {
  static_assert(sizeof(Op) <= kOpParameterBytes, "the op's parameters outgrow their share of the block");
  static_assert(std::is_trivially_copyable_v<Op>, "an op travels by value in the parameter block");
  if (addresses > Op::kSlots) throw std::invalid_argument("fusedopt cuda: more addresses than the op has slots");
  const int64_t chunk = chunk_elements(chunk_bytes > 0 ? chunk_bytes : kDefaultChunkBytes, sizeof(typename Op::Storage));
  const auto address_of = [&](int64_t i, int slot) -> uint64_t {
    return slots[slot] == kCoefficientRecord ? uint64_t(reinterpret_cast<uintptr_t>(records.tensor(i)))
           : slots[slot] == kColumnIndex     ? uint64_t(i)
                                             : uint64_t(table.data[slots[slot] * table.n + i]);
  };
  const auto launch = [&](const auto& args) {
    constexpr int64_t kLimit = std::decay_t<decltype(args)>::kLimit;
    multi_tensor_kernel<Op, kLimit><<<args.chunks, kThreadsPerBlock, 0, call.stream()>>>(args, op);
    call.check_launch();
  };
#if FUSEDOPT_LARGE_PARAMETER_BLOCKS
  if (call.large_parameter_blocks() && needs_large_parameter_block(table, addresses, chunk)) {
    plan_launches<kLargeParameterLimit>(table, address_of, addresses, chunk, launch);
    return;
  }
#endif
  plan_launches<kClassicParameterLimit>(table, address_of, addresses, chunk, launch);
}

}  // namespace fusedopt::cuda
