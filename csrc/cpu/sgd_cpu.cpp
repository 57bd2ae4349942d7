// SGD over every tensor of a bucket; see adam_cpu.cpp for how this file is built.
#include "cpu/kernels.h"
#include "cpu/multi_tensor_cpu.h"

namespace fusedopt::cpu::FUSEDOPT_CPU_ISA {
namespace {

// __restrict parameters: see adam_cpu.cpp.
template <typename S, bool MOMENTUM>
void sgd_loop(S* __restrict p, const S* __restrict g, S* __restrict buf, int64_t count,
              const SGDCoefficients<typename OpMath<S>::type>& k) {
  using T = typename OpMath<S>::type;
  for (int64_t j = 0; j < count; ++j) {
    T pj = to_opmath(p[j]);
    T bufj = MOMENTUM && !k.first_step ? to_opmath(buf[j]) : T(0);  // a new buffer is uninitialised
    sgd_update<MOMENTUM>(pj, to_opmath(g[j]), bufj, k);
    p[j] = from_opmath<S>(pj);
    if (MOMENTUM) buf[j] = from_opmath<S>(bufj);
  }
}

template <typename S, bool MOMENTUM>
void sgd_slice(const TensorTable& t, int64_t i, int64_t lo, int64_t hi,
               const SGDCoefficients<typename OpMath<S>::type>& k) {
  sgd_loop<S, MOMENTUM>(t.ptr<S>(kParamRow, i) + lo, t.ptr<const S>(kGradRow, i) + lo,
                        MOMENTUM ? t.ptr<S>(kStateRow, i) + lo : nullptr, hi - lo, k);
}

}  // namespace

void sgd(const TensorTable& table, DType dtype, const SGDConfig& config, int threads) {
  dispatch_dtype(dtype, [&](auto storage_tag) {
    using S = decltype(storage_tag);
    const auto k = sgd_coefficients<typename OpMath<S>::type>(config);
    for_each_slice(table, threads, [&](int64_t i, int64_t lo, int64_t hi) {
      if (config.momentum != 0.0) sgd_slice<S, true>(table, i, lo, hi, k);
      else sgd_slice<S, false>(table, i, lo, hi, k);
    });
  });
}

}  // namespace fusedopt::cpu::FUSEDOPT_CPU_ISA
