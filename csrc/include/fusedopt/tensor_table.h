// The address table Python builds for one bucket (fusedopt/_buckets.py): an int64
// array of shape [rows, n] in host memory, one column per tensor. Python has checked
// every address (device, dtype, element count, contiguity, no overlap) before a kernel
// sees it; this header only names the rows.
#pragma once

#include <cstdint>

#include "fusedopt/common.h"

namespace fusedopt {

enum TableRow : int64_t {
  kNumelRow = 0,  // element count of the param (all rows of a column have this many)
  kParamRow = 1,
  kGradRow = 2,
  kStepRow = 3,   // float32 scalar step counter of the param (0 where the optimizer has none)
  kStateRow = 4,  // first state tensor; the optimizer fixes the order of the rest
  // Then, after the active states: the float32 master copy (master weights only), then one
  // row per scalar state (Kind::kScalarStates: float32 scalars such as ASGD's eta, read and
  // written only where the tensor's coefficients are computed; fusedopt/_layout.py).
};

// The first scalar-state row of a table with `states` active state rows.
FUSEDOPT_HD constexpr int64_t scalar_state_row(int states, bool master_copy) {
  return kStateRow + states + (master_copy ? 1 : 0);
}

struct TensorTable {
  const int64_t* data;
  int64_t n;  // tensors (columns)

  FUSEDOPT_HD int64_t numel(int64_t i) const { return data[i]; }
  template <typename T> FUSEDOPT_HD T* ptr(int64_t row, int64_t i) const {
    return reinterpret_cast<T*>(static_cast<uintptr_t>(data[row * n + i]));
  }
};

}  // namespace fusedopt
