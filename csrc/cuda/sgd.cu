// SGD on the GPU: the op that applies fusedopt/sgd.h's update to one chunk, and its entry
// point. SGD keeps no step counter.
#include "cuda/cuda_ops.h"
#include "cuda/element_access.cuh"
#include "cuda/multi_tensor_apply.cuh"

namespace fusedopt::cuda {
namespace {

// Record slots: param, grad, then the momentum buffer with momentum and the float32
// master copy with master weights (the table's state order).
enum SGDSlot { kParamSlot, kGradSlot, kOptionalSlot, kSGDSlots = 4 };

// Element lists: sgd_update's arguments in order, then the master copy.
enum SGDList { kParam, kGrad, kBuffer, kMaster, kSGDLists };

template <typename S, typename SS>
struct SGDChunkOp {
  using Storage = S;
  using T = typename OpMath<S>::type;
  static constexpr int kSlots = kSGDSlots;
  static constexpr bool kMasterWeights = !std::is_same_v<S, SS>;

  SGDConfig config;

  __device__ __forceinline__ void operator()(const TensorChunk<kSlots>& tensor) const {
    SGDCoefficients<T> k;
    if (!block_coefficients(config.grad_transform, [&] { return sgd_coefficients<T>(config); }, k)) return;
    const bool momentum = config.momentum != 0.0;
    ElementLists<S, SS, kSGDLists> lists;
    lists.set(kParam, tensor.address[kParamSlot], !kMasterWeights, true);  // the master copy holds the value
    lists.set(kGrad, tensor.address[kGradSlot], true, false);
    // On the first step the buffer is fresh memory that the update overwrites with the
    // gradient: store it without reading it.
    if (momentum) lists.set(kBuffer, tensor.address[kOptionalSlot], !config.first_step, true);
    if (kMasterWeights) lists.set(kMaster, tensor.at(kOptionalSlot + int(momentum)), true, true);
    update_elements(lists, tensor.begin, tensor.end, [&](T (&x)[kSGDLists]) {
      T p = kMasterWeights ? x[kMaster] : x[kParam];
      if (momentum) sgd_update<true>(p, x[kGrad], x[kBuffer], k);
      else sgd_update<false>(p, x[kGrad], x[kBuffer], k);
      x[kParam] = p;
      x[kMaster] = p;
    });
  }
};

}  // namespace

void sgd(const TensorTable& table, DType dtype, const SGDConfig& config, int device, uintptr_t stream) {
  if (table.n == 0) return;
  run_for_storage("sgd", dtype, config.master_weights, device, stream, [&](auto param, auto state, const OpCall& call) {
    using S = decltype(param);
    using SS = decltype(state);
    int64_t rows[kSGDSlots] = {kParamRow, kGradRow};
    int addresses = kOptionalSlot;
    const int64_t momentum_rows = config.momentum != 0.0 ? 1 : 0;
    if (momentum_rows) rows[addresses++] = kStateRow;
    if (SGDChunkOp<S, SS>::kMasterWeights) rows[addresses++] = kStateRow + momentum_rows;
    multi_tensor_apply(table, rows, addresses, SGDChunkOp<S, SS>{config}, call);
  });
}

}  // namespace fusedopt::cuda
