// The CPU update of any optimizer (fusedopt/optimizer.h's traits) over every tensor of a
// bucket. Each optimizer's instance is compiled once per instruction set (CMakeLists.txt
// generates a translation unit per optimizer and instruction set from
// csrc/cpu/update_unit.cpp.in); the loop body is the optimizer's shared math, which the
// compiler vectorises.
#pragma once

#include <stdexcept>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/multi_tensor_cpu.h"

namespace fusedopt::cpu::FUSEDOPT_CPU_ISA {
namespace detail {

// The pointers are __restrict parameters (Python guarantees the tensors don't overlap):
// GCC trusts restrict on parameters, not on locals, and without it gives up vectorising
// loops that would need more run-time alias checks than it allows. Hence one parameter per
// state (kMaxStates of them), null where the variant has no such state.
// kActive: the states this variant updates. FIRST_STEP (optimizers that do not read new
// state) is a template argument, not a run-time flag: a conditional load of a 16-bit struct
// stops GCC from vectorising the loop (bf16 SGD ran 7x slower than torch's).
// WRITE_GRAD: store the unscaled, clipped grad back (writes_grad, fusedopt/common.h).
// SS: the states' storage type (fusedopt/common.h's dispatch_storage); kMaster: a float32
// master copy holds the param's value.
template <typename Kind, typename S, typename SS, bool kMaster, uint32_t kActive, bool FIRST_STEP, bool WRITE_GRAD>
void update_loop(S* __restrict p, S* __restrict g, SS* __restrict s0, SS* __restrict s1, SS* __restrict s2,
                 SS* __restrict s3, float* __restrict master, int64_t count,
                 const Scalars<Kind, typename OpMath<S>::type>& scalars) {
  using T = typename OpMath<S>::type;
  static_assert(kMaxStates == 4, "one __restrict parameter per state");
  constexpr bool kLoads = !FIRST_STEP;  // a new state is written, not read
  const auto k = scalars.k;
  const auto factors = scalars.grad;
  for (int64_t j = 0; j < count; ++j) {
    T pj = load_param<S, kMaster>(p, master, j);
    T gj = unscaled_grad(to_opmath(g[j]), factors);
    T s[kMaxStates] = {T(0), T(0), T(0), T(0)};
    if constexpr (kLoads && (kActive & 1u)) s[0] = to_opmath(s0[j]);
    if constexpr (kLoads && (kActive & 2u)) s[1] = to_opmath(s1[j]);
    if constexpr (kLoads && (kActive & 4u)) s[2] = to_opmath(s2[j]);
    if constexpr (kLoads && (kActive & 8u)) s[3] = to_opmath(s3[j]);
    Kind::template update<kActive>(pj, gj, s, k, std::bool_constant<FIRST_STEP>{});
    store_param<S, kMaster>(p, master, j, pj);
    if (WRITE_GRAD) g[j] = from_opmath<S>(gj);
    if constexpr (bool(kActive & 1u)) s0[j] = from_opmath<SS>(s[0]);
    if constexpr (bool(kActive & 2u)) s1[j] = from_opmath<SS>(s[1]);
    if constexpr (bool(kActive & 4u)) s2[j] = from_opmath<SS>(s[2]);
    if constexpr (bool(kActive & 8u)) s3[j] = from_opmath<SS>(s[3]);
  }
}

// Elements [lo, hi) of tensor i: the state rows are the active states in order, then the
// master copy.
template <typename Kind, typename S, typename SS, bool kMaster, uint32_t kActive, bool FIRST_STEP, bool WRITE_GRAD>
void update_slice(const TensorTable& t, int64_t i, int64_t lo, int64_t hi,
                  const Scalars<Kind, typename OpMath<S>::type>& scalars) {
  const auto state = [&](int s) -> SS* {
    return (kActive >> s) & 1u ? t.ptr<SS>(kStateRow + state_position(kActive, s), i) + lo : nullptr;
  };
  float* master = !kMaster ? nullptr : t.ptr<float>(kStateRow + state_count(kActive), i) + lo;
  update_loop<Kind, S, SS, kMaster, kActive, FIRST_STEP, WRITE_GRAD>(t.ptr<S>(kParamRow, i) + lo, t.ptr<S>(kGradRow, i) + lo,
                                                            state(0), state(1), state(2), state(3), master, hi - lo,
                                                            scalars);
}

}  // namespace detail

template <typename Kind>
void update(const TensorTable& table, DType dtype, const UpdateConfig<Kind>& config, int threads) {
  static_assert(Kind::kStates <= kMaxStates, "more states than the loop has parameters for");
  static_assert(!Kind::kStepDependent || Kind::kStepCounter, "step-dependent coefficients need a step counter");
  static_assert(Kind::kScalarStates <= kMaxScalarStates, "more scalar states than kMaxScalarStates");
  static_assert(Kind::kScalarStates == 0 || Kind::kStepDependent, "scalar states are advanced per tensor");
  const UpdateOptions& options = config.options;
  if (step_skipped(options.grad_transform)) return;
  const uint32_t active = Kind::active_states(config.hyper);
  if (!is_variant<Kind>(active)) throw std::invalid_argument("fusedopt cpu: these options select states no variant has");
  dispatch_storage(dtype, options.master_weights, options.bf16_states, [&](auto param_tag, auto state_tag, auto master) {
    using S = decltype(param_tag);
    using SS = decltype(state_tag);
    constexpr bool kMaster = decltype(master)::value;
    using T = typename OpMath<S>::type;
    using Prepared = Scalars<Kind, T>;
    std::vector<Prepared> per_tensor;
    Prepared shared{};
    if constexpr (Kind::kScalarStates > 0) {
      const int64_t first_row = scalar_state_row(state_count(active), kMaster);
      per_tensor = advance_steps_and_scalars<Prepared, Kind::kScalarStates>(
          table, first_row, [&](double step, float* const* states) { return scalars<Kind, T>(config, step, states); });
    } else if constexpr (Kind::kStepDependent) {
      per_tensor = advance_steps<Prepared>(table, [&](double step) { return scalars<Kind, T>(config, step); });
    } else {
      if constexpr (Kind::kStepCounter)
        for (int64_t i = 0; i < table.n; ++i) *table.ptr<float>(kStepRow, i) += 1.0f;
      shared = scalars<Kind, T>(config, 0.0);
    }
    with_variant(typename Kind::Variants{}, active, [&](auto variant) {
      constexpr uint32_t kActive = decltype(variant)::value;
      with_flag(skips_state_loads<Kind>(options), [&](auto first_step) {
        with_flag(writes_grad(options.grad_transform), [&](auto write_grad) {
          for_each_slice(table, threads, [&](int64_t i, int64_t lo, int64_t hi) {
            const Prepared& s = Kind::kStepDependent ? per_tensor[size_t(i)] : shared;
            detail::update_slice<Kind, S, SS, kMaster, kActive, decltype(first_step)::value, decltype(write_grad)::value>(
                table, i, lo, hi, s);
          });
        });
      });
    });
  });
}

}  // namespace fusedopt::cpu::FUSEDOPT_CPU_ISA

// The instantiation a generated translation unit (csrc/cpu/update_unit.cpp.in) makes.
#define FUSEDOPT_INSTANTIATE_CPU_UPDATE(kind)                                                          \
  template void fusedopt::cpu::FUSEDOPT_CPU_ISA::update<fusedopt::optimizers::kind>(                 \
      const fusedopt::TensorTable&, fusedopt::DType, const fusedopt::UpdateConfig<fusedopt::optimizers::kind>&, \
      int);
