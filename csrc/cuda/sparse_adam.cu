// Lazy (sparse-row) Adam on the GPU: the present rows of every tensor of a sparse-row table
// (fusedopt/sparse_rows.h, built by fusedopt/_sparse_rows.py) in one update launch, with
// the CPU kernel's bits (csrc/cpu/sparse_adam_cpu.cpp): the same header's coefficients and
// per-element update, compiled without multiply-add contraction.
//
// Two kernels, only stream work (no host synchronisation, no memory of its own):
//  - the prologue (a thread per tensor) advances each step counter, as the CPU kernel does
//    before any row (even for a grad with no rows, as torch.optim.SparseAdam), computes
//    the tensor's coefficients from it (and from lr, or the float64 lr tensor, read on the
//    device), and writes a record per tensor into the workspace: coefficients and
//    addresses, plus each tensor's end in the flattened list of present rows. The table is
//    host memory, so its columns travel in the prologue's parameter block, as many tensors
//    a launch as the block holds.
//  - the update (a warp per present row of any tensor) finds its tensor by binary search
//    over those ends and updates the row's elements, lanes striding along the row.
#include <stdexcept>
#include <string>

#include "cuda/cuda_ops.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/launch_plan.h"
#include "fusedopt/sparse_rows.h"

namespace fusedopt::cuda {
namespace {

using Hyper = optimizers::adam::Hyper;

// One tensor's record in the workspace, written by the prologue, read by the update.
template <typename T>
struct SparseRecord {
  optimizers::adam::Coefficients<T> k;
  T* param;
  const T* values;  // the grad's present rows, contiguous
  T* exp_avg;
  T* exp_avg_sq;
  T* max_exp_avg_sq;     // null without amsgrad
  const int64_t* index;  // row numbers, unique and increasing (Python checked)
  int64_t length;        // elements per row
  int64_t param_rows;    // rows of the param: no row at or past it is written
};
static_assert(sizeof(SparseRecord<double>) <= kSparseRecordBytes, "a sparse record outgrows its workspace share");
static_assert(sizeof(SparseRecord<float>) <= kSparseRecordBytes, "a sparse record outgrows its workspace share");

// What every prologue launch of a call shares: the second kernel parameter.
struct SparseScalars {
  Hyper hyper;
  double lr;
  const double* lr_tensor;  // null: lr
};
static_assert(sizeof(SparseScalars) <= kOpParameterBytes, "the scalars outgrow their share of the parameter block");

// The table columns a prologue thread reads, per tensor.
enum Column : int {
  kStepColumn, kRowsEndColumn, kLengthColumn, kParamRowsColumn, kIndexColumn, kParamColumn, kValuesColumn,
  kExpAvgColumn, kExpAvgSqColumn, kMaxExpAvgSqColumn, kColumns,
};

// Tensors [first, first + count) of a call: their columns, and where their records and row
// ends go in the workspace.
template <int64_t kParameterLimit>
struct SparsePrologueArgs {
  static constexpr int64_t kHeaderBytes = 24;
  static constexpr int64_t kCapacity = (kParameterLimit - kOpParameterBytes - kHeaderBytes) / (8 * kColumns);
  char* records;     // the record of tensor `first`
  int64_t* row_ends;  // its row end
  int32_t count;
  int64_t columns[kCapacity][kColumns];
};
static_assert(sizeof(SparsePrologueArgs<kClassicParameterLimit>) + kOpParameterBytes <= kClassicParameterLimit);
static_assert(sizeof(SparsePrologueArgs<kLargeParameterLimit>) + kOpParameterBytes <= kLargeParameterLimit);

template <typename T>
__device__ __forceinline__ T* address(int64_t value) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(value));
}

constexpr int kPrologueThreads = 128;

template <typename T, int64_t kParameterLimit>
__global__ void __launch_bounds__(kPrologueThreads)
    sparse_prologue_kernel(const __grid_constant__ SparsePrologueArgs<kParameterLimit> args,
                           const __grid_constant__ SparseScalars scalars) {
  const int i = int(blockIdx.x) * kPrologueThreads + int(threadIdx.x);
  if (i >= args.count) return;
  const int64_t* column = args.columns[i];
  float& step = *address<float>(column[kStepColumn]);
  step += 1.0f;  // the CPU kernel's order: the counter first, the coefficients from it
  SparseRecord<T> record;
  record.k = optimizers::adam::coefficients<T>(scalars.hyper, learning_rate(scalars.lr_tensor, scalars.lr),
                                               double(step));
  record.param = address<T>(column[kParamColumn]);
  record.values = address<const T>(column[kValuesColumn]);
  record.exp_avg = address<T>(column[kExpAvgColumn]);
  record.exp_avg_sq = address<T>(column[kExpAvgSqColumn]);
  record.max_exp_avg_sq = address<T>(column[kMaxExpAvgSqColumn]);
  record.index = address<const int64_t>(column[kIndexColumn]);
  record.length = column[kLengthColumn];
  record.param_rows = column[kParamRowsColumn];
  *reinterpret_cast<SparseRecord<T>*>(args.records + int64_t(i) * kSparseRecordBytes) = record;
  args.row_ends[i] = column[kRowsEndColumn];
}

constexpr int kRowThreads = 256;
constexpr int kLanes = 32;  // a warp per row
constexpr int kRowsPerBlock = kRowThreads / kLanes;

// Row `r` of the flattened list belongs to the first tensor whose row end exceeds it.
__device__ __forceinline__ int64_t tensor_of_row(const int64_t* row_ends, int64_t n, int64_t r) {
  int64_t low = 0, high = n - 1;
  while (low < high) {
    const int64_t middle = low + (high - low) / 2;
    if (row_ends[middle] > r) high = middle;
    else low = middle + 1;
  }
  return low;
}

// The update's parameters: the prologue's records and row ends, for every tensor of the call.
struct SparseRowsArgs {
  const char* records;
  const int64_t* row_ends;
  int64_t n;           // tensors
  int64_t total_rows;  // present rows of all of them: row_ends[n - 1]
};

template <typename T, bool kAmsgrad>
__global__ void __launch_bounds__(kRowThreads) sparse_rows_kernel(const __grid_constant__ SparseRowsArgs args) {
  const int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + int64_t(threadIdx.x) / kLanes;
  if (r >= args.total_rows) return;
  const int64_t t = tensor_of_row(args.row_ends, args.n, r);
  const SparseRecord<T>& record = *reinterpret_cast<const SparseRecord<T>*>(args.records + t * kSparseRecordBytes);
  const int64_t local = r - (t == 0 ? 0 : args.row_ends[t - 1]);
  const int64_t row = record.index[local];
  if (row < 0 || row >= record.param_rows) return;  // never happens (Python checked): no write outside the param
  const optimizers::adam::Coefficients<T> k = record.k;
  const int64_t length = record.length;
  const int64_t at = row * length;
  const T* g = record.values + local * length;
  for (int64_t j = int64_t(threadIdx.x) % kLanes; j < length; j += kLanes) {
    T p = record.param[at + j], m = record.exp_avg[at + j], v = record.exp_avg_sq[at + j];
    T max_v = kAmsgrad ? record.max_exp_avg_sq[at + j] : T(0);
    sparse_rows::update_element<T>(p, g[j], m, v, kAmsgrad ? &max_v : nullptr, k);
    record.param[at + j] = p;
    record.exp_avg[at + j] = m;
    record.exp_avg_sq[at + j] = v;
    if (kAmsgrad) record.max_exp_avg_sq[at + j] = max_v;
  }
}

template <typename T, int64_t kParameterLimit>
void prologue_launches(const sparse_rows::Table& table, const SparseScalars& scalars, uintptr_t workspace,
                       const OpCall& call) {
  using Args = SparsePrologueArgs<kParameterLimit>;
  char* records = reinterpret_cast<char*>(workspace);
  int64_t* row_ends = reinterpret_cast<int64_t*>(workspace + uint64_t(table.n) * kSparseRecordBytes);
  int64_t rows_end = 0;
  for (int64_t first = 0; first < table.n; first += Args::kCapacity) {
    Args args;  // only columns[0 .. count) is meaningful
    args.count = int32_t(table.n - first < Args::kCapacity ? table.n - first : Args::kCapacity);
    args.records = records + first * kSparseRecordBytes;
    args.row_ends = row_ends + first;
    for (int32_t i = 0; i < args.count; ++i) {
      const int64_t c = first + i;
      int64_t* column = args.columns[i];
      rows_end += table.at(sparse_rows::kNnzRow, c);
      column[kStepColumn] = table.at(sparse_rows::kStepRow, c);
      column[kRowsEndColumn] = rows_end;
      column[kLengthColumn] = table.at(sparse_rows::kRowLengthRow, c);
      column[kParamRowsColumn] = table.at(sparse_rows::kParamRowsRow, c);
      column[kIndexColumn] = table.at(sparse_rows::kIndexRow, c);
      column[kParamColumn] = table.at(sparse_rows::kParamRow, c);
      column[kValuesColumn] = table.at(sparse_rows::kValuesRow, c);
      column[kExpAvgColumn] = table.at(sparse_rows::kExpAvgRow, c);
      column[kExpAvgSqColumn] = table.at(sparse_rows::kExpAvgSqRow, c);
      column[kMaxExpAvgSqColumn] = scalars.hyper.amsgrad ? table.at(sparse_rows::kMaxExpAvgSqRow, c) : 0;
    }
    const unsigned blocks = unsigned((args.count + kPrologueThreads - 1) / kPrologueThreads);
    sparse_prologue_kernel<T, kParameterLimit><<<blocks, kPrologueThreads, 0, call.stream()>>>(args, scalars);
    call.check_launch();
  }
}

template <typename T>
void run(const sparse_rows::Table& table, const SparseScalars& scalars, uintptr_t workspace, int64_t total_rows,
         const OpCall& call) {
#if FUSEDOPT_LARGE_PARAMETER_BLOCKS
  if (call.large_parameter_blocks() && table.n > SparsePrologueArgs<kClassicParameterLimit>::kCapacity)
    prologue_launches<T, kLargeParameterLimit>(table, scalars, workspace, call);
  else
#endif
    prologue_launches<T, kClassicParameterLimit>(table, scalars, workspace, call);
  if (total_rows == 0) return;  // the counters advanced; no row to update
  const unsigned blocks = unsigned((total_rows + kRowsPerBlock - 1) / kRowsPerBlock);
  const SparseRowsArgs args{reinterpret_cast<const char*>(workspace),
                            reinterpret_cast<const int64_t*>(workspace + uint64_t(table.n) * kSparseRecordBytes),
                            table.n, total_rows};
  if (scalars.hyper.amsgrad)
    sparse_rows_kernel<T, true><<<blocks, kRowThreads, 0, call.stream()>>>(args);
  else
    sparse_rows_kernel<T, false><<<blocks, kRowThreads, 0, call.stream()>>>(args);
  call.check_launch();
}

}  // namespace

void sparse_adam(const sparse_rows::Table& table, DType dtype, const optimizers::adam::Hyper& hyper, double lr,
                 const double* lr_tensor, uintptr_t workspace, int64_t workspace_bytes, int device,
                 uintptr_t stream) {
  constexpr const char* kOp = "sparse_adam";
  // Every check before anything is launched: nothing changes on a refused call.
  if (dtype != DType::Float32 && dtype != DType::Float64)
    throw std::invalid_argument("fusedopt cuda sparse_adam: the CUDA kernel updates float32 and float64 params only");
  if (table.n < 0) throw std::invalid_argument("fusedopt cuda sparse_adam: negative tensor count");
  if (table.n == 0) return;
  if (workspace == 0 || workspace % 16 != 0 || workspace_bytes < sparse_adam_workspace_bytes(table.n))
    throw std::invalid_argument("fusedopt cuda sparse_adam: the workspace must be 16-byte aligned and " +
                                std::to_string(sparse_adam_workspace_bytes(table.n)) + " bytes long for " +
                                std::to_string(table.n) + " tensors");
  int64_t total_rows = 0;
  for (int64_t i = 0; i < table.n; ++i) {
    const int64_t nnz = table.at(sparse_rows::kNnzRow, i), length = table.at(sparse_rows::kRowLengthRow, i);
    if (nnz < 0 || length < 0)
      throw std::invalid_argument("fusedopt cuda sparse_adam: tensor " + std::to_string(i) +
                                  " has a negative row count or row length");
    total_rows += nnz;
  }
  if ((total_rows + kRowsPerBlock - 1) / kRowsPerBlock > kMaxChunksPerLaunch)
    throw std::invalid_argument("fusedopt cuda sparse_adam: more present rows than one launch covers");
  const SparseScalars scalars{hyper, lr, lr_tensor};
  const OpCall call(kOp, device, stream);
  if (dtype == DType::Float32) run<float>(table, scalars, workspace, total_rows, call);
  else run<double>(table, scalars, workspace, total_rows, call);
}

}  // namespace fusedopt::cuda
