// Adam and AdamW on the GPU: the op that applies fusedopt/adam.h's update to one chunk,
// and the entry point that queues the prologue (step counters and per-tensor
// coefficients) and the update.
#include "cuda/cuda_ops.h"
#include "cuda/element_access.cuh"
#include "cuda/multi_tensor_apply.cuh"

namespace fusedopt::cuda {
namespace {

// Record slots: param, grad, the tensor's coefficient record, exp_avg, exp_avg_sq, then
// max_exp_avg_sq with amsgrad and the float32 master copy with master weights (the
// table's state order).
enum AdamSlot { kParamSlot, kGradSlot, kCoefficientSlot, kExpAvgSlot, kExpAvgSqSlot, kOptionalSlot, kAdamSlots = 7 };

// Element lists: adam_update's arguments in order, then the master copy.
enum AdamList { kParam, kGrad, kExpAvg, kExpAvgSq, kMaxExpAvgSq, kMaster, kAdamLists };

template <typename S, typename SS>
struct AdamChunkOp {
  using Storage = S;
  using T = typename OpMath<S>::type;
  using Coefficients = AdamCoefficients<T>;
  static constexpr int kSlots = kAdamSlots;
  static constexpr bool kMasterWeights = !std::is_same_v<S, SS>;
  // bfloat16 without master weights: at 64 registers ptxas (CUDA 13.0) gives it an 8-byte
  // stack frame, so 80 as for float64.
  static constexpr int kMinBlocks = std::is_same_v<SS, BFloat16> ? 3 : kMinBlocksFor<T>;

  AdamConfig config;

  // The bias corrections depend on each tensor's step counter, which only the device
  // knows: the prologue computes them, in double as on the CPU, into a record per tensor.
  __device__ __forceinline__ Coefficients coefficients(double step) const { return adam_coefficients<T>(config, step); }

  __device__ __forceinline__ const Prepared<Coefficients>& prepared(const TensorChunk<kSlots>& tensor) const {
    return *static_cast<const Prepared<Coefficients>*>(tensor.address[kCoefficientSlot]);
  }

  __device__ __forceinline__ void operator()(const TensorChunk<kSlots>& tensor, const Coefficients& k) const {
    ElementLists<S, SS, kAdamLists> lists;
    lists.set(kParam, tensor.address[kParamSlot], !kMasterWeights, true);  // the master copy holds the value
    lists.set(kGrad, tensor.address[kGradSlot], true, writes_grad(config.grad_transform));
    lists.set(kExpAvg, tensor.address[kExpAvgSlot], true, true);
    lists.set(kExpAvgSq, tensor.address[kExpAvgSqSlot], true, true);
    if (config.amsgrad) lists.set(kMaxExpAvgSq, tensor.address[kOptionalSlot], true, true);
    if (kMasterWeights) lists.set(kMaster, tensor.at(kOptionalSlot + int(config.amsgrad)), true, true);
    update_elements(lists, tensor.begin, tensor.end, [&](T (&x)[kAdamLists]) {
      T p = kMasterWeights ? x[kMaster] : x[kParam];
      if (config.amsgrad) adam_update<true>(p, x[kGrad], x[kExpAvg], x[kExpAvgSq], x[kMaxExpAvgSq], k);
      else adam_update<false>(p, x[kGrad], x[kExpAvg], x[kExpAvgSq], x[kMaxExpAvgSq], k);
      x[kParam] = p;
      x[kMaster] = p;
    });
  }
};

}  // namespace

cudaError_t probe_update_kernel() {
  cudaFuncAttributes attributes;
  return cudaFuncGetAttributes(&attributes, multi_tensor_kernel<AdamChunkOp<float, float>, kClassicParameterLimit>);
}

void adam(const TensorTable& table, DType dtype, const AdamConfig& config, const LaunchResources& resources,
          int device, uintptr_t stream) {
  if (table.n == 0) return;
  const WorkspaceRecords records = workspace_records("adam", table, resources);
  run_for_storage("adam", dtype, config.master_weights, device, stream, [&](auto param, auto state, const OpCall& call) {
    using Op = AdamChunkOp<decltype(param), decltype(state)>;
    const Op op{config};
    int64_t slots[kAdamSlots] = {kParamRow, kGradRow, kCoefficientRecord, kStateRow, kStateRow + 1};
    int addresses = kOptionalSlot;
    if (config.amsgrad) slots[addresses++] = kStateRow + 2;
    if (Op::kMasterWeights) slots[addresses++] = kStateRow + 2 + int(config.amsgrad);
    run_prologue(table, op, PrologueWork{true, true, false}, records, call);
    multi_tensor_apply(table, slots, addresses, op, records, resources.chunk_bytes, call);
  });
}

}  // namespace fusedopt::cuda
