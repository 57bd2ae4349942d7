// RMSprop on the GPU: the op that applies fusedopt/rmsprop.h's update to one chunk, and
// its entry point. The step counter does not enter RMSprop's math, but torch keeps and
// advances it, so the entry point increments it too.
#include "cuda/cuda_ops.h"
#include "cuda/element_access.cuh"
#include "cuda/multi_tensor_apply.cuh"

namespace fusedopt::cuda {
namespace {

// Record slots: param, grad, square_avg, then grad_avg if centered, the momentum buffer
// if momentum > 0 and the float32 master copy with master weights (the table's state order).
enum RMSpropSlot { kParamSlot, kGradSlot, kSquareAvgSlot, kOptionalSlot, kRMSpropSlots = 6 };

// Element lists: rmsprop_update's arguments in order, then the master copy.
enum RMSpropList { kParam, kGrad, kSquareAvg, kGradAvg, kBuffer, kMaster, kRMSpropLists };

template <typename S, typename SS>
struct RMSpropChunkOp {
  using Storage = S;
  using T = typename OpMath<S>::type;
  static constexpr int kSlots = kRMSpropSlots;
  static constexpr bool kMasterWeights = !std::is_same_v<S, SS>;

  RMSpropConfig config;

  __device__ __forceinline__ void operator()(const TensorChunk<kSlots>& tensor) const {
    RMSpropCoefficients<T> k;
    if (!block_coefficients(config.grad_transform, [&] { return rmsprop_coefficients<T>(config); }, k)) return;
    const bool centered = config.centered, momentum = config.momentum > 0.0;
    ElementLists<S, SS, kRMSpropLists> lists;
    lists.set(kParam, tensor.address[kParamSlot], !kMasterWeights, true);  // the master copy holds the value
    lists.set(kGrad, tensor.address[kGradSlot], true, false);
    lists.set(kSquareAvg, tensor.address[kSquareAvgSlot], true, true);
    if (centered) lists.set(kGradAvg, tensor.address[kOptionalSlot], true, true);
    if (momentum) lists.set(kBuffer, tensor.at(kOptionalSlot + int(centered)), true, true);
    if (kMasterWeights) lists.set(kMaster, tensor.at(kOptionalSlot + int(centered) + int(momentum)), true, true);
    update_elements(lists, tensor.begin, tensor.end, [&](T (&x)[kRMSpropLists]) {
      T p = kMasterWeights ? x[kMaster] : x[kParam];
      if (centered && momentum) rmsprop_update<true, true>(p, x[kGrad], x[kSquareAvg], x[kGradAvg], x[kBuffer], k);
      else if (centered) rmsprop_update<true, false>(p, x[kGrad], x[kSquareAvg], x[kGradAvg], x[kBuffer], k);
      else if (momentum) rmsprop_update<false, true>(p, x[kGrad], x[kSquareAvg], x[kGradAvg], x[kBuffer], k);
      else rmsprop_update<false, false>(p, x[kGrad], x[kSquareAvg], x[kGradAvg], x[kBuffer], k);
      x[kParam] = p;
      x[kMaster] = p;
    });
  }
};

}  // namespace

void rmsprop(const TensorTable& table, DType dtype, const RMSpropConfig& config, int device, uintptr_t stream) {
  if (table.n == 0) return;
  run_for_storage("rmsprop", dtype, config.master_weights, device, stream,
                  [&](auto param, auto state, const OpCall& call) {
    using S = decltype(param);
    using SS = decltype(state);
    int64_t rows[kRMSpropSlots] = {kParamRow, kGradRow, kStateRow};
    int addresses = kOptionalSlot;
    int64_t next_state = kStateRow + 1;
    if (config.centered) rows[addresses++] = next_state++;
    if (config.momentum > 0.0) rows[addresses++] = next_state++;
    if (RMSpropChunkOp<S, SS>::kMasterWeights) rows[addresses++] = next_state++;
    increment_step_counters(table, config.grad_transform, call);
    multi_tensor_apply(table, rows, addresses, RMSpropChunkOp<S, SS>{config}, call);
  });
}

}  // namespace fusedopt::cuda
