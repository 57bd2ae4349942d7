// Per-tensor sums of squares on the GPU (fusedopt/reduce.h's blocks, lanes and order, so the
// bits equal the CPU kernel's): one thread block per kSumBlock elements of a tensor, carried by
// the multi-tensor launcher, writes its partial; a second kernel (block_partials.h) adds each
// tensor's partials in block order. Only stream work: no host synchronisation, no memory of
// its own.
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/block_partials.h"
#include "cuda/cuda_ops.h"
#include "cuda/multi_tensor_apply.cuh"
#include "fusedopt/reduce.h"

namespace fusedopt::cuda {
namespace {

static_assert(kThreadsPerBlock == kSumLanes, "one thread per lane of reduce.h");

struct NoCoefficients {
  int32_t unused;
};

// The launcher's op: slot 0 the tensor, slot 1 where its block partials go. No prologue runs
// for it, so it has no kScalarStates.
template <typename S>
struct SumOfSquaresOp {
  using Storage = S;
  using Coefficients = NoCoefficients;
  static constexpr int kSlots = 2;
  static constexpr int kMinBlocks = 4;
  SharedPrepared<Coefficients> shared;

  __device__ __forceinline__ const Prepared<Coefficients>& prepared(const TensorChunk<kSlots>&) const {
    return shared.get();
  }

  __device__ __forceinline__ void operator()(const TensorChunk<kSlots>& tensor, const Coefficients&) const {
    __shared__ double lanes[kSumLanes];
    const S* x = static_cast<const S*>(tensor.address[0]);
    const int lane = int(threadIdx.x);
    double sum = 0.0;
    for (int64_t j = tensor.begin + lane; j < tensor.end; j += kSumLanes) {
      const double v = double(to_opmath(x[j]));
      sum += v * v;
    }
    lanes[lane] = sum;
    __syncthreads();
    for (int stride = kSumLanes / 2; stride > 0; stride /= 2) {  // lane_tree, one level per barrier
      if (lane < stride) lanes[lane] += lanes[lane + stride];
      __syncthreads();
    }
    if (lane == 0) static_cast<double*>(tensor.address[1])[tensor.begin / kSumBlock] = lanes[0];
  }
};

}  // namespace

void sum_of_squares_per_tensor(const TensorTable& table, DType dtype, uintptr_t partials, int64_t partial_count,
                               uintptr_t out, int device, uintptr_t stream) {
  if (table.n == 0) return;
  std::vector<int64_t> first(size_t(table.n) + 1, 0);
  for (int64_t i = 0; i < table.n; ++i) first[size_t(i) + 1] = first[size_t(i)] + sum_blocks(table.numel(i));
  if (partial_count < first[size_t(table.n)] || (first[size_t(table.n)] > 0 && partials == 0) || out == 0)
    throw std::invalid_argument("fusedopt cuda sum_of_squares_per_tensor: the partials buffer needs " +
                                std::to_string(first[size_t(table.n)]) + " float64 values, and out " +
                                std::to_string(table.n));
  // The launcher's table: numel, tensor address, address of the tensor's first partial.
  std::vector<int64_t> rows(size_t(table.n) * 3);
  for (int64_t i = 0; i < table.n; ++i) {
    rows[size_t(i)] = table.numel(i);
    rows[size_t(table.n + i)] = table.data[kParamRow * table.n + i];
    rows[size_t(2 * table.n + i)] = int64_t(partials + uint64_t(first[size_t(i)]) * sizeof(double));
  }
  const TensorTable carried{rows.data(), table.n};
  const OpCall call("sum_of_squares_per_tensor", device, stream);
  const bool known = dispatch_dtype(dtype, [&](auto tag) {
    using S = decltype(tag);
    SumOfSquaresOp<S> op{};
    op.shared.host.skip = 0;
    const int64_t slots[2] = {kParamRow, 2};
    multi_tensor_apply(carried, slots, 2, op, WorkspaceRecords{0}, kSumBlock * int64_t(sizeof(S)), call);
  });
  if (!known) throw std::invalid_argument("fusedopt cuda sum_of_squares_per_tensor: unknown dtype code");
  add_block_partials(first, 1, reinterpret_cast<const double*>(partials), reinterpret_cast<double*>(out), call);
}

}  // namespace fusedopt::cuda
