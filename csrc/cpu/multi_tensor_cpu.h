// Spreads the elements of every tensor in a table evenly over OpenMP threads: each
// thread takes one contiguous slice of the concatenated elements, so one big tensor and
// a thousand small ones balance the same way and no chunk list is built.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "fusedopt/reduce.h"
#include "fusedopt/tensor_table.h"

namespace fusedopt::cpu {

// Below this many elements per thread, waking threads costs more than it saves.
constexpr int64_t kMinElementsPerThread = 1 << 15;

// The threads worth waking for `elements` elements of work: at most `num_threads`, at least 1.
// Every kernel sizes its team by elements, never by tensors or blocks: a thousand tiny tensors
// are one thread's work, and a team of two there waits on a core a busy machine may not give.
inline int useful_threads(int num_threads, int64_t elements) {
  return int(std::clamp<int64_t>(elements / kMinElementsPerThread, 1, std::max(num_threads, 1)));
}

// Where share k of `total` elements cut into `parts` nearly equal shares begins (k = parts:
// total), without the overflow of total * k. Both the updates' slices and the reductions'
// blocks are shared by it, so a thread reads in one pass about what it writes in the next.
inline int64_t equal_share_start(int64_t total, int64_t parts, int64_t k) {
  return k == parts ? total : total / parts * k + total % parts * k / parts;
}

// The reduction passes' work list: every (tensor, block of kSumBlock elements) pair of a table,
// numbered tensor by tensor. Threads share the blocks (for_each_block); each tensor's partials
// are then added in block order by one thread, so the sums do not depend on the thread count.
struct SumBlockList {
  std::vector<int64_t> first;  // first[i]: tensor i's first block; first[n]: the block count
  std::vector<int64_t> owner;  // owner[b]: the tensor block b belongs to
  std::vector<int64_t> start;  // start[b]: the table's elements before block b; start[blocks]: all
  int64_t blocks = 0;
  int team = 1;  // the threads worth waking: by elements, and at most one per block

  SumBlockList(const TensorTable& table, int num_threads) : first(size_t(table.n) + 1, 0) {
    for (int64_t i = 0; i < table.n; ++i) first[size_t(i) + 1] = first[size_t(i)] + sum_blocks(table.numel(i));
    blocks = first[size_t(table.n)];
    owner.resize(size_t(blocks));
    start.resize(size_t(blocks) + 1);
    int64_t elements = 0;
    for (int64_t i = 0; i < table.n; ++i) {
      for (int64_t b = first[size_t(i)]; b < first[size_t(i) + 1]; ++b) {
        owner[size_t(b)] = i;
        start[size_t(b)] = elements + (b - first[size_t(i)]) * kSumBlock;
      }
      elements += table.numel(i);
    }
    start[size_t(blocks)] = elements;
    team = int(std::min<int64_t>(useful_threads(num_threads, elements), std::max<int64_t>(blocks, 1)));
  }
  // Block b's first element within its tensor.
  int64_t begin(int64_t b) const { return (b - first[size_t(owner[size_t(b)])]) * kSumBlock; }
};

// body(b) for every block of `list`, on list.team threads. Each thread takes the contiguous run
// of blocks that start in its equal share of the elements, as for_each_slice shares them: a
// schedule(static) over blocks counted a tensor's partial last block, or a small tensor's one
// block, as a whole one (150,000 + 40 x 3,000 elements: 1.53 x an equal share on one of two
// threads, 1.11 x here; bench/block_balance.py), and this gives each thread about the elements
// update() then gives it, still in its cache. Which thread adds a block changes no bit. The
// share is computed from the team the runtime gave, which may be smaller than asked.
template <typename Body>
void for_each_block(const SumBlockList& list, Body&& body) {
#pragma omp parallel num_threads(list.team) if (list.team > 1)
  {
    const int64_t thread = omp_get_thread_num(), threads = omp_get_num_threads();
    const auto first_block_of = [&](int64_t k) -> int64_t {
      const int64_t boundary = equal_share_start(list.start[size_t(list.blocks)], threads, k);
      return std::lower_bound(list.start.begin(), list.start.end(), boundary) - list.start.begin();
    };
    for (int64_t b = first_block_of(thread), end = first_block_of(thread + 1); b < end; ++b) body(b);
  }
}

// Slice boundaries fall on multiples of this (64 bytes of float32) to avoid false sharing.
constexpr int64_t kSliceAlign = 16;

// body(tensor_index, begin, end) updates elements [begin, end) of one tensor. With `block`
// (a power of two; 8-bit states' kQuantBlock) every begin is a multiple of it: each tensor
// counts as its size rounded up to whole blocks and the slice boundaries fall on blocks.
template <typename Body>
void for_each_slice(const TensorTable& table, int num_threads, Body&& body, int64_t block = 1) {
  const int64_t align = std::max(block, kSliceAlign);
  std::vector<int64_t> offsets(table.n + 1, 0);
  for (int64_t i = 0; i < table.n; ++i) offsets[i + 1] = offsets[i] + (table.numel(i) + block - 1) / block * block;
  const int64_t total = offsets[table.n];
  const int threads = useful_threads(num_threads, total);
  if (threads <= 1) {
    for (int64_t i = 0; i < table.n; ++i) body(i, int64_t(0), table.numel(i));
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int64_t tid = omp_get_thread_num(), nth = omp_get_num_threads();
    const auto boundary = [&](int64_t k) { return k == nth ? total : equal_share_start(total, nth, k) / align * align; };
    const int64_t begin = boundary(tid), end = boundary(tid + 1);
    int64_t i = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
    for (; i < table.n && offsets[i] < end; ++i) {
      const int64_t lo = std::max(begin, offsets[i]) - offsets[i];
      const int64_t hi = std::min(std::min(end, offsets[i + 1]) - offsets[i], table.numel(i));
      if (hi > lo) body(i, lo, hi);
    }
  }
}

// The reduction loops (a load, an add and a store of an in-memory lane per element, to keep
// fusedopt/reduce.h's order) lose the hardware prefetchers' pace: summing 20M float32 from
// memory took 9 ms on one Zen 4 core where a plain sum takes 3.5, and 4.8 with this. Each row
// of kSumLanes elements asks for the row kPrefetchRows ahead, whole cache lines, within the
// range [row, end) only. Into L2, not L1 (locality 2: prefetcht1): eight rows of four
// streams ahead are as large as L1 itself, and evicted the lanes and rows in use; LAMB's
// norm pass over 16M elements from memory ran 1.3-1.5 ns an element with L1 prefetches,
// 1.0 with L2 ones (one Zen 4 core). A prefetch changes no result.
constexpr int64_t kPrefetchRows = 8;
template <typename T>
inline void prefetch_ahead(const T* row, int64_t row_elements, int64_t remaining) {
  const int64_t ahead = kPrefetchRows * row_elements;
  if (row == nullptr || remaining < ahead + row_elements) return;
  const char* line = reinterpret_cast<const char*>(row + ahead);
  for (int64_t byte = 0; byte < row_elements * int64_t(sizeof(T)); byte += 64) __builtin_prefetch(line + byte, 0, 2);
}

// The param value the math updates: the fp32 master copy when there is one (kMaster).
template <typename S, bool kMaster>
inline typename OpMath<S>::type load_param(const S* p, const float* master, int64_t j) {
  if constexpr (kMaster) return master[j];
  else return to_opmath(p[j]);
}
template <typename S, bool kMaster>
inline void store_param(S* p, float* master, int64_t j, typename OpMath<S>::type value) {
  if constexpr (kMaster) master[j] = value;
  p[j] = from_opmath<S>(value);
}

// Calls body(std::true_type{}) or body(std::false_type{}): a run-time option as a template
// argument, so each loop is compiled without the branch (a conditional store in the loop
// would stop the compiler from vectorising it).
template <typename Body>
void with_flag(bool flag, Body&& body) {
  if (flag) body(std::true_type{});
  else body(std::false_type{});
}

// Increments each tensor's step counter and returns the per-tensor coefficients, computing
// them once per distinct step value (all tensors of a bucket usually share one).
template <typename Coefficients, typename Make>
std::vector<Coefficients> advance_steps(const TensorTable& table, Make&& make) {
  std::vector<Coefficients> out(table.n);
  float last_step = -1.0f;
  for (int64_t i = 0; i < table.n; ++i) {
    float* step = table.ptr<float>(kStepRow, i);
    *step += 1.0f;
    if (i == 0 || *step != last_step) out[i] = make(double(*step));
    else out[i] = out[i - 1];
    last_step = *step;
  }
  return out;
}

// For kinds with scalar states (ASGD's eta, NAdam's mu_product): increments each tensor's
// step counter and returns its coefficients, make(step, scalars) reading and advancing the
// tensor's kScalarStates scalars (rows from `first_row`), once per tensor: they differ per
// tensor, so nothing is shared between tensors.
template <typename Coefficients, int kScalarStates, typename Make>
std::vector<Coefficients> advance_steps_and_scalars(const TensorTable& table, int64_t first_row, Make&& make) {
  std::vector<Coefficients> out(table.n);
  for (int64_t i = 0; i < table.n; ++i) {
    float* step = table.ptr<float>(kStepRow, i);
    *step += 1.0f;
    float* scalars[kScalarStates];
    for (int j = 0; j < kScalarStates; ++j) scalars[j] = table.ptr<float>(first_row + j, i);
    out[i] = make(double(*step), static_cast<float* const*>(scalars));
  }
  return out;
}

}  // namespace fusedopt::cpu
