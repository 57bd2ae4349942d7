// Entry point of the CPU lazy (sparse-row) Adam kernel: compiled once per instruction set
// (csrc/cpu/sparse_adam_cpu.cpp), picked at run time in dispatch.cpp.
#pragma once

#include "fusedopt/common.h"
#include "fusedopt/sparse_rows.h"

#define FUSEDOPT_DECLARE_CPU_SPARSE_ADAM(isa)                                                             \
  namespace fusedopt::cpu::isa {                                                                         \
  void sparse_adam(const sparse_rows::Table& table, DType dtype, const optimizers::adam::Hyper& hyper,     \
                   double lr, int threads);                                                              \
  }

namespace fusedopt::cpu {
// One lazy Adam step over every tensor of the table: advance each step counter, then update
// the present rows (float32 or float64 params; std::invalid_argument otherwise, and
// std::out_of_range, before anything is written, for an index outside its param).
void sparse_adam(const sparse_rows::Table& table, DType dtype, const optimizers::adam::Hyper& hyper, double lr,
                 int threads);
}  // namespace fusedopt::cpu
