// Adafactor on the GPU (the "factored" kernel shape, fusedopt/factored.h) with the CPU
// kernel's bits (csrc/cpu/factored_cpu.cpp): the same work items (kFactoredItem elements:
// a block of rows of one (R, C) slice, or a range of a vector), the same order in every sum
// (kFactoredLanes lanes inside an item or a row, the tail then the lanes added by one
// thread; items added in item order; columns and row means added row by row), double
// accumulation, the header's math, compiled without multiply-add contraction.
//
// Launches on the call's stream, no host synchronisation, no memory of its own (the
// workspace, adafactor_workspace_bytes(table) long, holds everything between them):
//  prologue  a thread per tensor (as many tensors a launch as the parameter block holds):
//            the step counter + 1, the step scalars (lr read on the device), and a record
//            per tensor (addresses, shape, where its items and buffers are)
//  A         a block per item: the sum of p², per row the sum of g² (row_var updated), per
//            column its partial sum of g² over the item's rows; a vector's variance
//  tensor    a block per (R, C) slice or vector: alpha, col_var, the clamped row mean
//  B         a block per item: the sum of u²
//  scale     a thread per tensor: the update's coefficient
//  C         a block per item: the params
// Item i of the bucket belongs to the first tensor whose item end exceeds i (binary search
// over the ends the prologue wrote), so no launch carries a list of items.
#include <array>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/factored_ops.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/launch_plan.h"
#include "fusedopt/factored.h"

namespace fusedopt::cuda {
namespace {

// One tensor's record in the workspace: the prologue writes all but alpha and coefficient.
struct FactoredRecord {
  void* param;
  const void* grad;
  void* moment;      // row_var or variance
  void* col_moment;  // col_var (null for a vector)
  int64_t numel, lead, rows, cols;  // rows 0: a vector (cols: its numel)
  int64_t block_rows;       // rows of a factored item
  int64_t items_per_slice;  // items of one (R, C) slice
  int64_t first_item, items, first_unit;
  int64_t col_partials;  // offsets (in doubles) of this tensor's column partials, the moments the
  int64_t row_values;    // update reads (new row_var and col_var values in the math type) and the
  int64_t col_values;    // clamped row means per slice
  int64_t means;
  AdafactorStepScalars scalars;
  double alpha, coefficient;
};
static_assert(sizeof(FactoredRecord) % 16 == 0, "records keep the buffers after them 16-byte aligned");

// Where the buffers are in the workspace.
struct Workspace {
  FactoredRecord* records;
  int64_t* item_ends;  // per tensor: first_item + items
  int64_t* unit_ends;  // per tensor: its slices' (or its vector's) end in the tensor pass
  double* param_partial;   // per item
  double* update_partial;  // per item
  double* doubles;         // column partials, row values, column values, means (record offsets)
  int64_t n;
};

// The table columns a prologue thread reads, per tensor (host-computed plan included).
enum Column : int {
  kParamColumn, kGradColumn, kStepColumn, kMomentColumn, kColMomentColumn, kNumelColumn, kLeadColumn,
  kRowsColumn, kColsColumn, kBlockRowsColumn, kItemsPerSliceColumn, kFirstItemColumn, kItemsColumn,
  kFirstUnitColumn, kUnitsColumn, kColPartialsColumn, kRowValuesColumn, kColValuesColumn, kMeansColumn, kColumns,
};

template <int64_t kParameterLimit>
struct PrologueArgs {
  static constexpr int64_t kHeaderBytes = 16;
  static constexpr int64_t kCapacity = (kParameterLimit - kOpParameterBytes - kHeaderBytes) / (8 * kColumns);
  int64_t first;  // the tensor of columns[0]
  int32_t count;
  int64_t columns[kCapacity][kColumns];
};
static_assert(sizeof(PrologueArgs<kClassicParameterLimit>) + kOpParameterBytes <= kClassicParameterLimit);
static_assert(sizeof(PrologueArgs<kLargeParameterLimit>) + kOpParameterBytes <= kLargeParameterLimit);

// What every kernel of a call shares (the second parameter of the prologue, the only one of
// the others).
struct Shared {
  Workspace w;
  AdafactorOptions options;
};
static_assert(sizeof(Shared) <= kOpParameterBytes, "the shared values outgrow their share of the parameter block");

template <typename P> __device__ __forceinline__ P* address(int64_t value) {
  return reinterpret_cast<P*>(static_cast<uintptr_t>(value));
}

constexpr int kPrologueThreads = 128;

template <int64_t kParameterLimit>
__global__ void __launch_bounds__(kPrologueThreads)
    prologue_kernel(const __grid_constant__ PrologueArgs<kParameterLimit> args, const __grid_constant__ Shared shared) {
  const int i = int(blockIdx.x) * kPrologueThreads + int(threadIdx.x);
  if (i >= args.count) return;
  const int64_t* column = args.columns[i];
  float& step = *address<float>(column[kStepColumn]);
  step += 1.0f;  // the CPU kernel's order: every counter first, the scalars from it
  FactoredRecord r;
  r.param = address<void>(column[kParamColumn]);
  r.grad = address<const void>(column[kGradColumn]);
  r.moment = address<void>(column[kMomentColumn]);
  r.col_moment = address<void>(column[kColMomentColumn]);
  r.numel = column[kNumelColumn];
  r.lead = column[kLeadColumn];
  r.rows = column[kRowsColumn];
  r.cols = column[kColsColumn];
  r.block_rows = column[kBlockRowsColumn];
  r.items_per_slice = column[kItemsPerSliceColumn];
  r.first_item = column[kFirstItemColumn];
  r.items = column[kItemsColumn];
  r.first_unit = column[kFirstUnitColumn];
  r.col_partials = column[kColPartialsColumn];
  r.row_values = column[kRowValuesColumn];
  r.col_values = column[kColValuesColumn];
  r.means = column[kMeansColumn];
  r.scalars = adafactor_step_scalars(shared.options, double(step));
  r.alpha = 0.0;
  r.coefficient = 0.0;
  const int64_t t = args.first + i;
  shared.w.records[t] = r;
  shared.w.item_ends[t] = r.first_item + r.items;
  shared.w.unit_ends[t] = r.first_unit + column[kUnitsColumn];
}

// The tensor whose end (items or units) first exceeds `k` (ends are non-decreasing; a
// tensor with nothing to do has its end equal to the one before and is never chosen).
__device__ __forceinline__ int64_t owner_of(const int64_t* ends, int64_t n, int64_t k) {
  int64_t low = 0, high = n - 1;
  while (low < high) {
    const int64_t middle = low + (high - low) / 2;
    if (ends[middle] > k) high = middle;
    else low = middle + 1;
  }
  return low;
}

// Item `local` of a tensor: rows [begin, end) of slice `slice` (factored; rows counted over
// lead*R), or elements [begin, end) of a vector. factored_cpu.cpp makes the same items.
struct ItemRange {
  int64_t begin, end, slice;
};
__device__ __forceinline__ ItemRange item_range(const FactoredRecord& r, int64_t local) {
  if (r.rows > 0) {
    const int64_t slice = local / r.items_per_slice;
    const int64_t first = (local % r.items_per_slice) * r.block_rows;
    const int64_t last = first + r.block_rows < r.rows ? first + r.block_rows : r.rows;
    return {slice * r.rows + first, slice * r.rows + last, slice};
  }
  const int64_t begin = local * kFactoredItem;
  return {begin, begin + kFactoredItem < r.numel ? begin + kFactoredItem : r.numel, 0};
}

// __syncthreads for the helpers below. The host build (csrc/cuda_host) tells barriers apart by
// their call site, and g++ may copy a call when it threads jumps across it (tid == 0 tested on
// both sides of a barrier), so there one out-of-line call stands for all (the executor then
// cannot tell these barriers apart; every thread of a block takes the same rounds here).
#if FUSEDOPT_CUDA_HOST
__noinline__ void block_barrier() { __syncthreads(); }
#else
__device__ __forceinline__ void block_barrier() { __syncthreads(); }
#endif

constexpr int kThreads = 256;
constexpr int kGroups = kThreads / kFactoredLanes;  // rows summed at once, a group of lanes each

// factored_cpu.cpp's lane_sum over `count` values: lane l (thread l) sums the squares of
// values l, l + kFactoredLanes, ... below the last whole round; thread 0 then adds the tail
// in order and the lanes in lane order. Every thread of the block calls it; the sum is
// thread 0's.
template <typename Load>
__device__ __forceinline__ double block_lane_sum(int64_t count, double* lanes, Load load) {
  const int tid = int(threadIdx.x);
  const int64_t whole = count - count % kFactoredLanes;
  if (tid < kFactoredLanes) {
    double sum = 0.0;
    for (int64_t j = tid; j < whole; j += kFactoredLanes) {
      const double v = double(load(j));
      sum += v * v;
    }
    lanes[tid] = sum;
  }
  block_barrier();
  double total = 0.0;
  if (tid == 0) {
    for (int64_t j = whole; j < count; ++j) {
      const double v = double(load(j));
      total += v * v;
    }
    for (int l = 0; l < kFactoredLanes; ++l) total += lanes[l];
  }
  block_barrier();  // the lanes are free again
  return total;
}

// lane_sum of every row [begin, end) of width `cols`, kGroups rows at once: `row_done(r,
// group, sum)` by the row's first thread, then `round_done(first, rows)` by every thread once
// the round's rows are done. Every thread of the block calls it.
template <typename Load, typename RowDone, typename RoundDone>
__device__ __forceinline__ void row_lane_sums(int64_t begin, int64_t end, int64_t cols, double* lanes, Load load,
                                              RowDone row_done, RoundDone round_done) {
  const int tid = int(threadIdx.x), group = tid / kFactoredLanes, lane = tid % kFactoredLanes;
  const int64_t whole = cols - cols % kFactoredLanes;
  for (int64_t first = begin; first < end; first += kGroups) {
    const int64_t r = first + group;
    double sum = 0.0;
    if (r < end)
      for (int64_t c = lane; c < whole; c += kFactoredLanes) {
        const double v = double(load(r, c));
        sum += v * v;
      }
    lanes[tid] = sum;
    block_barrier();
    if (lane == 0 && r < end) {
      double total = 0.0;
      for (int64_t c = whole; c < cols; ++c) {
        const double v = double(load(r, c));
        total += v * v;
      }
      for (int l = 0; l < kFactoredLanes; ++l) total += lanes[group * kFactoredLanes + l];
      row_done(r, group, total);
    }
    block_barrier();
    round_done(first, end - first < kGroups ? end - first : int64_t(kGroups));
  }
}

// ---- pass A: the sum of p²; g² by row (row_var) and by column; a vector's variance -------
template <typename S>
__global__ void __launch_bounds__(kThreads) pass_a_kernel(const __grid_constant__ Shared shared) {
  using T = typename OpMath<S>::type;
  __shared__ double lanes[kThreads];
  const Workspace& w = shared.w;
  const int64_t k = int64_t(blockIdx.x);
  const FactoredRecord& rec = w.records[owner_of(w.item_ends, w.n, k)];
  const ItemRange item = item_range(rec, k - rec.first_item);
  const S* p = static_cast<const S*>(rec.param);
  const S* g = static_cast<const S*>(rec.grad);
  const T weight = T(rec.scalars.one_minus_beta2);
  const int tid = int(threadIdx.x);
  if (rec.rows > 0) {
    const int64_t C = rec.cols;
    const S* prow = p + item.begin * C;
    const double param_sum = block_lane_sum((item.end - item.begin) * C, lanes,
                                            [&](int64_t j) { return to_opmath(prow[j]); });
    if (tid == 0) w.param_partial[k] = param_sum;
    S* row_var = static_cast<S*>(rec.moment);
    double* row_out = w.doubles + rec.row_values;
    row_lane_sums(
        item.begin, item.end, C, lanes, [&](int64_t r, int64_t c) { return to_opmath(g[r * C + c]); },
        [&](int64_t r, int, double sum) {
          const T mean = T(sum) / T(C);
          const S stored = from_opmath<S>(lerp(to_opmath(row_var[r]), mean, weight));
          row_var[r] = stored;
          row_out[r] = double(to_opmath(stored));
        },
        [](int64_t, int64_t) {});
    double* cols = w.doubles + rec.col_partials + (k - rec.first_item) * C;
    for (int64_t c = tid; c < C; c += kThreads) {
      double sum = 0.0;
      for (int64_t r = item.begin; r < item.end; ++r) {
        const double v = double(to_opmath(g[r * C + c]));
        sum += v * v;
      }
      cols[c] = sum;
    }
  } else {
    const int64_t length = item.end - item.begin;
    const S* pp = p + item.begin;
    const S* gg = g + item.begin;
    S* variance = static_cast<S*>(rec.moment) + item.begin;
    const double param_sum = block_lane_sum(length, lanes, [&](int64_t j) { return to_opmath(pp[j]); });
    if (tid == 0) w.param_partial[k] = param_sum;
    const T sign = shared.options.maximize ? T(-1) : T(1);
    for (int64_t j = tid; j < length; j += kThreads) {
      const T gj = sign * to_opmath(gg[j]);
      variance[j] = from_opmath<S>(lerp(to_opmath(variance[j]), gj * gj, weight));
    }
  }
}

// ---- per slice (or vector): alpha, col_var, the clamped mean of row_var --------------------
template <typename S>
__global__ void __launch_bounds__(kThreads) tensor_kernel(const __grid_constant__ Shared shared) {
  using T = typename OpMath<S>::type;
  const Workspace& w = shared.w;
  const int64_t u = int64_t(blockIdx.x);
  FactoredRecord& rec = w.records[owner_of(w.unit_ends, w.n, u)];
  const int64_t s = u - rec.first_unit;
  const int tid = int(threadIdx.x);
  if (s == 0 && tid == 0) {
    double param_sum = 0.0;
    for (int64_t k = rec.first_item; k < rec.first_item + rec.items; ++k) param_sum += w.param_partial[k];
    rec.alpha = adafactor_alpha<T>(shared.options, rec.scalars, param_sum, rec.numel);
  }
  if (rec.rows == 0) return;
  const int64_t R = rec.rows, C = rec.cols;
  const T weight = T(rec.scalars.one_minus_beta2);
  S* col_var = static_cast<S*>(rec.col_moment) + s * C;
  double* col_out = w.doubles + rec.col_values + s * C;
  const double* partials = w.doubles + rec.col_partials + s * rec.items_per_slice * C;
  for (int64_t c = tid; c < C; c += kThreads) {
    double sum = 0.0;
    for (int64_t k = 0; k < rec.items_per_slice; ++k) sum += partials[k * C + c];
    const T mean = T(sum) / T(R);
    const S stored = from_opmath<S>(lerp(to_opmath(col_var[c]), mean, weight));
    col_var[c] = stored;
    col_out[c] = double(to_opmath(stored));
  }
  if (tid == 0) {
    const double* rows = w.doubles + rec.row_values + s * R;
    double row_sum = 0.0;
    for (int64_t r = 0; r < R; ++r) row_sum += rows[r];
    w.doubles[rec.means + s] = double(clamp_min(T(row_sum / double(R)), T(shared.options.eps1)));
  }
}

// ---- pass B: the sum of u² -----------------------------------------------------------------
template <typename S>
__global__ void __launch_bounds__(kThreads) pass_b_kernel(const __grid_constant__ Shared shared) {
  using T = typename OpMath<S>::type;
  __shared__ double lanes[kThreads];
  __shared__ double row_sums[kGroups];
  const Workspace& w = shared.w;
  const int64_t k = int64_t(blockIdx.x);
  const FactoredRecord& rec = w.records[owner_of(w.item_ends, w.n, k)];
  const ItemRange item = item_range(rec, k - rec.first_item);
  const S* g = static_cast<const S*>(rec.grad);
  const T sign = shared.options.maximize ? T(-1) : T(1);
  const T eps1_squared = T(shared.options.eps1 * shared.options.eps1);
  const int tid = int(threadIdx.x);
  if (rec.rows > 0) {
    const int64_t C = rec.cols;
    const double* cols = w.doubles + rec.col_values + item.slice * C;
    const double* rows = w.doubles + rec.row_values;
    const T mean = T(w.doubles[rec.means + item.slice]);
    double sum = 0.0;  // thread 0's: the rows' sums in row order
    row_lane_sums(
        item.begin, item.end, C, lanes,
        [&](int64_t r, int64_t c) {
          return adafactor_update(sign * to_opmath(g[r * C + c]), factored_estimate(T(rows[r]), T(cols[c]), mean),
                                  eps1_squared);
        },
        [&](int64_t, int group, double row_sum) { row_sums[group] = row_sum; },
        [&](int64_t, int64_t done) {
          if (tid == 0)
            for (int64_t i = 0; i < done; ++i) sum += row_sums[i];
        });
    if (tid == 0) w.update_partial[k] = sum;
  } else {
    const S* gg = g + item.begin;
    const S* variance = static_cast<const S*>(rec.moment) + item.begin;
    const double sum = block_lane_sum(item.end - item.begin, lanes, [&](int64_t j) {
      return adafactor_update(sign * to_opmath(gg[j]), to_opmath(variance[j]), eps1_squared);
    });
    if (tid == 0) w.update_partial[k] = sum;
  }
}

// ---- per tensor: the update's coefficient ----------------------------------------------------
template <typename S>
__global__ void __launch_bounds__(kPrologueThreads) scale_kernel(const __grid_constant__ Shared shared) {
  using T = typename OpMath<S>::type;
  const Workspace& w = shared.w;
  const int64_t t = int64_t(blockIdx.x) * kPrologueThreads + int64_t(threadIdx.x);
  if (t >= w.n) return;
  FactoredRecord& rec = w.records[t];
  if (rec.items == 0) return;
  double sum = 0.0;
  for (int64_t k = rec.first_item; k < rec.first_item + rec.items; ++k) sum += w.update_partial[k];
  rec.coefficient = adafactor_coefficient<T>(shared.options, rec.alpha, sum, rec.numel);
}

// ---- pass C: decay and update the params ---------------------------------------------------
template <typename S>
__global__ void __launch_bounds__(kThreads) pass_c_kernel(const __grid_constant__ Shared shared) {
  using T = typename OpMath<S>::type;
  const Workspace& w = shared.w;
  const AdafactorOptions& o = shared.options;
  const int64_t k = int64_t(blockIdx.x);
  const FactoredRecord& rec = w.records[owner_of(w.item_ends, w.n, k)];
  const ItemRange item = item_range(rec, k - rec.first_item);
  const S* g = static_cast<const S*>(rec.grad);
  S* p = static_cast<S*>(rec.param);
  const T sign = o.maximize ? T(-1) : T(1);
  const T eps1_squared = T(o.eps1 * o.eps1);
  const T decay = o.weight_decay != 0.0 ? T(1.0 - rec.scalars.lr * o.weight_decay) : T(1);
  const T coefficient = T(rec.coefficient);
  const int tid = int(threadIdx.x);
  if (rec.rows > 0) {
    const int64_t C = rec.cols;
    const double* cols = w.doubles + rec.col_values + item.slice * C;
    const double* rows = w.doubles + rec.row_values;
    const T mean = T(w.doubles[rec.means + item.slice]);
    const int64_t count = (item.end - item.begin) * C;
    for (int64_t j = tid; j < count; j += kThreads) {
      const int64_t r = item.begin + j / C, c = j % C;
      const T u = adafactor_update(sign * to_opmath(g[r * C + c]), factored_estimate(T(rows[r]), T(cols[c]), mean),
                                   eps1_squared);
      p[r * C + c] = from_opmath<S>(adafactor_param(to_opmath(p[r * C + c]), u, decay, coefficient));
    }
  } else {
    const S* variance = static_cast<const S*>(rec.moment);
    for (int64_t j = item.begin + tid; j < item.end; j += kThreads) {
      const T u = adafactor_update(sign * to_opmath(g[j]), to_opmath(variance[j]), eps1_squared);
      p[j] = from_opmath<S>(adafactor_param(to_opmath(p[j]), u, decay, coefficient));
    }
  }
}

// The host's plan of one call: per tensor its columns, and the totals.
struct Plan {
  std::vector<std::array<int64_t, kColumns>> columns;
  int64_t items = 0, units = 0, doubles = 0;
};

Plan plan_of(const TensorTable& table) {
  Plan plan;
  plan.columns.resize(size_t(table.n));
  for (int64_t i = 0; i < table.n; ++i) {
    const int64_t numel = table.data[kFactoredNumel * table.n + i];
    const int64_t rows = table.data[kFactoredRows * table.n + i];
    const int64_t cols = table.data[kFactoredCols * table.n + i];
    const std::string which = "fusedopt cuda adafactor: tensor " + std::to_string(i);
    if (numel < 0 || rows < 0 || cols < 0) throw std::invalid_argument(which + " has a negative size");
    // A zero-size param (any shape, (0, 5) included, whose R = 0 reads as a vector) only
    // counts its step, as on the CPU.
    const bool factored = rows > 0, used = numel > 0;
    if (used && factored && (cols == 0 || numel % (rows * cols) != 0))
      throw std::invalid_argument(which + ": its element count is no multiple of rows x columns");
    if (used && !factored && cols != numel)
      throw std::invalid_argument(which + ": a vector's columns must be its element count");
    const int64_t lead = factored && used ? numel / (rows * cols) : 1;
    const int64_t block_rows = factored && used ? (kFactoredItem / cols > 1 ? kFactoredItem / cols : 1) : 1;
    const int64_t per_slice = factored && used ? (rows + block_rows - 1) / block_rows : 0;
    const int64_t items = numel == 0 ? 0 : factored ? lead * per_slice : (numel + kFactoredItem - 1) / kFactoredItem;
    const int64_t units = numel == 0 ? 0 : factored ? lead : 1;
    std::array<int64_t, kColumns>& c = plan.columns[size_t(i)];
    c[kParamColumn] = table.data[kFactoredParam * table.n + i];
    c[kGradColumn] = table.data[kFactoredGrad * table.n + i];
    c[kStepColumn] = table.data[kFactoredStep * table.n + i];
    c[kMomentColumn] = table.data[kFactoredMoment * table.n + i];
    c[kColMomentColumn] = factored ? table.data[kFactoredColMoment * table.n + i] : 0;
    c[kNumelColumn] = numel;
    c[kLeadColumn] = lead;
    c[kRowsColumn] = rows;
    c[kColsColumn] = cols;
    c[kBlockRowsColumn] = block_rows;
    c[kItemsPerSliceColumn] = per_slice;
    c[kFirstItemColumn] = plan.items;
    c[kItemsColumn] = items;
    c[kFirstUnitColumn] = plan.units;
    c[kUnitsColumn] = units;
    const bool moments = factored && used;
    c[kColPartialsColumn] = plan.doubles;
    plan.doubles += moments ? items * cols : 0;
    c[kRowValuesColumn] = plan.doubles;
    plan.doubles += moments ? lead * rows : 0;
    c[kColValuesColumn] = plan.doubles;
    plan.doubles += moments ? lead * cols : 0;
    c[kMeansColumn] = plan.doubles;
    plan.doubles += moments ? lead : 0;
    plan.items += items;
    plan.units += units;
  }
  return plan;
}

// Bytes of the workspace: records, item and unit ends, two partials per item, the doubles.
int64_t bytes_of(const Plan& plan, int64_t n) {
  return n * (int64_t(sizeof(FactoredRecord)) + 16) + 8 * (2 * plan.items + plan.doubles);
}

template <int64_t kParameterLimit>
void prologue_launches(const Plan& plan, const Shared& shared, const OpCall& call) {
  using Args = PrologueArgs<kParameterLimit>;
  const int64_t n = int64_t(plan.columns.size());
  for (int64_t first = 0; first < n; first += Args::kCapacity) {
    Args args;  // only columns[0 .. count) is meaningful
    args.first = first;
    args.count = int32_t(n - first < Args::kCapacity ? n - first : Args::kCapacity);
    for (int32_t i = 0; i < args.count; ++i)
      for (int c = 0; c < kColumns; ++c) args.columns[i][c] = plan.columns[size_t(first + i)][size_t(c)];
    const unsigned blocks = unsigned((args.count + kPrologueThreads - 1) / kPrologueThreads);
    prologue_kernel<kParameterLimit><<<blocks, kPrologueThreads, 0, call.stream()>>>(args, shared);
    call.check_launch();
  }
}

template <typename S>
void run(const Plan& plan, const Shared& shared, const OpCall& call) {
#if FUSEDOPT_LARGE_PARAMETER_BLOCKS
  if (call.large_parameter_blocks() && shared.w.n > PrologueArgs<kClassicParameterLimit>::kCapacity)
    prologue_launches<kLargeParameterLimit>(plan, shared, call);
  else
#endif
    prologue_launches<kClassicParameterLimit>(plan, shared, call);
  if (plan.items == 0) return;  // the counters advanced; no element to update
  const unsigned items = unsigned(plan.items), units = unsigned(plan.units);
  const unsigned tensor_blocks = unsigned((shared.w.n + kPrologueThreads - 1) / kPrologueThreads);
  pass_a_kernel<S><<<items, kThreads, 0, call.stream()>>>(shared);
  call.check_launch();
  tensor_kernel<S><<<units, kThreads, 0, call.stream()>>>(shared);
  call.check_launch();
  pass_b_kernel<S><<<items, kThreads, 0, call.stream()>>>(shared);
  call.check_launch();
  scale_kernel<S><<<tensor_blocks, kPrologueThreads, 0, call.stream()>>>(shared);
  call.check_launch();
  pass_c_kernel<S><<<items, kThreads, 0, call.stream()>>>(shared);
  call.check_launch();
}

}  // namespace

int64_t adafactor_workspace_bytes(const TensorTable& table) {
  if (table.n < 0) throw std::invalid_argument("fusedopt cuda adafactor: negative tensor count");
  return bytes_of(plan_of(table), table.n);
}

void adafactor(const TensorTable& table, DType dtype, const AdafactorOptions& options, uintptr_t workspace,
               int64_t workspace_bytes, int device, uintptr_t stream) {
  constexpr const char* kOp = "adafactor";
  // Every check before anything is launched: nothing changes on a refused call.
  if (table.n < 0) throw std::invalid_argument("fusedopt cuda adafactor: negative tensor count");
  if (table.n == 0) return;
  const Plan plan = plan_of(table);
  const int64_t needed = bytes_of(plan, table.n);
  if (workspace == 0 || workspace % 16 != 0 || workspace_bytes < needed)
    throw std::invalid_argument("fusedopt cuda adafactor: the workspace must be 16-byte aligned and " +
                                std::to_string(needed) + " bytes long for this table");
  if (plan.items > kMaxChunksPerLaunch || plan.units > kMaxChunksPerLaunch)
    throw std::invalid_argument("fusedopt cuda adafactor: more work items than one launch covers");
  Shared shared;
  char* base = reinterpret_cast<char*>(workspace);
  const int64_t n = table.n;
  shared.w.records = reinterpret_cast<FactoredRecord*>(base);
  shared.w.item_ends = reinterpret_cast<int64_t*>(base + n * int64_t(sizeof(FactoredRecord)));
  shared.w.unit_ends = shared.w.item_ends + n;
  shared.w.param_partial = reinterpret_cast<double*>(shared.w.unit_ends + n);
  shared.w.update_partial = shared.w.param_partial + plan.items;
  shared.w.doubles = shared.w.update_partial + plan.items;
  shared.w.n = n;
  shared.options = options;
  const OpCall call(kOp, device, stream);
  dispatch_dtype(dtype, [&](auto tag) { run<decltype(tag)>(plan, shared, call); });
}

}  // namespace fusedopt::cuda
