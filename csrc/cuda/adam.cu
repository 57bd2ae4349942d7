// Adam and AdamW on the GPU: the op that applies fusedopt/adam.h's update to one chunk,
// and the entry point that increments the step counters and launches it.
#include "cuda/cuda_ops.h"
#include "cuda/element_access.cuh"
#include "cuda/multi_tensor_apply.cuh"

namespace fusedopt::cuda {
namespace {

// Record slots: param, grad, step, exp_avg, exp_avg_sq, then max_exp_avg_sq with amsgrad
// and the float32 master copy with master weights (the table's state order).
enum AdamSlot { kParamSlot, kGradSlot, kStepSlot, kExpAvgSlot, kExpAvgSqSlot, kOptionalSlot, kAdamSlots = 7 };

// Element lists: adam_update's arguments in order, then the master copy.
enum AdamList { kParam, kGrad, kExpAvg, kExpAvgSq, kMaxExpAvgSq, kMaster, kAdamLists };

template <typename S, typename SS>
struct AdamChunkOp {
  using Storage = S;
  using T = typename OpMath<S>::type;
  static constexpr int kSlots = kAdamSlots;
  static constexpr bool kMasterWeights = !std::is_same_v<S, SS>;

  AdamConfig config;

  __device__ __forceinline__ void operator()(const TensorChunk<kSlots>& tensor) const {
    // The bias corrections depend on this tensor's step counter, which only the device
    // knows; adam_coefficients computes them in double, as on the CPU.
    const float* step = static_cast<const float*>(tensor.address[kStepSlot]);
    AdamCoefficients<T> k;
    if (!block_coefficients(config.grad_transform, [&] { return adam_coefficients<T>(config, double(*step)); }, k))
      return;
    ElementLists<S, SS, kAdamLists> lists;
    lists.set(kParam, tensor.address[kParamSlot], !kMasterWeights, true);  // the master copy holds the value
    lists.set(kGrad, tensor.address[kGradSlot], true, false);
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

void adam(const TensorTable& table, DType dtype, const AdamConfig& config, int device, uintptr_t stream) {
  if (table.n == 0) return;
  run_for_storage("adam", dtype, config.master_weights, device, stream, [&](auto param, auto state, const OpCall& call) {
    using S = decltype(param);
    using SS = decltype(state);
    int64_t rows[kAdamSlots] = {kParamRow, kGradRow, kStepRow, kStateRow, kStateRow + 1};
    int addresses = kOptionalSlot;
    if (config.amsgrad) rows[addresses++] = kStateRow + 2;
    if (AdamChunkOp<S, SS>::kMasterWeights) rows[addresses++] = kStateRow + 2 + int(config.amsgrad);
    increment_step_counters(table, config.grad_transform, call);
    multi_tensor_apply(table, rows, addresses, AdamChunkOp<S, SS>{config}, call);
  });
}

}  // namespace fusedopt::cuda
