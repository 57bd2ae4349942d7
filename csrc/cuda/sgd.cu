// SGD on the GPU: the op that applies fusedopt/sgd.h's update to one chunk, and its entry
// point. SGD keeps no step counter: its coefficients need a prologue only when they
// depend on device values (GradScaler, the clip coefficient, a tensor learning rate);
// otherwise the host computes them and they travel in the kernel's parameters.
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
  using Coefficients = SGDCoefficients<T>;
  static constexpr int kSlots = kSGDSlots;
  static constexpr bool kMasterWeights = !std::is_same_v<S, SS>;
  // SGD's update needs fewer registers: float64 fits 4 blocks (60 registers) and float32
  // math without a master copy 5 (48); with a master copy it spills at 5.
  static constexpr int kMinBlocks = sizeof(T) == 8 || kMasterWeights ? 4 : 5;

  SGDConfig config;
  SharedPrepared<Coefficients> shared;

  __device__ __forceinline__ Coefficients coefficients(double) const { return sgd_coefficients<T>(config); }

  __device__ __forceinline__ const Prepared<Coefficients>& prepared(const TensorChunk<kSlots>&) const {
    return shared.get();
  }

  __device__ __forceinline__ void operator()(const TensorChunk<kSlots>& tensor, const Coefficients& k) const {
    const bool momentum = config.momentum != 0.0;
    ElementLists<S, SS, kSGDLists> lists;
    lists.set(kParam, tensor.address[kParamSlot], !kMasterWeights, true);  // the master copy holds the value
    lists.set(kGrad, tensor.address[kGradSlot], true, writes_grad(config.grad_transform));
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

// Whether the coefficients depend on values in device memory.
bool reads_device_values(const SGDConfig& config) {
  const GradTransform& t = config.grad_transform;
  return config.lr_tensor != nullptr || t.grad_scale != nullptr || t.found_inf != nullptr || t.clip_coef != nullptr;
}

}  // namespace

void sgd(const TensorTable& table, DType dtype, const SGDConfig& config, const LaunchResources& resources,
         int device, uintptr_t stream) {
  if (table.n == 0) return;
  const bool on_device = reads_device_values(config);
  const WorkspaceRecords records = on_device ? workspace_records("sgd", table, resources) : WorkspaceRecords{0};
  run_for_storage("sgd", dtype, config.master_weights, device, stream, [&](auto param, auto state, const OpCall& call) {
    using Op = SGDChunkOp<decltype(param), decltype(state)>;
    using T = typename Op::T;
    Op op{config};
    if (on_device) {
      op.shared.device = static_cast<const Prepared<SGDCoefficients<T>>*>(records.shared());
      run_prologue(table, op, PrologueWork{false, false, true}, records, call);
    } else {
      op.shared.host.coefficients = sgd_coefficients<T>(config);  // reads no pointer: there is none
      op.shared.host.skip = 0;
    }
    int64_t slots[kSGDSlots] = {kParamRow, kGradRow};
    int addresses = kOptionalSlot;
    const int64_t momentum_rows = config.momentum != 0.0 ? 1 : 0;
    if (momentum_rows) slots[addresses++] = kStateRow;
    if (Op::kMasterWeights) slots[addresses++] = kStateRow + momentum_rows;
    multi_tensor_apply(table, slots, addresses, op, records, resources.chunk_bytes, call);
  });
}

}  // namespace fusedopt::cuda
