// Sum of squares of every tensor in a table (rows: numel, address): the multi-tensor pass
// behind fusedopt.clip_grad_norm_ and max_grad_norm on the CPU. Accumulates in double.
#include <omp.h>

#include <vector>

#include "cpu/kernels.h"
#include "cpu/multi_tensor_cpu.h"

namespace fusedopt::cpu::FUSEDOPT_CPU_ISA {
namespace {

// Independent partial sums per lane: a fixed order the compiler may vectorise without
// reassociating (no -ffast-math needed), so the result does not depend on the ISA.
template <typename S> double slice_sum_of_squares(const S* __restrict x, int64_t count) {
  constexpr int kLanes = 16;
  double lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= count; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const double v = double(to_opmath(x[j + l]));
      lanes[l] += v * v;
    }
  }
  double total = 0.0;
  for (; j < count; ++j) {
    const double v = double(to_opmath(x[j]));
    total += v * v;
  }
  for (int l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

}  // namespace

double sum_of_squares(const TensorTable& table, DType dtype, int threads) {
  std::vector<double> per_thread(std::max(threads, 1) + 1, 0.0);
  dispatch_dtype(dtype, [&](auto storage_tag) {
    using S = decltype(storage_tag);
    for_each_slice(table, threads, [&](int64_t i, int64_t lo, int64_t hi) {
      per_thread[omp_get_thread_num()] += slice_sum_of_squares(table.ptr<const S>(kParamRow, i) + lo, hi - lo);
    });
  });
  double total = 0.0;
  for (double partial : per_thread) total += partial;
  return total;
}

}  // namespace fusedopt::cpu::FUSEDOPT_CPU_ISA
