// Adam/AdamW over every tensor of a bucket. Compiled once per instruction set (see
// CMakeLists.txt); the loop body is the shared math of fusedopt/adam.h, which the
// compiler vectorises.
#include "cpu/kernels.h"
#include "cpu/multi_tensor_cpu.h"

namespace fusedopt::cpu::FUSEDOPT_CPU_ISA {
namespace {

// The pointers are __restrict parameters (Python guarantees the tensors don't overlap):
// GCC trusts restrict on parameters, not on locals, and without it gives up vectorising
// loops that would need more run-time alias checks than it allows.
template <typename S, bool AMSGRAD>
void adam_loop(S* __restrict p, const S* __restrict g, S* __restrict m, S* __restrict v, S* __restrict max_v,
               int64_t count, const AdamCoefficients<typename OpMath<S>::type>& k) {
  using T = typename OpMath<S>::type;
  for (int64_t j = 0; j < count; ++j) {
    T pj = to_opmath(p[j]), mj = to_opmath(m[j]), vj = to_opmath(v[j]);
    T max_vj = AMSGRAD ? to_opmath(max_v[j]) : T(0);
    adam_update<AMSGRAD>(pj, to_opmath(g[j]), mj, vj, max_vj, k);
    p[j] = from_opmath<S>(pj);
    m[j] = from_opmath<S>(mj);
    v[j] = from_opmath<S>(vj);
    if (AMSGRAD) max_v[j] = from_opmath<S>(max_vj);
  }
}

template <typename S, bool AMSGRAD>
void adam_slice(const TensorTable& t, int64_t i, int64_t lo, int64_t hi,
                const AdamCoefficients<typename OpMath<S>::type>& k) {
  adam_loop<S, AMSGRAD>(t.ptr<S>(kParamRow, i) + lo, t.ptr<const S>(kGradRow, i) + lo,
                        t.ptr<S>(kStateRow, i) + lo, t.ptr<S>(kStateRow + 1, i) + lo,
                        AMSGRAD ? t.ptr<S>(kStateRow + 2, i) + lo : nullptr, hi - lo, k);
}

}  // namespace

void adam(const TensorTable& table, DType dtype, const AdamConfig& config, int threads) {
  dispatch_dtype(dtype, [&](auto storage_tag) {
    using S = decltype(storage_tag);
    using T = typename OpMath<S>::type;
    const auto coefficients = advance_steps<AdamCoefficients<T>>(
        table, [&](double step) { return adam_coefficients<T>(config, step); });
    for_each_slice(table, threads, [&](int64_t i, int64_t lo, int64_t hi) {
      if (config.amsgrad) adam_slice<S, true>(table, i, lo, hi, coefficients[i]);
      else adam_slice<S, false>(table, i, lo, hi, coefficients[i]);
    });
  });
}

}  // namespace fusedopt::cpu::FUSEDOPT_CPU_ISA
