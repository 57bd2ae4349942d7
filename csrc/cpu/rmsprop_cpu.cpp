// RMSprop over every tensor of a bucket; see adam_cpu.cpp for how this file is built.
// State rows: square_avg, then grad_avg (centered), then momentum_buffer (momentum > 0).
#include "cpu/kernels.h"
#include "cpu/multi_tensor_cpu.h"

namespace fusedopt::cpu::FUSEDOPT_CPU_ISA {
namespace {

// __restrict parameters: see adam_cpu.cpp.
// WRITE_GRAD: see adam_cpu.cpp.
template <typename S, typename SS, bool CENTERED, bool MOMENTUM, bool WRITE_GRAD>
void rmsprop_loop(S* __restrict p, S* __restrict g, SS* __restrict sq, SS* __restrict ga, SS* __restrict buf,
                  float* __restrict master, int64_t count, const RMSpropCoefficients<typename OpMath<S>::type>& k) {
  using T = typename OpMath<S>::type;
  for (int64_t j = 0; j < count; ++j) {
    T pj = load_param<S, SS>(p, master, j), gj = to_opmath(g[j]), sqj = to_opmath(sq[j]);
    T gaj = CENTERED ? to_opmath(ga[j]) : T(0);
    T bufj = MOMENTUM ? to_opmath(buf[j]) : T(0);
    rmsprop_update<CENTERED, MOMENTUM>(pj, gj, sqj, gaj, bufj, k);
    store_param<S, SS>(p, master, j, pj);
    if (WRITE_GRAD) g[j] = from_opmath<S>(gj);
    sq[j] = from_opmath<SS>(sqj);
    if (CENTERED) ga[j] = from_opmath<SS>(gaj);
    if (MOMENTUM) buf[j] = from_opmath<SS>(bufj);
  }
}

template <typename S, typename SS, bool CENTERED, bool MOMENTUM, bool WRITE_GRAD>
void rmsprop_slice(const TensorTable& t, int64_t i, int64_t lo, int64_t hi,
                   const RMSpropCoefficients<typename OpMath<S>::type>& k) {
  constexpr int64_t kMomentumRow = kStateRow + (CENTERED ? 2 : 1);
  constexpr int64_t kMasterRow = kMomentumRow + (MOMENTUM ? 1 : 0);
  rmsprop_loop<S, SS, CENTERED, MOMENTUM, WRITE_GRAD>(
      t.ptr<S>(kParamRow, i) + lo, t.ptr<S>(kGradRow, i) + lo, t.ptr<SS>(kStateRow, i) + lo,
      CENTERED ? t.ptr<SS>(kStateRow + 1, i) + lo : nullptr, MOMENTUM ? t.ptr<SS>(kMomentumRow, i) + lo : nullptr,
      std::is_same_v<S, SS> ? nullptr : t.ptr<float>(kMasterRow, i) + lo, hi - lo, k);
}

template <typename S, typename SS, bool WRITE_GRAD>
void rmsprop_any(const TensorTable& t, int64_t i, int64_t lo, int64_t hi, bool centered, bool momentum,
                 const RMSpropCoefficients<typename OpMath<S>::type>& k) {
  if (centered && momentum) rmsprop_slice<S, SS, true, true, WRITE_GRAD>(t, i, lo, hi, k);
  else if (centered) rmsprop_slice<S, SS, true, false, WRITE_GRAD>(t, i, lo, hi, k);
  else if (momentum) rmsprop_slice<S, SS, false, true, WRITE_GRAD>(t, i, lo, hi, k);
  else rmsprop_slice<S, SS, false, false, WRITE_GRAD>(t, i, lo, hi, k);
}

}  // namespace

void rmsprop(const TensorTable& table, DType dtype, const RMSpropConfig& config, int threads) {
  if (step_skipped(config.grad_transform)) return;
  dispatch_storage(dtype, config.master_weights, [&](auto param_tag, auto state_tag) {
    using S = decltype(param_tag);
    using SS = decltype(state_tag);
    // RMSprop's step counter does not enter its math, but torch keeps and advances it.
    for (int64_t i = 0; i < table.n; ++i) *table.ptr<float>(kStepRow, i) += 1.0f;
    const auto k = rmsprop_coefficients<typename OpMath<S>::type>(config);
    const bool momentum = config.momentum > 0.0;
    with_flag(writes_grad(config.grad_transform), [&](auto write_grad) {
      for_each_slice(table, threads, [&](int64_t i, int64_t lo, int64_t hi) {
        rmsprop_any<S, SS, decltype(write_grad)::value>(table, i, lo, hi, config.centered, momentum, k);
      });
    });
  });
}

}  // namespace fusedopt::cpu::FUSEDOPT_CPU_ISA
