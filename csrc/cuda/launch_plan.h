// How a multi-tensor op is cut into kernel launches: the chunk geometry, the layout of the
// kernel parameter block that carries the tensors' addresses, and the planner that fills
// it. Host and device code but no CUDA runtime calls, so describe_launch_plan (which the
// CPU tests call) runs the very planner the launcher runs.
#pragma once

#include <cuda_runtime_api.h>  // CUDART_VERSION

#include <cstdint>
#include <stdexcept>
#include <string>

#include "fusedopt/common.h"
#include "fusedopt/tensor_table.h"

// Parameter blocks of 32,764 bytes need CUDA 12.1+ to compile and sm_70+ in every target
// architecture (nvcc lists them in ascending order in __CUDA_ARCH_LIST__). The driver's
// share of the condition is checked at run time (supports_large_parameter_blocks).
#define FUSEDOPT_FIRST_OF(first, ...) first
#define FUSEDOPT_LOWEST_ARCH(...) FUSEDOPT_FIRST_OF(__VA_ARGS__)
#if CUDART_VERSION >= 12010 && (!defined(__CUDA_ARCH_LIST__) || FUSEDOPT_LOWEST_ARCH(__CUDA_ARCH_LIST__) >= 700)
#define FUSEDOPT_LARGE_PARAMETER_BLOCKS 1
#else
#define FUSEDOPT_LARGE_PARAMETER_BLOCKS 0
#endif

namespace fusedopt::cuda {

// ---- chunks ------------------------------------------------------------------------------
// One thread block per chunk. On the aligned path every thread moves kVectorsPerThread
// 16-byte vectors of each list, so a chunk is 32 KB per list whatever the dtype (8,192
// float32 elements): small enough that one large tensor still fills every SM.
constexpr int kThreadsPerBlock = 256;
constexpr int64_t kVectorBytes = 16;
constexpr int64_t kVectorsPerThread = 8;

constexpr int64_t chunk_elements(int64_t element_bytes) {
  return kThreadsPerBlock * kVectorsPerThread * (kVectorBytes / element_bytes);
}

inline void check_element_bytes(int64_t element_bytes) {
  if (element_bytes != 2 && element_bytes != 4 && element_bytes != 8)
    throw std::invalid_argument("fusedopt cuda: element size must be 2, 4 or 8 bytes, not " +
                                std::to_string(element_bytes));
}

// ---- the parameter block -----------------------------------------------------------------
// A kernel's parameters may total 4,096 bytes, or 32,764 with CUDA 12.1+ on Volta and newer.
constexpr int64_t kClassicParameterLimit = 4096;
constexpr int64_t kLargeParameterLimit = 32764;
// Bytes of the limit kept for the op's own parameter (its hyper-parameters).
constexpr int64_t kOpParameterBytes = 256;
// Blocks of one launch: the limit of gridDim.x.
constexpr int64_t kMaxChunksPerLaunch = 2147483647;
// Most table rows a tensor's record may carry (param, grad, step and up to five states).
constexpr int kMaxAddresses = 8;

// The tensors of one launch, passed by value as the kernel's first parameter. The payload
// is 32-bit cells (R = 2 * (1 + addresses) cells per record):
//   records       cells [t*R, (t+1)*R): tensor t's element count, then its addresses, each
//                 64-bit value as two cells, low half first;
//   first chunks  cell capacity*R + t, for t in [0, tensors]: tensor t owns the blocks
//                 [first_chunk(t), first_chunk(t+1)) of the grid.
// A block finds its tensor by binary search over the first chunks, so no per-block map
// limits how many chunks a launch covers (ATen's and Apex's block-to-tensor arrays cap a
// 4 KB launch at 320 chunks); only the records limit how many tensors it carries.
template <int64_t kParameterLimit>
struct MultiTensorArgs {
  static constexpr int64_t kLimit = kParameterLimit;
  static constexpr int64_t kHeaderBytes = 16;
  static constexpr int64_t kCells = ((kParameterLimit - kOpParameterBytes) / 8 * 8 - kHeaderBytes) / 4;

  int32_t tensors;
  int32_t record_cells;
  int32_t capacity;  // tensors that fit, for this record size
  uint32_t chunks;   // blocks of the launch
  uint32_t cells[kCells];

  static constexpr int32_t capacity_for(int addresses) {
    return int32_t((kCells - 1) / (2 * (1 + addresses) + 1));
  }
  // Bytes of the parameter block this launch fills, its op's share included.
  int64_t used_bytes() const {
    return kHeaderBytes + 4 * (int64_t(tensors) * record_cells + tensors + 1) + kOpParameterBytes;
  }

  // ---- host: filling
  void reset(int addresses) {
    tensors = 0;
    chunks = 0;
    record_cells = 2 * (1 + addresses);
    capacity = capacity_for(addresses);
    cells[first_chunk_cell(0)] = 0;
  }
  bool has_room(int64_t more_chunks) const {
    return tensors < capacity && int64_t(chunks) + more_chunks <= kMaxChunksPerLaunch;
  }
  // address_of(slot) gives the tensor's address for each of the record's slots.
  template <typename AddressOf>
  void add(int64_t numel, int64_t tensor_chunks, AddressOf&& address_of) {
    uint32_t* record = cells + int64_t(tensors) * record_cells;
    put64(record, uint64_t(numel));
    for (int slot = 0; slot < addresses(); ++slot) put64(record + 2 + 2 * slot, uint64_t(address_of(slot)));
    chunks += uint32_t(tensor_chunks);
    ++tensors;
    cells[first_chunk_cell(tensors)] = chunks;
  }

  // ---- host and device: reading
  FUSEDOPT_HD int addresses() const { return record_cells / 2 - 1; }
  FUSEDOPT_HD int64_t numel(int t) const { return int64_t(get64(cells + int64_t(t) * record_cells)); }
  FUSEDOPT_HD uint64_t address(int t, int slot) const {
    return get64(cells + int64_t(t) * record_cells + 2 + 2 * slot);
  }
  FUSEDOPT_HD uint32_t first_chunk(int t) const { return cells[first_chunk_cell(t)]; }
  // The tensor that owns block `chunk`: the last t with first_chunk(t) <= chunk. Empty
  // tensors are never carried, so first chunks strictly increase and the answer is unique.
  FUSEDOPT_HD int tensor_of_chunk(uint32_t chunk) const {
    int low = 0, high = tensors - 1;
    while (low < high) {
      const int middle = (low + high + 1) / 2;
      if (first_chunk(middle) <= chunk) low = middle;
      else high = middle - 1;
    }
    return low;
  }

 private:
  FUSEDOPT_HD int64_t first_chunk_cell(int t) const { return int64_t(capacity) * record_cells + t; }
  static void put64(uint32_t* at, uint64_t value) {
    at[0] = uint32_t(value);
    at[1] = uint32_t(value >> 32);
  }
  FUSEDOPT_HD static uint64_t get64(const uint32_t* at) { return uint64_t(at[0]) | (uint64_t(at[1]) << 32); }
};

static_assert(sizeof(MultiTensorArgs<kClassicParameterLimit>) + kOpParameterBytes <= kClassicParameterLimit);
static_assert(sizeof(MultiTensorArgs<kLargeParameterLimit>) + kOpParameterBytes <= kLargeParameterLimit);

// The step counters one launch of the increment kernel carries, and GradScaler's
// found_inf (a skipped step advances no counter).
template <int64_t kParameterLimit>
struct StepCounterArgs {
  static constexpr int64_t kLimit = kParameterLimit;
  static constexpr int64_t kCapacity = (kParameterLimit - int64_t(sizeof(GradTransform)) - 8) / 8;
  GradTransform transform;
  int32_t count;
  float* counters[kCapacity];
};

static_assert(sizeof(StepCounterArgs<kClassicParameterLimit>) <= kClassicParameterLimit);
static_assert(sizeof(StepCounterArgs<kLargeParameterLimit>) <= kLargeParameterLimit);

// ---- the planner -------------------------------------------------------------------------
// Whether a table needs the large parameter block: only when it does not fit one classic
// launch, because every launch copies its whole parameter block (32 KB instead of 4 KB).
inline bool needs_large_parameter_block(const TensorTable& table, int addresses, int64_t element_bytes) {
  const int64_t chunk = chunk_elements(element_bytes);
  int64_t tensors = 0, chunks = 0;
  for (int64_t i = 0; i < table.n; ++i) {
    const int64_t numel = table.numel(i);
    tensors += numel > 0;
    chunks += (numel + chunk - 1) / chunk;
  }
  return tensors > MultiTensorArgs<kClassicParameterLimit>::capacity_for(addresses) || chunks > kMaxChunksPerLaunch;
}

// Calls launch(args) once per launch, covering every chunk of every non-empty tensor of
// `table` exactly once, in table order. Each record carries the table rows
// rows[0 .. addresses) of its tensor. A tensor never spans two launches: a launch closes
// when the next tensor's record or chunks would not fit.
template <int64_t kParameterLimit, typename Launch>
void plan_launches(const TensorTable& table, const int64_t* rows, int addresses, int64_t element_bytes,
                   Launch&& launch) {
  check_element_bytes(element_bytes);
  if (addresses < 1 || addresses > kMaxAddresses)
    throw std::invalid_argument("fusedopt cuda: a tensor carries 1 to " + std::to_string(kMaxAddresses) +
                                " addresses, not " + std::to_string(addresses));
  const int64_t chunk = chunk_elements(element_bytes);
  MultiTensorArgs<kParameterLimit> args;  // only the part reset() and add() write is meaningful
  args.reset(addresses);
  for (int64_t i = 0; i < table.n; ++i) {
    const int64_t numel = table.numel(i);
    if (numel <= 0) continue;
    const int64_t chunks = (numel + chunk - 1) / chunk;
    if (chunks > kMaxChunksPerLaunch)
      throw std::length_error("fusedopt cuda: a tensor of " + std::to_string(numel) +
                              " elements needs more thread blocks than one launch can have");
    if (!args.has_room(chunks)) {
      launch(args);
      args.reset(addresses);
    }
    args.add(numel, chunks, [&](int slot) { return table.data[rows[slot] * table.n + i]; });
  }
  if (args.tensors > 0) launch(args);
}

}  // namespace fusedopt::cuda
