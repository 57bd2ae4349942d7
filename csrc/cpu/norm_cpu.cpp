// Sums of squares over the tensors of a table (rows: numel, address), one per tensor: the
// multi-tensor reduction behind Backend.sum_of_squares_per_tensor on the CPU, and so behind
// fusedopt.clip_grad_norm_, max_grad_norm, clip_grad_norm_per_tensor and LAMB's norms. The
// blocks and the order of every addition are fusedopt/reduce.h's, so the result does not
// depend on the thread count or the instruction set, and equals the CUDA kernel's.
#include <algorithm>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/multi_tensor_cpu.h"
#include "fusedopt/reduce.h"

namespace fusedopt::cpu::FUSEDOPT_CPU_ISA {
namespace {

// One block's partial: kSumLanes independent accumulators, which the compiler vectorises
// without reassociating anything (no -ffast-math needed).
template <typename S> double block_sum_of_squares(const S* __restrict x, int64_t count) {
  double lanes[kSumLanes];
  const int used = lanes_used(count);
  std::fill(lanes, lanes + used, 0.0);
  int64_t j = 0;
  for (; j + kSumLanes <= count; j += kSumLanes) {
    prefetch_ahead(x + j, kSumLanes, count - j);
    for (int l = 0; l < kSumLanes; ++l) {
      const double v = double(to_opmath(x[j + l]));
      lanes[l] += v * v;
    }
  }
  for (int l = 0; j + l < count; ++l) {
    const double v = double(to_opmath(x[j + l]));
    lanes[l] += v * v;
  }
  lane_tree(lanes, used);
  return lanes[0];
}

}  // namespace

void sum_of_squares_per_tensor(const TensorTable& table, DType dtype, int threads, double* out) {
  const SumBlockList list(table, threads);
  std::vector<double> partials(static_cast<size_t>(list.blocks), 0.0);
  dispatch_dtype(dtype, [&](auto storage_tag) {
    using S = decltype(storage_tag);
    for_each_block(list, [&](int64_t b) {
      const int64_t i = list.owner[size_t(b)], begin = list.begin(b);
      const int64_t count = std::min(kSumBlock, table.numel(i) - begin);
      partials[size_t(b)] = block_sum_of_squares(table.ptr<const S>(kParamRow, i) + begin, count);
    });
  });
  for (int64_t i = 0; i < table.n; ++i) {
    double sum = 0.0;
    for (int64_t b = list.first[size_t(i)]; b < list.first[size_t(i) + 1]; ++b) sum += partials[size_t(b)];
    out[i] = sum;
  }
}

double sum_of_squares(const TensorTable& table, DType dtype, int threads) {
  // The global norm's sum: the per-tensor sums added in table order.
  std::vector<double> per_tensor(static_cast<size_t>(table.n), 0.0);
  sum_of_squares_per_tensor(table, dtype, threads, per_tensor.data());
  double total = 0.0;
  for (double s : per_tensor) total += s;
  return total;
}

}  // namespace fusedopt::cpu::FUSEDOPT_CPU_ISA
