// Adafactor over every tensor of a bucket in one call: the passes of fusedopt/factored.h,
// each spread over OpenMP threads by work items of a fixed size (a block of rows of one
// (R, C) slice, or a range of a vector), so sums are combined in item order and the result
// is the same bits whatever the thread count. Sums of squares accumulate in double.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/factored_kernels.h"
#include "cpu/kernels.h"
#include "cpu/multi_tensor_cpu.h"

namespace fusedopt::cpu::FUSEDOPT_CPU_ISA {
namespace {

// About this many elements per item: enough to amortise scheduling, small enough to balance.
// fusedopt/factored.h holds it (and the lanes): the CUDA kernels cut the work the same way.
constexpr int64_t kItemElements = kFactoredItem;

struct Item {
  int64_t tensor;
  int64_t begin;  // factored: first row (of lead*R); vector: first element
  int64_t end;
  int64_t slice;  // factored: the (R, C) slice the rows belong to
};

struct TensorPlan {
  int64_t numel, lead, rows, cols;
  bool factored;
  int64_t first_item, items;
  AdafactorStepScalars scalars;
  double alpha, coefficient;
};

template <typename S> const S* grad_of(const TensorTable& t, int64_t i) { return t.ptr<const S>(kFactoredGrad, i); }

// Sum of squares of x[0..count) with independent lanes (a fixed order the compiler may
// vectorise without reassociating).
template <typename T, typename Load> double lane_sum(int64_t count, Load&& load) {
  constexpr int kLanes = kFactoredLanes;
  double lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= count; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const double v = double(load(j + l));
      lanes[l] += v * v;
    }
  double total = 0.0;
  for (; j < count; ++j) {
    const double v = double(load(j));
    total += v * v;
  }
  for (int l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

template <typename S> void run(const TensorTable& t, const AdafactorOptions& o, int threads) {
  using T = typename OpMath<S>::type;
  const int64_t n = t.n;
  std::vector<TensorPlan> plans(static_cast<size_t>(n));
  std::vector<Item> items;
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    float* step = t.ptr<float>(kFactoredStep, i);
    *step += 1.0f;
    TensorPlan& plan = plans[size_t(i)];
    plan.numel = t.numel(i);
    plan.rows = t.data[kFactoredRows * n + i];
    plan.cols = t.data[kFactoredCols * n + i];
    plan.factored = plan.rows > 0;
    plan.lead = plan.factored && plan.numel > 0 ? plan.numel / (plan.rows * plan.cols) : 1;
    plan.scalars = adafactor_step_scalars(o, double(*step));
    plan.first_item = int64_t(items.size());
    total += plan.numel;
    if (plan.numel == 0) {  // torch divides by the numel; nothing to update
      plan.items = 0;
      continue;
    }
    if (plan.factored) {
      const int64_t block = std::max<int64_t>(1, kItemElements / plan.cols);
      for (int64_t s = 0; s < plan.lead; ++s)
        for (int64_t r = 0; r < plan.rows; r += block)
          items.push_back({i, s * plan.rows + r, s * plan.rows + std::min(plan.rows, r + block), s});
    } else {
      for (int64_t j = 0; j < plan.numel; j += kItemElements)
        items.push_back({i, j, std::min(plan.numel, j + kItemElements), 0});
    }
    plan.items = int64_t(items.size()) - plan.first_item;
  }
  const int64_t count = int64_t(items.size());
  const int team = useful_threads(threads, total);

  // Per-item partial sums, and per-item partial column sums of g² (factored items only).
  std::vector<double> param_partial(static_cast<size_t>(count), 0.0), update_partial(static_cast<size_t>(count), 0.0);
  std::vector<int64_t> col_offset(size_t(count) + 1, 0);
  for (int64_t k = 0; k < count; ++k) {
    const TensorPlan& plan = plans[size_t(items[size_t(k)].tensor)];
    col_offset[size_t(k) + 1] = col_offset[size_t(k)] + (plan.factored ? plan.cols : 0);
  }
  std::vector<double> col_partial(size_t(col_offset[size_t(count)]), 0.0);
  // The moments the update reads, in the math type, as stored (rounded to S): the new
  // row_var and col_var values, and the clamped mean of row_var per slice.
  std::vector<int64_t> row_offset(size_t(n) + 1, 0), colv_offset(size_t(n) + 1, 0), slice_offset(size_t(n) + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    const TensorPlan& plan = plans[size_t(i)];
    const bool used = plan.factored && plan.numel > 0;
    row_offset[size_t(i) + 1] = row_offset[size_t(i)] + (used ? plan.lead * plan.rows : 0);
    colv_offset[size_t(i) + 1] = colv_offset[size_t(i)] + (used ? plan.lead * plan.cols : 0);
    slice_offset[size_t(i) + 1] = slice_offset[size_t(i)] + (used ? plan.lead : 0);
  }
  std::vector<T> row_values(static_cast<size_t>(row_offset[size_t(n)]));
  std::vector<T> col_values(static_cast<size_t>(colv_offset[size_t(n)]));
  std::vector<T> row_means(static_cast<size_t>(slice_offset[size_t(n)]));

  const T eps1 = T(o.eps1), eps1_squared = T(o.eps1 * o.eps1);
  const T sign = o.maximize ? T(-1) : T(1);

  // ---- pass A: sums of p², g² by row and column; vectors' variance -------------------
#pragma omp parallel for schedule(dynamic, 1) num_threads(team)
  for (int64_t k = 0; k < count; ++k) {
    const Item& item = items[size_t(k)];
    const int64_t i = item.tensor;
    const TensorPlan& plan = plans[size_t(i)];
    const S* __restrict p = t.ptr<const S>(kFactoredParam, i);
    const S* __restrict g = grad_of<S>(t, i);
    const T weight = T(plan.scalars.one_minus_beta2);
    if (plan.factored) {
      const int64_t C = plan.cols;
      const S* prow = p + item.begin * C;
      param_partial[size_t(k)] = lane_sum<T>((item.end - item.begin) * C, [&](int64_t j) { return to_opmath(prow[j]); });
      double* __restrict cols = col_partial.data() + col_offset[size_t(k)];
      S* row_var = t.ptr<S>(kFactoredMoment, i);
      T* row_out = row_values.data() + row_offset[size_t(i)];
      for (int64_t r = item.begin; r < item.end; ++r) {
        const S* __restrict grow = g + r * C;
        for (int64_t c = 0; c < C; ++c) {
          const double v = double(to_opmath(grow[c]));
          cols[c] += v * v;
        }
        const double row_sum = lane_sum<T>(C, [&](int64_t c) { return to_opmath(grow[c]); });
        const T mean = T(row_sum) / T(C);
        const S stored = from_opmath<S>(lerp(to_opmath(row_var[r]), mean, weight));
        row_var[r] = stored;
        row_out[r] = to_opmath(stored);
      }
    } else {
      const int64_t len = item.end - item.begin;
      const S* __restrict pp = p + item.begin;
      const S* __restrict gg = g + item.begin;
      S* __restrict variance = t.ptr<S>(kFactoredMoment, i) + item.begin;
      param_partial[size_t(k)] = lane_sum<T>(len, [&](int64_t j) { return to_opmath(pp[j]); });
      for (int64_t j = 0; j < len; ++j) {
        const T gj = sign * to_opmath(gg[j]);
        variance[j] = from_opmath<S>(lerp(to_opmath(variance[j]), gj * gj, weight));
      }
    }
  }

  // ---- per tensor: col_var, the row means per slice, alpha ---------------------------
#pragma omp parallel for schedule(dynamic, 1) num_threads(team)
  for (int64_t i = 0; i < n; ++i) {
    TensorPlan& plan = plans[size_t(i)];
    if (plan.numel == 0) continue;
    double param_sum = 0.0;
    for (int64_t k = plan.first_item; k < plan.first_item + plan.items; ++k) param_sum += param_partial[size_t(k)];
    plan.alpha = adafactor_alpha<T>(o, plan.scalars, param_sum, plan.numel);
    if (!plan.factored) continue;
    const int64_t R = plan.rows, C = plan.cols;
    const T weight = T(plan.scalars.one_minus_beta2);
    S* col_var = t.ptr<S>(kFactoredColMoment, i);
    T* col_out = col_values.data() + colv_offset[size_t(i)];
    T* row_in = row_values.data() + row_offset[size_t(i)];
    T* means = row_means.data() + slice_offset[size_t(i)];
    std::vector<double> sums(static_cast<size_t>(C));
    int64_t k = plan.first_item;
    for (int64_t s = 0; s < plan.lead; ++s) {
      std::fill(sums.begin(), sums.end(), 0.0);
      for (; k < plan.first_item + plan.items && items[size_t(k)].slice == s; ++k) {
        const double* part = col_partial.data() + col_offset[size_t(k)];
        for (int64_t c = 0; c < C; ++c) sums[size_t(c)] += part[c];
      }
      for (int64_t c = 0; c < C; ++c) {
        const T mean = T(sums[size_t(c)]) / T(R);
        const S stored = from_opmath<S>(lerp(to_opmath(col_var[s * C + c]), mean, weight));
        col_var[s * C + c] = stored;
        col_out[s * C + c] = to_opmath(stored);
      }
      double row_sum = 0.0;
      for (int64_t r = 0; r < R; ++r) row_sum += double(row_in[s * R + r]);
      means[s] = clamp_min(T(row_sum / double(R)), eps1);
    }
  }

  // ---- pass B: sum of u² --------------------------------------------------------------
#pragma omp parallel for schedule(dynamic, 1) num_threads(team)
  for (int64_t k = 0; k < count; ++k) {
    const Item& item = items[size_t(k)];
    const int64_t i = item.tensor;
    const TensorPlan& plan = plans[size_t(i)];
    const S* __restrict g = grad_of<S>(t, i);
    if (plan.factored) {
      const int64_t C = plan.cols;
      const T* __restrict cols = col_values.data() + colv_offset[size_t(i)] + item.slice * C;
      const T* rows = row_values.data() + row_offset[size_t(i)];
      const T mean = row_means[size_t(slice_offset[size_t(i)] + item.slice)];
      double sum = 0.0;
      for (int64_t r = item.begin; r < item.end; ++r) {
        const S* __restrict grow = g + r * C;
        const T row = rows[r];
        sum += lane_sum<T>(C, [&](int64_t c) {
          return adafactor_update(sign * to_opmath(grow[c]), factored_estimate(row, cols[c], mean), eps1_squared);
        });
      }
      update_partial[size_t(k)] = sum;
    } else {
      const S* __restrict gg = g + item.begin;
      const S* __restrict variance = t.ptr<const S>(kFactoredMoment, i) + item.begin;
      update_partial[size_t(k)] = lane_sum<T>(item.end - item.begin, [&](int64_t j) {
        return adafactor_update(sign * to_opmath(gg[j]), to_opmath(variance[j]), eps1_squared);
      });
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    TensorPlan& plan = plans[size_t(i)];
    if (plan.numel == 0) continue;
    double sum = 0.0;
    for (int64_t k = plan.first_item; k < plan.first_item + plan.items; ++k) sum += update_partial[size_t(k)];
    plan.coefficient = adafactor_coefficient<T>(o, plan.alpha, sum, plan.numel);
  }

  // ---- pass C: decay and update the params ----------------------------------------------
#pragma omp parallel for schedule(dynamic, 1) num_threads(team)
  for (int64_t k = 0; k < count; ++k) {
    const Item& item = items[size_t(k)];
    const int64_t i = item.tensor;
    const TensorPlan& plan = plans[size_t(i)];
    const S* __restrict g = grad_of<S>(t, i);
    S* __restrict p = t.ptr<S>(kFactoredParam, i);
    const T decay = o.weight_decay != 0.0 ? T(1.0 - plan.scalars.lr * o.weight_decay) : T(1);
    const T coefficient = T(plan.coefficient);
    if (plan.factored) {
      const int64_t C = plan.cols;
      const T* __restrict cols = col_values.data() + colv_offset[size_t(i)] + item.slice * C;
      const T* rows = row_values.data() + row_offset[size_t(i)];
      const T mean = row_means[size_t(slice_offset[size_t(i)] + item.slice)];
      for (int64_t r = item.begin; r < item.end; ++r) {
        const S* __restrict grow = g + r * C;
        S* __restrict prow = p + r * C;
        const T row = rows[r];
        for (int64_t c = 0; c < C; ++c) {
          const T u = adafactor_update(sign * to_opmath(grow[c]), factored_estimate(row, cols[c], mean), eps1_squared);
          prow[c] = from_opmath<S>(adafactor_param(to_opmath(prow[c]), u, decay, coefficient));
        }
      }
    } else {
      const S* __restrict gg = g + item.begin;
      const S* __restrict variance = t.ptr<const S>(kFactoredMoment, i) + item.begin;
      S* __restrict pp = p + item.begin;
      for (int64_t j = 0; j < item.end - item.begin; ++j) {
        const T u = adafactor_update(sign * to_opmath(gg[j]), to_opmath(variance[j]), eps1_squared);
        pp[j] = from_opmath<S>(adafactor_param(to_opmath(pp[j]), u, decay, coefficient));
      }
    }
  }
}

}  // namespace

void adafactor(const TensorTable& table, DType dtype, const AdafactorOptions& options, int threads) {
  dispatch_dtype(dtype, [&](auto tag) { run<decltype(tag)>(table, options, threads); });
}

}  // namespace fusedopt::cpu::FUSEDOPT_CPU_ISA
