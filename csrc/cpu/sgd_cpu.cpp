// SGD over every tensor of a bucket; see adam_cpu.cpp for how this file is built.
#include "cpu/kernels.h"
#include "cpu/multi_tensor_cpu.h"

namespace fusedopt::cpu::FUSEDOPT_CPU_ISA {
namespace {

template <typename S, bool MOMENTUM>
void sgd_slice(const TensorTable& t, int64_t i, int64_t lo, int64_t hi,
               const SGDCoefficients<typename OpMath<S>::type>& k) {
  using T = typename OpMath<S>::type;
  S* __restrict p = t.ptr<S>(kParamRow, i) + lo;
  const S* __restrict g = t.ptr<const S>(kGradRow, i) + lo;
  S* __restrict buf = MOMENTUM ? t.ptr<S>(kStateRow, i) + lo : nullptr;
  const int64_t count = hi - lo;
  for (int64_t j = 0; j < count; ++j) {
    T pj = to_opmath(p[j]);
    T bufj = MOMENTUM && !k.first_step ? to_opmath(buf[j]) : T(0);
    sgd_update<MOMENTUM>(pj, to_opmath(g[j]), bufj, k);
    p[j] = from_opmath<S>(pj);
    if (MOMENTUM) buf[j] = from_opmath<S>(bufj);
  }
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
