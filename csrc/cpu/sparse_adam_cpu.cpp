// Lazy (sparse-row) Adam on the CPU: every present row of every tensor of a table in one
// call, rows spread over OpenMP threads (rows are unique, so no two threads write one
// element); each row's elements in a loop the compiler vectorises.
#include <omp.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/multi_tensor_cpu.h"
#include "cpu/sparse_adam_cpu.h"

namespace fusedopt::cpu::FUSEDOPT_CPU_ISA {
namespace {

using sparse_rows::Table;

// __restrict parameters, as in update_cpu.h: Python guarantees the tensors do not overlap.
template <typename T, bool AMSGRAD>
void update_row(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v, T* __restrict max_v,
                int64_t length, const optimizers::adam::Coefficients<T>& k) {
  for (int64_t j = 0; j < length; ++j)
    sparse_rows::update_element<T>(p[j], g[j], m[j], v[j], AMSGRAD ? max_v + j : nullptr, k);
}

// Every index in [0, rows of its param) and strictly increasing, or nothing is written.
void check_indices(const Table& t) {
  for (int64_t i = 0; i < t.n; ++i) {
    const int64_t* index = t.ptr<const int64_t>(sparse_rows::kIndexRow, i);
    const int64_t nnz = t.at(sparse_rows::kNnzRow, i), rows = t.at(sparse_rows::kParamRowsRow, i);
    for (int64_t r = 0; r < nnz; ++r) {
      if (index[r] < 0 || index[r] >= rows || (r > 0 && index[r] <= index[r - 1]))
        throw std::out_of_range("fusedopt sparse_adam: tensor " + std::to_string(i) + " has row index " +
                                std::to_string(index[r]) + " at position " + std::to_string(r) +
                                ", outside [0, " + std::to_string(rows) + ") or not increasing");
    }
  }
}

template <typename T>
void run(const Table& t, const optimizers::adam::Hyper& hyper, double lr, int threads) {
  using K = optimizers::adam::Coefficients<T>;
  std::vector<K> k(size_t(t.n));
  std::vector<int64_t> offsets(size_t(t.n) + 1, 0);  // first global row of each tensor
  int64_t elements = 0;
  for (int64_t i = 0; i < t.n; ++i) {
    float& step = *t.ptr<float>(sparse_rows::kStepRow, i);
    step += 1.0f;  // even for a grad with no rows, as torch.optim.SparseAdam
    k[size_t(i)] = optimizers::adam::coefficients<T>(hyper, lr, double(step));
    const int64_t nnz = t.at(sparse_rows::kNnzRow, i);
    offsets[size_t(i) + 1] = offsets[size_t(i)] + nnz;
    elements += nnz * t.at(sparse_rows::kRowLengthRow, i);
  }
  const int64_t total_rows = offsets.back();
  const int workers = useful_threads(threads, elements);
  const bool amsgrad = hyper.amsgrad;
#pragma omp parallel for num_threads(workers) schedule(static)
  for (int64_t r = 0; r < total_rows; ++r) {
    const int64_t i = std::upper_bound(offsets.begin(), offsets.end(), r) - offsets.begin() - 1;
    const int64_t length = t.at(sparse_rows::kRowLengthRow, i);
    const int64_t local = r - offsets[size_t(i)];
    const int64_t at = t.ptr<const int64_t>(sparse_rows::kIndexRow, i)[local] * length;
    T* p = t.ptr<T>(sparse_rows::kParamRow, i) + at;
    const T* g = t.ptr<const T>(sparse_rows::kValuesRow, i) + local * length;
    T* m = t.ptr<T>(sparse_rows::kExpAvgRow, i) + at;
    T* v = t.ptr<T>(sparse_rows::kExpAvgSqRow, i) + at;
    if (amsgrad)
      update_row<T, true>(p, g, m, v, t.ptr<T>(sparse_rows::kMaxExpAvgSqRow, i) + at, length, k[size_t(i)]);
    else
      update_row<T, false>(p, g, m, v, nullptr, length, k[size_t(i)]);
  }
}

}  // namespace

void sparse_adam(const Table& table, DType dtype, const optimizers::adam::Hyper& hyper, double lr, int threads) {
  if (dtype != DType::Float32 && dtype != DType::Float64)
    throw std::invalid_argument("fusedopt sparse_adam: the CPU kernel updates float32 and float64 params only");
  check_indices(table);
  if (dtype == DType::Float32) run<float>(table, hyper, lr, threads);
  else run<double>(table, hyper, lr, threads);
}

}  // namespace fusedopt::cpu::FUSEDOPT_CPU_ISA
