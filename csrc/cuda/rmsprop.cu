// RMSprop on the GPU: the op that applies fusedopt/rmsprop.h's update to one chunk, and
// its entry point. The step counter does not enter RMSprop's math, but torch keeps and
// advances it, so the prologue advances it, and computes the launch-wide coefficients.
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
  using Coefficients = RMSpropCoefficients<T>;
  static constexpr int kSlots = kRMSpropSlots;
  static constexpr bool kMasterWeights = !std::is_same_v<S, SS>;
  static constexpr int kMinBlocks = kMinBlocksFor<T>;

  RMSpropConfig config;
  SharedPrepared<Coefficients> shared;

  __device__ __forceinline__ Coefficients coefficients(double) const { return rmsprop_coefficients<T>(config); }

  __device__ __forceinline__ const Prepared<Coefficients>& prepared(const TensorChunk<kSlots>&) const {
    return shared.get();
  }

  __device__ __forceinline__ void operator()(const TensorChunk<kSlots>& tensor, const Coefficients& k) const {
    const bool centered = config.centered, momentum = config.momentum > 0.0;
    ElementLists<S, SS, kRMSpropLists> lists;
    lists.set(kParam, tensor.address[kParamSlot], !kMasterWeights, true);  // the master copy holds the value
    lists.set(kGrad, tensor.address[kGradSlot], true, writes_grad(config.grad_transform));
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

void rmsprop(const TensorTable& table, DType dtype, const RMSpropConfig& config, const LaunchResources& resources,
             int device, uintptr_t stream) {
  if (table.n == 0) return;
  const WorkspaceRecords records = workspace_records("rmsprop", table, resources);
  run_for_storage("rmsprop", dtype, config.master_weights, device, stream,
                  [&](auto param, auto state, const OpCall& call) {
    using Op = RMSpropChunkOp<decltype(param), decltype(state)>;
    Op op{config};
    op.shared.device = static_cast<const Prepared<typename Op::Coefficients>*>(records.shared());
    int64_t slots[kRMSpropSlots] = {kParamRow, kGradRow, kStateRow};
    int addresses = kOptionalSlot;
    int64_t next_state = kStateRow + 1;
    if (config.centered) slots[addresses++] = next_state++;
    if (config.momentum > 0.0) slots[addresses++] = next_state++;
    if (Op::kMasterWeights) slots[addresses++] = next_state++;
    run_prologue(table, op, PrologueWork{true, false, true}, records, call);
    multi_tensor_apply(table, slots, addresses, op, records, resources.chunk_bytes, call);
  });
}

}  // namespace fusedopt::cuda
