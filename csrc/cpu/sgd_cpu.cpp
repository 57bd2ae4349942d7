// SGD over every tensor of a bucket; see adam_cpu.cpp for how this file is built.
#include "cpu/kernels.h"
#include "cpu/multi_tensor_cpu.h"

namespace fusedopt::cpu::FUSEDOPT_CPU_ISA {
namespace {

// __restrict parameters: see adam_cpu.cpp.
// FIRST_STEP is a template argument, not the runtime k.first_step: a conditional load of a
// 16-bit struct stops GCC from vectorising the loop (bf16 SGD ran 7x slower than torch's).
// WRITE_GRAD: see adam_cpu.cpp.
template <typename S, typename SS, bool MOMENTUM, bool FIRST_STEP, bool WRITE_GRAD>
void sgd_loop(S* __restrict p, S* __restrict g, SS* __restrict buf, float* __restrict master, int64_t count,
              const SGDCoefficients<typename OpMath<S>::type>& k_in) {
  using T = typename OpMath<S>::type;
  SGDCoefficients<T> k_fixed = k_in;
  k_fixed.first_step = FIRST_STEP;  // a constant the compiler folds: no load hidden behind a branch
  const auto& k = k_fixed;
  for (int64_t j = 0; j < count; ++j) {
    T pj = load_param<S, SS>(p, master, j);
    T gj = to_opmath(g[j]);
    T bufj = MOMENTUM && !FIRST_STEP ? to_opmath(buf[j]) : T(0);  // a new buffer is not read
    sgd_update<MOMENTUM>(pj, gj, bufj, k);
    store_param<S, SS>(p, master, j, pj);
    if (WRITE_GRAD) g[j] = from_opmath<S>(gj);
    if (MOMENTUM) buf[j] = from_opmath<SS>(bufj);
  }
}

template <typename S, typename SS, bool MOMENTUM, bool FIRST_STEP, bool WRITE_GRAD>
void sgd_slice(const TensorTable& t, int64_t i, int64_t lo, int64_t hi,
               const SGDCoefficients<typename OpMath<S>::type>& k) {
  constexpr int64_t kMasterRow = kStateRow + (MOMENTUM ? 1 : 0);
  sgd_loop<S, SS, MOMENTUM, FIRST_STEP, WRITE_GRAD>(t.ptr<S>(kParamRow, i) + lo, t.ptr<S>(kGradRow, i) + lo,
                            MOMENTUM ? t.ptr<SS>(kStateRow, i) + lo : nullptr,
                            std::is_same_v<S, SS> ? nullptr : t.ptr<float>(kMasterRow, i) + lo, hi - lo, k);
}

}  // namespace

void sgd(const TensorTable& table, DType dtype, const SGDConfig& config, int threads) {
  if (step_skipped(config.grad_transform)) return;
  dispatch_storage(dtype, config.master_weights, [&](auto param_tag, auto state_tag) {
    using S = decltype(param_tag);
    using SS = decltype(state_tag);
    const auto k = sgd_coefficients<typename OpMath<S>::type>(config);
    with_flag(writes_grad(config.grad_transform), [&](auto write_grad) {
      constexpr bool kWrite = decltype(write_grad)::value;
      for_each_slice(table, threads, [&](int64_t i, int64_t lo, int64_t hi) {
        if (config.momentum == 0.0) sgd_slice<S, SS, false, false, kWrite>(table, i, lo, hi, k);
        else if (config.first_step) sgd_slice<S, SS, true, true, kWrite>(table, i, lo, hi, k);
        else sgd_slice<S, SS, true, false, kWrite>(table, i, lo, hi, k);
      });
    });
  });
}

}  // namespace fusedopt::cpu::FUSEDOPT_CPU_ISA
