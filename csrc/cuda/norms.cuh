// The reduction pass of a kind with kNormPass (LAMB) on the GPU: per tensor, the sums of
// Kind::norm_terms' two terms over its elements (LAMB: ||p||^2 and ||u||^2), with the bits of
// the CPU's norms (cpu/update_cpu.h), for every tensor of a table in one pass:
//   1. the prologue (multi_tensor_apply.cuh, next_step) writes each tensor's coefficients for
//      the coming update into the workspace: its counter + 1, the counter left as it is;
//   2. one thread block per kSumBlock elements of a tensor, carried by the multi-tensor
//      launcher, sums its elements' terms lane by lane and adds the lanes by
//      fusedopt/reduce.h's tree, writing the block's two partials;
//   3. block_partials.h adds each tensor's partials in block order.
// Only stream work: no host synchronisation, no memory of its own. CMakeLists.txt
// instantiates it for each optimizer in its generated unit (csrc/cuda/update_unit.cu.in);
// for a kind without a norm pass it only throws.
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/block_partials.h"
#include "cuda/cuda_ops.h"
#include "cuda/element_access.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "fusedopt/int8_states.h"
#include "fusedopt/reduce.h"

namespace fusedopt::cuda {

static_assert(kThreadsPerBlock == kSumLanes, "one thread per lane of reduce.h");

// SS: the states' storage type; kMasterWeights_: a float32 master copy holds the value (as
// UpdateChunkOp: bf16 states differ from the param's type without a master copy).
// kInt8_: the states are 8-bit codes (state_dtype="int8"), each dequantized with its block's
// absmax (fusedopt/int8_states.h), the absmax rows' slots following the others.
template <typename Kind, typename S, typename SS, bool kMasterWeights_ = !std::is_same_v<S, SS>, bool kInt8_ = false>
struct NormChunkOp {
  using Storage = S;
  using T = typename OpMath<S>::type;
  using Coefficients = Scalars<Kind, T>;
  static constexpr bool kMasterWeights = kMasterWeights_;
  // Record slots: param, grad, the tensor's coefficient record, where its block partials go,
  // every state in table order, the float32 master copy with master weights, then the
  // tensor's clip_grad_norm_per_tensor coefficient when the call has them.
  static constexpr int kParamSlot = 0, kGradSlot = 1, kRecordSlot = 2, kPartialsSlot = 3, kStateSlot = 4;
  static constexpr int kMasterSlot = kStateSlot + Kind::kStates;
  static constexpr int kTensorClipSlot = kMasterSlot + int(kMasterWeights);
  static constexpr bool kInt8 = kInt8_;
  static constexpr int kSlots = kMasterSlot + 2 + (kInt8 ? Kind::kStates : 0);
  static_assert(kSlots <= kMaxAddresses, "more addresses than a record carries");
  static constexpr int kMinBlocks = Kind::template min_blocks<S, SS, kMasterWeights>();
  static constexpr int kScalarStates = 0;

  UpdateConfig<Kind> config;
  bool tensor_clip = false;  // the records carry each tensor's clip coefficient (math type T)
  int8_t absmax_slot = -1;   // kInt8: the first state's absmax

  // In the prologue, by the one thread of each tensor: `step` is its counter + 1.
  __device__ __forceinline__ Coefficients coefficients(double step, float* const*) const {
    return scalars<Kind, T>(config, step);
  }

  __device__ __forceinline__ const Prepared<Coefficients>& prepared(const TensorChunk<kSlots>& tensor) const {
    return *static_cast<const Prepared<Coefficients>*>(tensor.address[kRecordSlot]);
  }

  // Lane l sums the terms of the block's elements l, l + kSumLanes, ... in index order (the
  // block starts at a multiple of kSumBlock), as the CPU's lane j % kSumLanes does.
  __device__ __forceinline__ void operator()(const TensorChunk<kSlots>& tensor, const Coefficients& c) const {
    __shared__ double lanes[2][kSumLanes];
    const int lane = int(threadIdx.x);
    GradFactors<T> grad = c.grad;  // with this tensor's clip_grad_norm_per_tensor multiplier, if any
    if (tensor_clip) grad.multiplier = math_value<T>(tensor.address[kTensorClipSlot]);
    const S* param = static_cast<const S*>(tensor.address[kParamSlot]);
    const S* grads = static_cast<const S*>(tensor.address[kGradSlot]);
    const float* master = kMasterWeights ? static_cast<const float*>(tensor.address[kMasterSlot]) : nullptr;
    const SS* states[Kind::kStates];
#pragma unroll
    for (int s = 0; s < Kind::kStates; ++s) states[s] = static_cast<const SS*>(tensor.address[kStateSlot + s]);
    Int8Codes codes{};
    const float* absmax[Kind::kStates] = {};
    if constexpr (kInt8) {
      codes = int8_codes(config.options.int8_tables, config.options.int8_signed, Kind::kStates);
#pragma unroll
      for (int s = 0; s < Kind::kStates; ++s) absmax[s] = static_cast<const float*>(tensor.at(absmax_slot + s));
    }
    double sum_a = 0.0, sum_b = 0.0;
#pragma unroll 4
    for (int64_t j = tensor.begin + lane; j < tensor.end; j += kSumLanes) {
      T values[kMaxStates] = {T(0), T(0), T(0), T(0)};
#pragma unroll
      for (int s = 0; s < Kind::kStates; ++s) {
        if constexpr (kInt8)
          values[s] = dequantized(reinterpret_cast<const uint8_t*>(states[s])[j], absmax[s][j / kQuantBlock], codes.row[s]);
        else
          values[s] = T(to_math(states[s][j]));
      }
      const T p = kMasterWeights ? T(master[j]) : T(to_math(param[j]));
      const T g = unscaled_grad(T(to_math(grads[j])), grad);
      Kind::norm_terms(p, g, values, c.k, sum_a, sum_b);
    }
    lanes[0][lane] = sum_a;
    lanes[1][lane] = sum_b;
    __syncthreads();
    for (int stride = kSumLanes / 2; stride > 0; stride /= 2) {  // lane_tree, one level per barrier
      if (lane < stride) {
        lanes[0][lane] += lanes[0][lane + stride];
        lanes[1][lane] += lanes[1][lane + stride];
      }
      __syncthreads();
    }
    if (lane == 0) {
      double* out = static_cast<double*>(tensor.address[kPartialsSlot]) + 2 * (tensor.begin / kSumBlock);
      out[0] = lanes[0][0];
      out[1] = lanes[1][0];
    }
  }
};

template <typename Kind>
void norms(const char* name, const TensorTable& table, DType dtype, const UpdateConfig<Kind>& config,
           const LaunchResources& resources, uintptr_t partials, int64_t partial_count, uintptr_t out, int device,
           uintptr_t stream) {
  if constexpr (!Kind::kNormPass) {
    throw std::invalid_argument(std::string("fusedopt cuda ") + name + ": this optimizer has no norm pass");
  } else {
    static_assert(Kind::kStates <= 2 && Kind::kStepCounter && Kind::kScalarStates == 0,
                  "the norm pass reads at most two states and a step counter");
    static_assert(Kind::Variants::kAlways == Kind::kAllStates, "the norm pass reads every state");
    if (table.n == 0) return;
    const UpdateOptions& options = config.options;
    if (!is_variant<Kind>(Kind::active_states(config.hyper)))
      throw std::invalid_argument(std::string("fusedopt cuda ") + name + ": these options select states no variant has");
    std::vector<int64_t> first(size_t(table.n) + 1, 0);
    for (int64_t i = 0; i < table.n; ++i) first[size_t(i) + 1] = first[size_t(i)] + sum_blocks(table.numel(i));
    const int64_t blocks = first[size_t(table.n)];
    if (partial_count < 2 * blocks || (blocks > 0 && partials == 0) || out == 0)
      throw std::invalid_argument(std::string("fusedopt cuda ") + name + " norms: the partials buffer needs " +
                                  std::to_string(2 * blocks) + " float64 values, and out " +
                                  std::to_string(2 * table.n));
    // The launcher's table: the table's rows up to the master copy, then the address of each
    // tensor's clip coefficient (clip_grad_norm_per_tensor), then that of its first partials.
    const bool master = options.master_weights && (dtype == DType::Float16 || dtype == DType::BFloat16);
    const bool int8 = options.int8_tables != nullptr;
    if (int8 && (dtype == DType::Float64 || options.bf16_states))
      throw std::invalid_argument(std::string("fusedopt cuda ") + name +
                                  " norms: 8-bit states are for float32 math, not float64 params or bf16 states");
    const int64_t scale_row = scalar_state_row(Kind::kStates, master);  // no scalar states (asserted above)
    const int64_t used_rows = scale_row + (int8 ? Kind::kStates : 0);
    const void* tensor_clip = options.grad_transform.tensor_clip;
    std::vector<int64_t> rows(table.data, table.data + used_rows * table.n);
    const int64_t clip_row = used_rows, partials_row = used_rows + (tensor_clip != nullptr);
    if (tensor_clip != nullptr)
      for (int64_t i = 0; i < table.n; ++i)
        rows.push_back(int64_t(reinterpret_cast<uintptr_t>(math_value_address(tensor_clip, dtype, i))));
    for (int64_t i = 0; i < table.n; ++i)
      rows.push_back(int64_t(partials + uint64_t(2 * first[size_t(i)]) * sizeof(double)));
    const TensorTable carried{rows.data(), table.n};
    const WorkspaceRecords records = workspace_records(name, carried, resources);
    // One launch for the op of the storage types (a lambda beside run_for_storage's, as in
    // update.cuh: GCC mistakes captured parameters' types in nested generic lambdas).
    const auto launch = [&](auto op, const OpCall& call) {
      using Op = decltype(op);
      int64_t slots[Op::kSlots] = {kParamRow, kGradRow, kCoefficientRecord, partials_row};
      int addresses = Op::kStateSlot;
      for (int s = 0; s < Kind::kStates; ++s) slots[addresses++] = kStateRow + s;
      if (Op::kMasterWeights) slots[addresses++] = kStateRow + Kind::kStates;
      if (tensor_clip != nullptr) {
        op.tensor_clip = true;
        slots[addresses++] = clip_row;
      }
      if constexpr (Op::kInt8) {
        op.absmax_slot = int8_t(addresses);
        for (int s = 0; s < Kind::kStates; ++s) slots[addresses++] = scale_row + s;
      }
      PrologueWork work{false, true, false};
      work.next_step = true;
      run_prologue(carried, op, work, records, call);
      multi_tensor_apply(carried, slots, addresses, op, records, kSumBlock * int64_t(sizeof(typename Op::Storage)),
                         call);
      add_block_partials(first, 2, reinterpret_cast<const double*>(partials), reinterpret_cast<double*>(out), call);
    };
    run_for_storage(name, dtype, options.master_weights, options.bf16_states, options.float32_states, device, stream,
                    [&](auto param, auto state, auto master_copy, const OpCall& call) {
      using S = decltype(param);
      using SS = decltype(state);
      constexpr bool kMaster = decltype(master_copy)::value;
      if constexpr (int8_storage<S, SS, kMaster>()) {
        if (int8) return launch(NormChunkOp<Kind, S, SS, kMaster, true>{config}, call);
      } else if (int8) {
        throw std::logic_error("fusedopt cuda: 8-bit states reached a storage without 8-bit kernels");
      }
      launch(NormChunkOp<Kind, S, SS, kMaster, false>{config}, call);
    });
  }
}

}  // namespace fusedopt::cuda

// The instantiation a generated unit (csrc/cuda/update_unit.cu.in) makes.
#define FUSEDOPT_INSTANTIATE_CUDA_NORMS(kind)                                                               \
  template void fusedopt::cuda::norms<fusedopt::optimizers::kind>(                                       \
      const char*, const fusedopt::TensorTable&, fusedopt::DType, const fusedopt::UpdateConfig<fusedopt::optimizers::kind>&, \
      const fusedopt::cuda::LaunchResources&, uintptr_t, int64_t, uintptr_t, int, uintptr_t);
