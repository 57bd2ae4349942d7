// A kind with a norm pass (LAMB) on the CPU in one call: the norm pass, the per-tensor ratio
// and the update, one group of consecutive tensors at a time. A group holds at most
// kNormGroupElements elements (or one larger tensor), so the update finds in cache what the
// norm pass has just read, where two passes over a whole bucket of many tensors read
// everything from memory twice. Per tensor the sums, the ratio and the update are those of
// norms() over the whole table, then update() with tensor_scale: grouping changes no bit.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "cpu/kernels.h"

namespace fusedopt::cpu {

// About 4 MiB of float32 param, grad and two states: inside the last-level cache of the
// CPUs fusedopt is measured on, and large enough that the threads' start-up is negligible.
constexpr int64_t kNormGroupElements = int64_t(1) << 18;

// LAMB's trust ratio ||p|| / ||u|| from the two sums of squares; 1 where either norm is 0 or
// NaN (fusedopt/backends/base.py's trust_ratio, the same correctly rounded operations).
inline double trust_ratio(double param_sum, double update_sum) {
  const double param_norm = std::sqrt(param_sum), update_norm = std::sqrt(update_sum);
  return param_norm > 0.0 && update_norm > 0.0 ? param_norm / update_norm : 1.0;
}

// `rows`: the table's row count (the address table is [rows, n], one column per tensor).
// bf16_stochastic_round numbers the tensors within the call (rounding_key), so a call with a
// round_seed is one group: the same numbers as update() over the whole table.
template <typename Kind>
void norms_then_update(const TensorTable& table, int64_t rows, DType dtype, const UpdateConfig<Kind>& config,
                       int threads) {
  if constexpr (!Kind::kNormPass) {
    throw std::invalid_argument("fusedopt cpu: this optimizer has no norm pass");
  } else {
    if (step_skipped(config.options.grad_transform)) return;  // as update() does; the sums change nothing
    const int64_t limit = config.options.round_seed != 0 ? INT64_MAX : kNormGroupElements;
    std::vector<int64_t> columns;
    std::vector<double> sums, ratios;
    for (int64_t first = 0; first < table.n;) {
      int64_t last = first + 1, elements = table.numel(first);
      while (last < table.n && elements + table.numel(last) <= limit) elements += table.numel(last++);
      const int64_t count = last - first;
      columns.resize(size_t(rows * count));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < count; ++i) columns[size_t(r * count + i)] = table.data[r * table.n + first + i];
      const TensorTable group{columns.data(), count};
      UpdateConfig<Kind> group_config = config;
      const void* clip = config.options.grad_transform.tensor_clip;
      group_config.options.grad_transform.tensor_clip = clip == nullptr ? nullptr : math_value_address(clip, dtype, first);
      sums.assign(size_t(2 * count), 0.0);
      norms<Kind>(group, dtype, group_config, threads, sums.data());
      ratios.resize(size_t(count));
      for (int64_t i = 0; i < count; ++i) ratios[size_t(i)] = trust_ratio(sums[size_t(2 * i)], sums[size_t(2 * i + 1)]);
      group_config.options.tensor_scale = ratios.data();
      update<Kind>(group, dtype, group_config, threads);
      first = last;
    }
  }
}

}  // namespace fusedopt::cpu
