// Any optimizer (fusedopt/optimizer.h's traits) on the GPU: the op that applies its
// update to one chunk, and the entry point that queues the prologue (step counters and
// coefficient records) and the update. CMakeLists.txt instantiates it for each optimizer
// in a generated unit (csrc/cuda/update_unit.cu.in).
//
// The coefficients need a prologue kernel when they depend on values only the device
// knows: per tensor when they follow its step counter (Adam's bias corrections), once for
// the launch when the step counters must advance (RMSprop) or the call reads GradScaler's
// scale or found_inf, the clip coefficient or a tensor learning rate. Otherwise (SGD
// without those) the host computes the launch-wide record and it travels in the kernel's
// parameters.
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/cuda_ops.h"
#include "cuda/element_access.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "cuda/update_int8.cuh"

namespace fusedopt::cuda {
namespace detail {

// Calls f(std::integral_constant<int, 0>{}), ..., up to N - 1.
template <typename F, int... kIndex>
__host__ __device__ __forceinline__ void for_each_index(F&& f, std::integer_sequence<int, kIndex...>) {
  (f(std::integral_constant<int, kIndex>{}), ...);
}
template <int N, typename F>
__host__ __device__ __forceinline__ void for_each_index(F&& f) {
  for_each_index(f, std::make_integer_sequence<int, N>{});
}

}  // namespace detail

// SS: the states' storage type; kMasterWeights_: a float32 master copy holds the value
// (fusedopt/common.h's dispatch_storage). kStochastic_: bf16 params without a master copy
// rounded stochastically (bf16_stochastic_round; UpdateOptions::round_seed), each tensor's
// record then carrying its table column (`column_slot`), which its rounding key mixes in.
template <typename Kind, typename S, typename SS, bool kMasterWeights_ = !std::is_same_v<S, SS>,
          bool kStochastic_ = false>
struct UpdateChunkOp {
  using Storage = S;
  using T = typename OpMath<S>::type;
  using Coefficients = Scalars<Kind, T>;
  static constexpr bool kMasterWeights = kMasterWeights_;
  static constexpr bool kStochastic = kStochastic_;
  static_assert(!kStochastic || (std::is_same_v<S, BFloat16> && !kMasterWeights), "stochastic rounding: bf16 params");
  using MasterStorage = std::conditional_t<kMasterWeights, float, SS>;
  static constexpr bool kPerTensorRecord = Kind::kStepDependent;
  static constexpr int kScalarStates = Kind::kScalarStates;
  // Record slots: param, grad, the tensor's coefficient record (kPerTensorRecord), the
  // active states in table order, then the float32 master copy with master weights.
  static constexpr int kParamSlot = 0, kGradSlot = 1, kStateSlot = 2 + int(kPerTensorRecord);
  // One more slot for the tensor's clip_grad_norm_per_tensor coefficient, when the call has
  // them, and one for its tensor scale (kinds with kTensorScale: LAMB's trust ratio). The
  // column of a stochastic rounding takes the master copy's slot (the two never meet).
  static constexpr int kSlots = kStateSlot + Kind::kStates + 2 + int(Kind::kTensorScale);
  static_assert(kSlots <= kMaxAddresses, "more addresses than a record carries");
  // Element lists: param, grad, every state (inactive ones neither loaded nor stored), master.
  static constexpr int kParam = 0, kGrad = 1, kState = 2, kMaster = kState + Kind::kStates;
  static constexpr int kLists = kMaster + 1;
  static constexpr int kMinBlocks = Kind::template min_blocks<S, SS, kMasterWeights>();

  UpdateConfig<Kind> config;
  // The launch-wide record, which a kind with per-tensor records never reads: it then takes
  // no room in the parameter block (a float64 record is most of kOpParameterBytes).
  struct NoSharedRecord {};
  std::conditional_t<kPerTensorRecord, NoSharedRecord, SharedPrepared<Coefficients>> shared;
  // Slots (below kMaxAddresses) as bytes: the op travels in the parameter block, in
  // kOpParameterBytes.
  int8_t tensor_clip_slot = -1;   // the slot of the tensor's clip coefficient, math type T (-1: none)
  int8_t tensor_scale_slot = -1;  // the slot of the tensor's float64 scale (-1: none)
  int8_t column_slot = -1;        // kStochastic: the slot holding the tensor's table column

  // In the prologue, by the one thread of this tensor (or of the launch-wide record, with no
  // scalar states): `scalar_states` are the tensor's Kind::kScalarStates scalars.
  __device__ __forceinline__ Coefficients coefficients(double step, float* const* scalar_states) const {
    return scalars<Kind, T>(config, step, scalar_states);
  }

  __device__ __forceinline__ const Prepared<Coefficients>& prepared(const TensorChunk<kSlots>& tensor) const {
    if constexpr (kPerTensorRecord) return *static_cast<const Prepared<Coefficients>*>(tensor.address[2]);
    else return shared.get();
  }

  __device__ __forceinline__ void operator()(const TensorChunk<kSlots>& tensor, const Coefficients& c) const {
    const UpdateOptions& options = config.options;
    const uint32_t active = Kind::active_states(config.hyper);
    const bool first_step = skips_state_loads<Kind>(options);
    ElementLists<S, SS, kLists, MasterStorage> lists;
    lists.set(kParam, tensor.address[kParamSlot], !kMasterWeights, true);  // the master copy holds the value
    lists.set(kGrad, tensor.address[kGradSlot], true, writes_grad(options.grad_transform));
    detail::for_each_index<Kind::kStates>([&](auto state) {
      constexpr int s = decltype(state)::value;
      // A state every variant has before this one sits at a fixed slot; otherwise pick it
      // by selects (TensorChunk::at).
      constexpr uint32_t kBelow = (1u << s) - 1u;
      constexpr bool kFixed = (Kind::Variants::kAlways & kBelow) == kBelow;
      if ((active >> s) & 1u) {
        void* address = kFixed ? tensor.address[kStateSlot + s] : tensor.at(kStateSlot + int(state_position(active, s)));
        // A new state that is written before it is read (SGD's first step) is not loaded.
        lists.set(kState + s, address, !first_step, true);
      }
    });
    if (kMasterWeights) lists.set(kMaster, tensor.at(kStateSlot + state_count(active)), true, true);
    // This tensor's clip_grad_norm_per_tensor multiplier and tensor scale, where the call has
    // them, as fusedopt/optimizer.h's for_tensor gives the CPU loops.
    auto k = c.k;
    if constexpr (Kind::kTensorScale) {
      if (tensor_scale_slot >= 0)
        Kind::scale_coefficients(k, *static_cast<const double*>(tensor.at(tensor_scale_slot)));
    }
    GradFactors<T> grad = c.grad;
    if (tensor_clip_slot >= 0) grad.multiplier = math_value<T>(tensor.at(tensor_clip_slot));
    ParamRounding<kStochastic> rounding;
    if constexpr (kStochastic)
      rounding.key = rounding_key(options.round_seed, int64_t(reinterpret_cast<uintptr_t>(tensor.at(column_slot))));
    update_elements(lists, tensor.begin, tensor.end, [&](T (&x)[kLists]) {
      T p = kMasterWeights ? x[kMaster] : x[kParam];
      x[kGrad] = unscaled_grad(x[kGrad], grad);
      with_variant(typename Kind::Variants{}, active, [&](auto variant) {
        Kind::template update<decltype(variant)::value>(p, x[kGrad], x + kState, k, first_step);
      });
      x[kParam] = p;
      x[kMaster] = p;
    }, rounding);
  }
};

// Whether the coefficients depend on values in device memory.
inline bool reads_device_values(const UpdateOptions& options) {
  const GradTransform& t = options.grad_transform;
  return options.lr_tensor != nullptr || t.grad_scale != nullptr || t.found_inf != nullptr || t.clip_coef != nullptr;
}

template <typename Kind>
cudaError_t probe_update_kernel() {
  cudaFuncAttributes attributes;
  return cudaFuncGetAttributes(&attributes,
                               multi_tensor_kernel<UpdateChunkOp<Kind, float, float>, kClassicParameterLimit>);
}

template <typename Kind>
void update(const char* name, const TensorTable& table, DType dtype, const UpdateConfig<Kind>& config,
            const LaunchResources& resources, int device, uintptr_t stream) {
  static_assert(Kind::kStates <= kMaxStates, "more states than a record has slots for");
  static_assert(!Kind::kStepDependent || Kind::kStepCounter, "step-dependent coefficients need a step counter");
  static_assert(Kind::kScalarStates <= kMaxScalarStates, "more scalar states than kMaxScalarStates");
  static_assert(Kind::kScalarStates == 0 || Kind::kStepDependent, "scalar states are advanced per tensor");
  if (table.n == 0) return;
  const UpdateOptions& options = config.options;
  const uint32_t active = Kind::active_states(config.hyper);
  if (!is_variant<Kind>(active))
    throw std::invalid_argument(std::string("fusedopt cuda ") + name + ": these options select states no variant has");
  // clip_grad_norm_per_tensor and a tensor scale: the table again with one more row each, the
  // address of each tensor's coefficient, which the update's records carry as one more slot.
  const int states_used = state_count(active);
  // 8-bit states (UpdateInt8ChunkOp): one absmax row per state after the scalar-state rows
  const bool int8 = options.int8_tables != nullptr;
  if (int8 && (dtype == DType::Float64 || options.bf16_states))
    throw std::invalid_argument(std::string("fusedopt cuda ") + name +
                                ": 8-bit states are for float32 math, not float64 params or bf16 states");
  const int64_t scale_row = scalar_state_row(states_used, options.master_weights && dtype != DType::Float32 &&
                                                              dtype != DType::Float64) + Kind::kScalarStates;
  const int64_t used_rows = scale_row + (int8 ? states_used : 0);
  const void* tensor_clip = options.grad_transform.tensor_clip;
  const double* tensor_scale = Kind::kTensorScale ? options.tensor_scale : nullptr;
  std::vector<int64_t> extended;
  TensorTable carried = table;
  if (tensor_clip != nullptr || tensor_scale != nullptr) {
    extended.assign(table.data, table.data + used_rows * table.n);
    if (tensor_clip != nullptr)
      for (int64_t i = 0; i < table.n; ++i)
        extended.push_back(int64_t(reinterpret_cast<uintptr_t>(math_value_address(tensor_clip, dtype, i))));
    if (tensor_scale != nullptr)
      for (int64_t i = 0; i < table.n; ++i) extended.push_back(int64_t(reinterpret_cast<uintptr_t>(tensor_scale + i)));
    carried = TensorTable{extended.data(), table.n};
  }
  PrologueWork work{Kind::kStepCounter, Kind::kStepDependent,
                    !Kind::kStepDependent && (Kind::kStepCounter || reads_device_values(options))};
  const bool prologue = work.advance_steps || work.per_tensor || work.shared;
  const WorkspaceRecords records = prologue ? workspace_records(name, carried, resources) : WorkspaceRecords{0};
  // One launch for the storage types and the rounding (kStochastic: bf16_stochastic_round, a
  // kernel of its own for bf16 params without a master copy only). A lambda beside
  // run_for_storage's, not inside it: GCC mistakes the types of a generic lambda's captured
  // parameters in a nested generic lambda.
  const auto launch = [&](auto param, auto state, auto master, auto stochastic, auto quantized, const OpCall& call) {
    using Op = std::conditional_t<decltype(quantized)::value,
                                  UpdateInt8ChunkOp<Kind, decltype(param), decltype(master)::value,
                                                    decltype(stochastic)::value>,
                                  UpdateChunkOp<Kind, decltype(param), decltype(state), decltype(master)::value,
                                                decltype(stochastic)::value>>;
    using T = typename Op::T;
    Op op{config};
    if constexpr (!Op::kPerTensorRecord) {  // (a kind with them has work.per_tensor and no work.shared)
      if (work.shared) {
        op.shared.device = static_cast<const Prepared<typename Op::Coefficients>*>(records.shared());
      } else if (!work.per_tensor) {
        op.shared.host.coefficients = scalars<Kind, T>(config, 0.0);  // reads no pointer: there is none
        op.shared.host.skip = 0;
      }
    }
    int64_t slots[Op::kSlots] = {kParamRow, kGradRow};
    int addresses = 2;
    if (Op::kPerTensorRecord) slots[addresses++] = kCoefficientRecord;
    const int states = state_count(active);
    for (int s = 0; s < states; ++s) slots[addresses++] = kStateRow + s;
    if (Op::kMasterWeights) slots[addresses++] = kStateRow + states;
    int64_t extra_row = used_rows;
    if (tensor_clip != nullptr) {
      op.tensor_clip_slot = int8_t(addresses);
      slots[addresses++] = extra_row++;
    }
    if (tensor_scale != nullptr) {
      op.tensor_scale_slot = int8_t(addresses);
      slots[addresses++] = extra_row++;
    }
    if (Op::kStochastic) {
      op.column_slot = int8_t(addresses);
      slots[addresses++] = kColumnIndex;
    }
    if constexpr (decltype(quantized)::value) {
      op.absmax_slot = int8_t(addresses);
      for (int s = 0; s < states; ++s) slots[addresses++] = scale_row + s;
    }
    work.scalar_row = scalar_state_row(states, Op::kMasterWeights);  // after the master copy, if any
    if (prologue) run_prologue(carried, op, work, records, call);
    multi_tensor_apply(carried, slots, addresses, op, records, resources.chunk_bytes, call);
  };
  run_for_storage(name, dtype, options.master_weights, options.bf16_states, options.float32_states, device, stream,
                  [&](auto param, auto state, auto master, const OpCall& call) {
    using S = decltype(param);
    using SS = decltype(state);
    constexpr bool kMaster = decltype(master)::value;
    const auto launch_rounding = [&](auto quantized) {
      if constexpr (std::is_same_v<S, BFloat16> && !kMaster) {
        if (options.round_seed != 0) return launch(param, state, master, std::true_type{}, quantized, call);
      }
      launch(param, state, master, std::false_type{}, quantized, call);
    };
    if constexpr (int8_storage<S, SS, kMaster>()) {
      if (int8) return launch_rounding(std::true_type{});
    } else if (int8) {
      throw std::logic_error("fusedopt cuda: 8-bit states reached a storage without 8-bit kernels");
    }
    launch_rounding(std::false_type{});
  });
}

}  // namespace fusedopt::cuda

// The instantiation a generated unit (csrc/cuda/update_unit.cu.in) makes.
#define FUSEDOPT_INSTANTIATE_CUDA_UPDATE(kind)                                                             \
  template void fusedopt::cuda::update<fusedopt::optimizers::kind>(                                      \
      const char*, const fusedopt::TensorTable&, fusedopt::DType, const fusedopt::UpdateConfig<fusedopt::optimizers::kind>&, \
      const fusedopt::cuda::LaunchResources&, int, uintptr_t);                                             \
  template cudaError_t fusedopt::cuda::probe_update_kernel<fusedopt::optimizers::kind>();
