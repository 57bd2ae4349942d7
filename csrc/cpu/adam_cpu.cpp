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
// WRITE_GRAD: store the unscaled, clipped grad back (writes_grad, fusedopt/common.h).
template <typename S, typename SS, bool AMSGRAD, bool WRITE_GRAD>
void adam_loop(S* __restrict p, S* __restrict g, SS* __restrict m, SS* __restrict v,
               SS* __restrict max_v, float* __restrict master, int64_t count,
               const AdamCoefficients<typename OpMath<S>::type>& k) {
  using T = typename OpMath<S>::type;
  for (int64_t j = 0; j < count; ++j) {
    T pj = load_param<S, SS>(p, master, j), gj = to_opmath(g[j]), mj = to_opmath(m[j]), vj = to_opmath(v[j]);
    T max_vj = AMSGRAD ? to_opmath(max_v[j]) : T(0);
    adam_update<AMSGRAD>(pj, gj, mj, vj, max_vj, k);
    store_param<S, SS>(p, master, j, pj);
    if (WRITE_GRAD) g[j] = from_opmath<S>(gj);
    m[j] = from_opmath<SS>(mj);
    v[j] = from_opmath<SS>(vj);
    if (AMSGRAD) max_v[j] = from_opmath<SS>(max_vj);
  }
}

template <typename S, typename SS, bool AMSGRAD, bool WRITE_GRAD>
void adam_slice(const TensorTable& t, int64_t i, int64_t lo, int64_t hi,
                const AdamCoefficients<typename OpMath<S>::type>& k) {
  constexpr int64_t kMasterRow = kStateRow + (AMSGRAD ? 3 : 2);
  adam_loop<S, SS, AMSGRAD, WRITE_GRAD>(t.ptr<S>(kParamRow, i) + lo, t.ptr<S>(kGradRow, i) + lo,
                            t.ptr<SS>(kStateRow, i) + lo, t.ptr<SS>(kStateRow + 1, i) + lo,
                            AMSGRAD ? t.ptr<SS>(kStateRow + 2, i) + lo : nullptr,
                            std::is_same_v<S, SS> ? nullptr : t.ptr<float>(kMasterRow, i) + lo, hi - lo, k);
}

}  // namespace

void adam(const TensorTable& table, DType dtype, const AdamConfig& config, int threads) {
  if (step_skipped(config.grad_transform)) return;
  dispatch_storage(dtype, config.master_weights, [&](auto param_tag, auto state_tag) {
    using S = decltype(param_tag);
    using SS = decltype(state_tag);
    using T = typename OpMath<S>::type;
    const auto coefficients = advance_steps<AdamCoefficients<T>>(
        table, [&](double step) { return adam_coefficients<T>(config, step); });
    with_flag(config.amsgrad, [&](auto amsgrad) {
      with_flag(writes_grad(config.grad_transform), [&](auto write_grad) {
        for_each_slice(table, threads, [&](int64_t i, int64_t lo, int64_t hi) {
          adam_slice<S, SS, decltype(amsgrad)::value, decltype(write_grad)::value>(table, i, lo, hi, coefficients[i]);
        });
      });
    });
  });
}

}  // namespace fusedopt::cpu::FUSEDOPT_CPU_ISA
