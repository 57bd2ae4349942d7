// Entry point of the CPU kernels of the "factored" shape (Adafactor, fusedopt/factored.h),
// apart from cpu/kernels.h so the element-wise units do not depend on it. Compiled once per
// instruction set like the other kernels; dispatch.cpp picks one at run time.
#pragma once

#include "fusedopt/common.h"
#include "fusedopt/factored.h"
#include "fusedopt/tensor_table.h"

#define FUSEDOPT_DECLARE_CPU_FACTORED_KERNELS(isa)                                                  \
  namespace fusedopt::cpu::isa {                                                                    \
  void adafactor(const TensorTable& table, DType dtype, const AdafactorOptions& options, int threads); \
  }

namespace fusedopt::cpu {
// Adafactor's step over a table of fusedopt/_factored.py (rows: fusedopt/factored.h): every
// pass over every tensor in this one call.
void adafactor(const TensorTable& table, DType dtype, const AdafactorOptions& options, int threads);
}  // namespace fusedopt::cpu
