// How a multi-tensor op is cut into kernel launches: the chunk geometry, the layout of the
// kernel parameter block that carries the tensors' addresses, and the planner that fills
// it. Host and device code but no CUDA runtime calls, so describe_launch_plan (which the
// CPU tests call) runs the very planner the launcher runs.
#pragma once

#include <cuda_runtime_api.h>  // CUDART_VERSION

#include <cstddef>  // offsetof
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
// One thread block per chunk; a chunk is a number of bytes of each param-dtype list (the
// float32 lists beside 16-bit params move twice as many), chosen at run time per call.
constexpr int kThreadsPerBlock = 256;
// Blocks an update kernel is compiled to fit on a multiprocessor (its launch bounds) are
// the optimizer's choice (min_blocks, usually fusedopt/optimizer.h's default_min_blocks: 4
// for float32 math, at most 64 registers a thread, 50% occupancy; 3 for float64 math,
// which spills at 64 registers, at most 80). Left to itself ptxas used up to 97 registers
// (RMSprop, 16-bit params with master weights: 2 blocks); tests/test_ptxas.py checks that
// no update kernel spills or uses stack.
constexpr int64_t kVectorBytes = 16;
// Chunks are whole 16-byte vectors for every thread of the block.
constexpr int64_t kChunkGranuleBytes = kThreadsPerBlock * kVectorBytes;
// The default chunk: 32 KB per list (8,192 float32 elements), 8 vectors per thread. Not
// yet tuned on a GPU: ATen uses 65,536 elements (256 KB of float32); smaller chunks give
// a large tensor more blocks to spread over the SMs, larger ones amortise each block's
// start (its tensor's lookup and coefficient load) over more elements. The bench sweeps
// it (`python -m fusedopt.bench --cuda-chunk-bytes ...`); set the winner here.
constexpr int64_t kDefaultChunkBytes = 32 * 1024;
constexpr int64_t kMaxChunkBytes = int64_t(1) << 30;

inline void check_element_bytes(int64_t element_bytes) {
  if (element_bytes != 2 && element_bytes != 4 && element_bytes != 8)
    throw std::invalid_argument("fusedopt cuda: element size must be 2, 4 or 8 bytes, not " +
                                std::to_string(element_bytes));
}

inline void check_chunk_bytes(int64_t chunk_bytes) {
  if (chunk_bytes < kChunkGranuleBytes || chunk_bytes > kMaxChunkBytes || chunk_bytes % kChunkGranuleBytes != 0)
    throw std::invalid_argument("fusedopt cuda: the chunk size must be a multiple of " +
                                std::to_string(kChunkGranuleBytes) + " bytes up to 2^30, not " +
                                std::to_string(chunk_bytes));
}

// Elements per chunk for a param dtype of `element_bytes` (checked: 2, 4 or 8).
inline int64_t chunk_elements(int64_t chunk_bytes, int64_t element_bytes) {
  check_chunk_bytes(chunk_bytes);
  check_element_bytes(element_bytes);
  return chunk_bytes / element_bytes;
}

// ---- the parameter block -----------------------------------------------------------------
// A kernel's parameters may total 4,096 bytes, or 32,764 with CUDA 12.1+ on Volta and newer.
constexpr int64_t kClassicParameterLimit = 4096;
constexpr int64_t kLargeParameterLimit = 32764;
// Bytes of the limit kept for the op's own parameter (its hyper-parameters).
constexpr int64_t kOpParameterBytes = 256;
// Blocks of one launch: the limit of gridDim.x.
constexpr int64_t kMaxChunksPerLaunch = 2147483647;
// Most addresses a tensor's record may carry (param, grad, a coefficient record, the states,
// the master copy and per-tensor coefficients; with 8-bit states each state's absmax too).
constexpr int kMaxAddresses = 12;

// The tensors of one launch, passed by value as the kernel's first parameter. The header
// says how many tensors it carries and how long a chunk is; the payload is 32-bit cells
// (R = 2 * (1 + addresses) cells per record):
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
  static constexpr int64_t kHeaderBytes = 24;
  static constexpr int64_t kCells = ((kParameterLimit - kOpParameterBytes) / 8 * 8 - kHeaderBytes) / 4;

  int32_t tensors;
  int32_t record_cells;
  int32_t capacity;  // tensors that fit, for this record size
  uint32_t chunks;   // blocks of the launch
  int64_t chunk_elements;
  uint32_t cells[kCells];

  static constexpr int32_t capacity_for(int addresses) {
    return int32_t((kCells - 1) / (2 * (1 + addresses) + 1));
  }
  // Bytes of the parameter block this launch fills, its op's share included.
  int64_t used_bytes() const {
    return kHeaderBytes + 4 * (int64_t(tensors) * record_cells + tensors + 1) + kOpParameterBytes;
  }

  // ---- host: filling
  void reset(int addresses, int64_t chunk) {
    chunk_elements = chunk;
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

// The prologue kernel's parameters (multi_tensor_apply.cuh): the step counters one launch
// advances, where it writes the coefficients of those tensors (the Prepared record of
// counters[0], the next ones kPreparedBytes apart; null when they are launch-wide) and the
// launch-wide record thread 0 writes (null when there is none, or another launch writes it).
// With scalar states (Kind::kScalarStates = K) each tensor has 1 + K pointers: its counter,
// then its scalar states, so counters[i * (1 + K) + j] and a launch carries kCapacity / (1 + K)
// tensors. next_step (a norm pass): the records are those of the coming update, from each
// counter + 1, and no counter advances.
template <int64_t kParameterLimit>
struct PrologueArgs {
  static constexpr int64_t kLimit = kParameterLimit;
  static constexpr int64_t kHeaderBytes = 24;
  static constexpr int64_t kCapacity = (kParameterLimit - kOpParameterBytes - kHeaderBytes) / 8;
  void* per_tensor;
  void* shared;
  int32_t count;
  int32_t next_step;  // in the header's padding: the header stays kHeaderBytes long
  float* counters[kCapacity];
};

static_assert(offsetof(PrologueArgs<kClassicParameterLimit>, counters) ==
              PrologueArgs<kClassicParameterLimit>::kHeaderBytes);
static_assert(sizeof(PrologueArgs<kClassicParameterLimit>) + kOpParameterBytes <= kClassicParameterLimit);
static_assert(sizeof(PrologueArgs<kLargeParameterLimit>) + kOpParameterBytes <= kLargeParameterLimit);

// ---- the planner -------------------------------------------------------------------------
// Whether a table needs the large parameter block: only when it does not fit one classic
// launch, because every launch copies its whole parameter block (32 KB instead of 4 KB).
inline bool needs_large_parameter_block(const TensorTable& table, int addresses, int64_t chunk) {
  int64_t tensors = 0, chunks = 0;
  for (int64_t i = 0; i < table.n; ++i) {
    const int64_t numel = table.numel(i);
    tensors += numel > 0;
    chunks += (numel + chunk - 1) / chunk;
  }
  return tensors > MultiTensorArgs<kClassicParameterLimit>::capacity_for(addresses) || chunks > kMaxChunksPerLaunch;
}

// Calls launch(args) once per launch, covering every chunk (of `chunk` elements) of every
// non-empty tensor of `table` exactly once, in table order. Record slot s of tensor i
// carries address_of(i, s) for s in [0, addresses). A tensor never spans two launches: a
// launch closes when the next tensor's record or chunks would not fit.
template <int64_t kParameterLimit, typename AddressOf, typename Launch>
void plan_launches(const TensorTable& table, AddressOf&& address_of, int addresses, int64_t chunk,
                   Launch&& launch) {
  if (addresses < 1 || addresses > kMaxAddresses)
    throw std::invalid_argument("fusedopt cuda: a tensor carries 1 to " + std::to_string(kMaxAddresses) +
                                " addresses, not " + std::to_string(addresses));
  if (chunk < 1) throw std::invalid_argument("fusedopt cuda: a chunk must hold at least one element");
  MultiTensorArgs<kParameterLimit> args;  // only the part reset() and add() write is meaningful
  args.reset(addresses, chunk);
  for (int64_t i = 0; i < table.n; ++i) {
    const int64_t numel = table.numel(i);
    if (numel <= 0) continue;
    const int64_t chunks = (numel + chunk - 1) / chunk;
    if (chunks > kMaxChunksPerLaunch)
      throw std::length_error("fusedopt cuda: a tensor of " + std::to_string(numel) +
                              " elements needs more thread blocks than one launch can have");
    if (!args.has_room(chunks)) {
      launch(args);
      args.reset(addresses, chunk);
    }
    args.add(numel, chunks, [&](int slot) { return address_of(i, slot); });
  }
  if (args.tensors > 0) launch(args);
}

}  // namespace fusedopt::cuda
