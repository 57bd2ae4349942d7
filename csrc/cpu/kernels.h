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
  double sum_of_squares(const TensorTable& table, DType dtype, int threads);                      \
  }

namespace fusedopt::cpu {
// The dispatched versions (dispatch.cpp), for every optimizer of the generated list.
template <typename Kind>
void update(const TensorTable& table, DType dtype, const UpdateConfig<Kind>& config, int threads);
// Sum of squares of every tensor of a table whose rows are (numel, address): for grad norms.
double sum_of_squares(const TensorTable& table, DType dtype, int threads);
// The instruction set dispatch.cpp chose on this CPU ("avx512", "avx2" or "baseline").
const char* isa_name();
}  // namespace fusedopt::cpu
