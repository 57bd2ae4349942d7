// Entry points of the CPU kernels. Each kernel source is compiled once per instruction
// set into namespace fusedopt::cpu::<isa>; dispatch.cpp picks one at run time. The update
// of optimizer Kind (fusedopt/optimizer.h) is instantiated for every optimizer of the
// generated list (fusedopt/optimizer_list.h) by a generated unit per optimizer and ISA.
#pragma once

#include "fusedopt/common.h"
#include "fusedopt/optimizer.h"
#include "fusedopt/tensor_table.h"

#define FUSEDOPT_DECLARE_CPU_KERNELS(isa)                                                        \
  namespace fusedopt::cpu::isa {                                                                 \
  template <typename Kind>                                                                       \
  void update(const TensorTable& table, DType dtype, const UpdateConfig<Kind>& config, int threads); \
  template <typename Kind>                                                                       \
  void norms(const TensorTable& table, DType dtype, const UpdateConfig<Kind>& config, int threads, double* out); \
  double sum_of_squares(const TensorTable& table, DType dtype, int threads);                      \
  void sum_of_squares_per_tensor(const TensorTable& table, DType dtype, int threads, double* out); \
  }

namespace fusedopt::cpu {
// The dispatched versions (dispatch.cpp), for every optimizer of the generated list.
template <typename Kind>
void update(const TensorTable& table, DType dtype, const UpdateConfig<Kind>& config, int threads);
// The reduction pass of a kind with kNormPass (update_cpu.h); std::invalid_argument for others.
template <typename Kind>
void norms(const TensorTable& table, DType dtype, const UpdateConfig<Kind>& config, int threads, double* out);
// Sum of squares of every tensor of a table whose rows are (numel, address): for grad norms.
double sum_of_squares(const TensorTable& table, DType dtype, int threads);
// The same, one sum per tensor into out[0 .. table.n) (fusedopt/reduce.h's order: the result
// depends on neither the thread count nor the instruction set); `sum_of_squares` adds them.
void sum_of_squares_per_tensor(const TensorTable& table, DType dtype, int threads, double* out);
// The instruction set dispatch.cpp chose on this CPU ("avx512", "avx2" or "baseline").
const char* isa_name();
// The variants this module was built with, comma-separated, baseline first.
const char* built_isas();
// Whether the 8-bit states' table lookups use the gather instructions (table_gather.h).
bool use_gathers();
}  // namespace fusedopt::cpu
