// Entry points of the CPU kernels. Each kernel source is compiled once per instruction
// set into namespace fusedopt::cpu::<isa>; dispatch.cpp picks one at run time.
#pragma once

#include "fusedopt/adam.h"
#include "fusedopt/common.h"
#include "fusedopt/rmsprop.h"
#include "fusedopt/sgd.h"
#include "fusedopt/tensor_table.h"

#define FUSEDOPT_DECLARE_CPU_KERNELS(isa)                                                  \
  namespace fusedopt::cpu::isa {                                                           \
  void adam(const TensorTable& table, DType dtype, const AdamConfig& config, int threads); \
  void sgd(const TensorTable& table, DType dtype, const SGDConfig& config, int threads);   \
  void rmsprop(const TensorTable& table, DType dtype, const RMSpropConfig& config, int threads); \
  double sum_of_squares(const TensorTable& table, DType dtype, int threads);                 \
  }

namespace fusedopt::cpu {
// The dispatched versions (dispatch.cpp).
void adam(const TensorTable& table, DType dtype, const AdamConfig& config, int threads);
void sgd(const TensorTable& table, DType dtype, const SGDConfig& config, int threads);
void rmsprop(const TensorTable& table, DType dtype, const RMSpropConfig& config, int threads);
// Sum of squares of every tensor of a table whose rows are (numel, address): for grad norms.
double sum_of_squares(const TensorTable& table, DType dtype, int threads);
// The instruction set dispatch.cpp chose on this CPU ("avx512", "avx2" or "baseline").
const char* isa_name();
}  // namespace fusedopt::cpu
