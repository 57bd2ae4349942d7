// Lazy (sparse-row) Adam: the table Python builds for one call (fusedopt/_sparse_rows.py,
// rows named in fusedopt/_layout.py) and the per-element math, written once for the CPU
// loop (csrc/cpu/sparse_adam_cpu.cpp) and the CUDA kernel (csrc/cuda/sparse_adam.cu).
// Python has checked every index (in range, strictly increasing) and address before native
// code sees it; the CPU entry point checks the indices against the param's row count once
// more, and the CUDA kernel, which cannot report one without a host sync, skips a row
// outside it.
//
// Arithmetic: torch.optim.SparseAdam's, operation for operation (torch/optim/_functional.py,
// sparse_adam), with Adam's options (maximize, L2 or decoupled weight decay, amsgrad, the
// two bias-correction forms) taken from optimizers/adam.h's coefficients. Not an optimizer
// header (those live in optimizers/ and get the element-wise kernel).
#pragma once

#include <cmath>
#include <cstdint>

#include "fusedopt/optimizers/adam.h"

namespace fusedopt::sparse_rows {

enum Row : int64_t {
  kNnzRow = 0,        // rows present in the grad
  kRowLengthRow,      // elements per row
  kParamRowsRow,      // rows of the param (every index must be below it)
  kIndexRow,          // int64 row indices, unique and increasing
  kParamRow,
  kValuesRow,         // the grad's rows: nnz x row length, contiguous
  kStepRow,           // float32 step counter
  kExpAvgRow,
  kExpAvgSqRow,
  kMaxExpAvgSqRow,    // 0 without amsgrad
  kRows,
};

struct Table {
  const int64_t* data;
  int64_t n;
  FUSEDOPT_HD int64_t at(int64_t row, int64_t i) const { return data[row * n + i]; }
  template <typename T> FUSEDOPT_HD T* ptr(int64_t row, int64_t i) const {
    return reinterpret_cast<T*>(static_cast<uintptr_t>(data[row * n + i]));
  }
};

using Coefficients = optimizers::adam::Coefficients<double>;

// One element of a present row. `max_v` is null without amsgrad.
template <typename T>
FUSEDOPT_HD void update_element(T& p, T g, T& m, T& v, T* max_v, const optimizers::adam::Coefficients<T>& k) {
  g = g * k.grad_sign;
  g = k.l2_decay != T(0) ? g + k.l2_decay * p : g;
  p = p * k.param_scale;
  m = m + (g - m) * k.one_minus_beta1;      // SparseAdam: old + (new - old) * (1 - b)
  v = v + (g * g - v) * k.one_minus_beta2;
  T second_moment = v;
  if (max_v != nullptr) {
    *max_v = *max_v > v ? *max_v : v;
    second_moment = *max_v;
  }
  const T denom = std::sqrt(second_moment) / k.denom_divisor + k.eps;
  p = p + k.neg_step_size * (m / denom);    // SparseAdam: -step_size * (numer / denom)
}

}  // namespace fusedopt::sparse_rows
