// The CPU update of any optimizer (fusedopt/optimizer.h's traits) over every tensor of a
// bucket. Each optimizer's instance is compiled once per instruction set (CMakeLists.txt
// generates a translation unit per optimizer and instruction set from
// csrc/cpu/update_unit.cpp.in); the loop body is the optimizer's shared math, which the
// compiler vectorises.
#pragma once

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/multi_tensor_cpu.h"
#include "cpu/table_gather.h"
#include "fusedopt/int8_states.h"
#include "fusedopt/reduce.h"

namespace fusedopt::cpu::FUSEDOPT_CPU_ISA {
namespace detail {

// The pointers are __restrict parameters (Python guarantees the tensors don't overlap):
// GCC trusts restrict on parameters, not on locals, and without it gives up vectorising
// loops that would need more run-time alias checks than it allows. Hence one parameter per
// state (kMaxStates of them), null where the variant has no such state.
// kActive: the states this variant updates. FIRST_STEP (optimizers that do not read new
// state) is a template argument, not a run-time flag: a conditional load of a 16-bit struct
// stops GCC from vectorising the loop (bf16 SGD ran 7x slower than torch's).
// WRITE_GRAD: store the unscaled, clipped grad back (writes_grad, fusedopt/common.h: true
// exactly when a GradScaler scale divides the grads, so it also selects that division).
// SS: the states' storage type (fusedopt/common.h's dispatch_storage); kMaster: a float32
// master copy holds the param's value. kStochastic (bf16 params without a master copy,
// bf16_stochastic_round): the param is rounded with float_to_bf16_stochastic, element j taking
// the random bits of index `first + j` of the tensor whose rounding key is `key`.
template <typename Kind, typename S, typename SS, bool kMaster, uint32_t kActive, bool FIRST_STEP, bool WRITE_GRAD,
          bool kStochastic = false>
void update_loop(S* __restrict p, S* __restrict g, SS* __restrict s0, SS* __restrict s1, SS* __restrict s2,
                 SS* __restrict s3, float* __restrict master, int64_t count,
                 const Scalars<Kind, typename OpMath<S>::type>& scalars, uint32_t key = 0, int64_t first = 0) {
  static_assert(!kStochastic || (std::is_same_v<S, BFloat16> && !kMaster), "stochastic rounding: bf16 params only");
  using T = typename OpMath<S>::type;
  static_assert(kMaxStates == 4, "one __restrict parameter per state");
  constexpr bool kLoads = !FIRST_STEP;  // a new state is written, not read
  const auto k = scalars.k;
  const auto factors = scalars.grad;
  for (int64_t j = 0; j < count; ++j) {
    T pj = load_param<S, kMaster>(p, master, j);
    T gj = unscaled_grad<WRITE_GRAD>(to_opmath(g[j]), factors);
    T s[kMaxStates] = {T(0), T(0), T(0), T(0)};
    if constexpr (kLoads && (kActive & 1u)) s[0] = to_opmath(s0[j]);
    if constexpr (kLoads && (kActive & 2u)) s[1] = to_opmath(s1[j]);
    if constexpr (kLoads && (kActive & 4u)) s[2] = to_opmath(s2[j]);
    if constexpr (kLoads && (kActive & 8u)) s[3] = to_opmath(s3[j]);
    Kind::template update<kActive>(pj, gj, s, k, std::bool_constant<FIRST_STEP>{});
    if constexpr (kStochastic) p[j] = float_to_bf16_stochastic(pj, rounding_bits(key, first + j));
    else store_param<S, kMaster>(p, master, j, pj);
    if (WRITE_GRAD) g[j] = from_opmath<S>(gj);
    if constexpr (bool(kActive & 1u)) s0[j] = from_opmath<SS>(s[0]);
    if constexpr (bool(kActive & 2u)) s1[j] = from_opmath<SS>(s[1]);
    if constexpr (bool(kActive & 4u)) s2[j] = from_opmath<SS>(s[2]);
    if constexpr (bool(kActive & 8u)) s3[j] = from_opmath<SS>(s[3]);
  }
}

// Elements [lo, hi) of tensor i: the state rows are the active states in order, then the
// master copy. round_seed: the call's (kStochastic only).
template <typename Kind, typename S, typename SS, bool kMaster, uint32_t kActive, bool FIRST_STEP, bool WRITE_GRAD,
          bool kStochastic = false>
void update_slice(const TensorTable& t, int64_t i, int64_t lo, int64_t hi,
                  const Scalars<Kind, typename OpMath<S>::type>& scalars, uint64_t round_seed = 0) {
  const auto state = [&](int s) -> SS* {
    return (kActive >> s) & 1u ? t.ptr<SS>(kStateRow + state_position(kActive, s), i) + lo : nullptr;
  };
  float* master = !kMaster ? nullptr : t.ptr<float>(kStateRow + state_count(kActive), i) + lo;
  update_loop<Kind, S, SS, kMaster, kActive, FIRST_STEP, WRITE_GRAD, kStochastic>(
      t.ptr<S>(kParamRow, i) + lo, t.ptr<S>(kGradRow, i) + lo, state(0), state(1), state(2), state(3), master, hi - lo,
      scalars, kStochastic ? rounding_key(round_seed, i) : 0u, lo);
}

// ---- 8-bit states (state_dtype="int8"; fusedopt/int8_states.h) -----------------------------
// A block's codes are read as float32 values by gather_dequantize (csrc/cpu/table_gather.h).

// One block of an 8-bit call in one vectorisable pass: update_loop's update on the block's
// states, dequantized beforehand into the float32 buffers s0..s3 (gather_dequantize), which it
// overwrites with their new values for quantize_values, accumulating max |value| as bits
// (absmax_bits_of: an integer maximum vectorises, a float one does not, and it propagates NaN
// as torch.amax does) into largest[s]. One parameter per state, all __restrict, for
// update_loop's reason.
template <typename Kind, typename S, bool kMaster, uint32_t kActive, bool FIRST_STEP, bool WRITE_GRAD, bool kStochastic>
void int8_block_update(S* __restrict p, S* __restrict g, float* __restrict master, float* __restrict s0,
                       float* __restrict s1, float* __restrict s2, float* __restrict s3, uint32_t* largest,
                       int64_t count, const Scalars<Kind, float>& scalars, uint32_t key, int64_t first) {
  constexpr bool kLoads = !FIRST_STEP;
  const auto k = scalars.k;
  const auto factors = scalars.grad;
  uint32_t m0 = 0, m1 = 0, m2 = 0, m3 = 0;
  for (int64_t j = 0; j < count; ++j) {
    float pj = load_param<S, kMaster>(p, master, j);
    float gj = unscaled_grad<WRITE_GRAD>(to_opmath(g[j]), factors);
    float s[kMaxStates] = {0.0f, 0.0f, 0.0f, 0.0f};
    if constexpr (kLoads && (kActive & 1u)) s[0] = s0[j];
    if constexpr (kLoads && (kActive & 2u)) s[1] = s1[j];
    if constexpr (kLoads && (kActive & 4u)) s[2] = s2[j];
    if constexpr (kLoads && (kActive & 8u)) s[3] = s3[j];
    Kind::template update<kActive>(pj, gj, s, k, std::bool_constant<FIRST_STEP>{});
    if constexpr (kStochastic) p[j] = float_to_bf16_stochastic(pj, rounding_bits(key, first + j));
    else store_param<S, kMaster>(p, master, j, pj);
    if (WRITE_GRAD) g[j] = from_opmath<S>(gj);
    const auto keep = [](uint32_t& m, float x) { m = absmax_bits_of(x) > m ? absmax_bits_of(x) : m; };
    if constexpr (bool(kActive & 1u)) { s0[j] = s[0]; keep(m0, s[0]); }
    if constexpr (bool(kActive & 2u)) { s1[j] = s[1]; keep(m1, s[1]); }
    if constexpr (bool(kActive & 4u)) { s2[j] = s[2]; keep(m2, s[2]); }
    if constexpr (bool(kActive & 8u)) { s3[j] = s[3]; keep(m3, s[3]); }
  }
  largest[0] = m0, largest[1] = m1, largest[2] = m2, largest[3] = m3;
}

// The codes of a block of float32 values (at most kQuantBlock) with this absmax (not 0):
// nearest_code in three steps, so that the two loops vectorise and the lookup between them
// gathers (csrc/cpu/table_gather.h). Its own function, not inlined: inlined where the absmax
// is computed, GCC 12 no longer vectorises the loops.
__attribute__((noinline)) inline void quantize_values(const float* __restrict x, int64_t count, float absmax,
                                                      const int32_t* __restrict buckets, uint8_t* __restrict out) {
  alignas(64) uint32_t bits[kQuantBlock], bucket[kQuantBlock], entry[kQuantBlock];
  for (int64_t j = 0; j < count; ++j) {
    const float q = x[j] / absmax;
    bits[j] = float_bits(q);
    bucket[j] = code_bucket(q);
  }
  gather_entries(buckets, bucket, entry, count);
  for (int64_t j = 0; j < count; ++j) out[j] = uint8_t(code_in_bucket(bits[j], entry[j]));
}

// Elements [lo, hi) of tensor i with 8-bit states, lo a multiple of kQuantBlock: per block,
// the states are dequantized into buffers (unless new), int8_block_update updates the param
// from them (the param's update reads the new float32 state) and leaves the new float32 states
// there, then each state is requantized from them (all zeros: absmax 0, every code at 0.0,
// fusedopt/_quantize.py).
// State row k's absmax is in row `scale_row + k`.
template <typename Kind, typename S, bool kMaster, uint32_t kActive, bool FIRST_STEP, bool WRITE_GRAD,
          bool kStochastic = false>
void update_int8_slice(const TensorTable& t, int64_t i, int64_t lo, int64_t hi,
                       const Scalars<Kind, typename OpMath<S>::type>& scalars, const Int8Codes& codes,
                       int64_t scale_row, uint64_t round_seed) {
  static_assert(std::is_same_v<typename OpMath<S>::type, float>, "8-bit states are for float32 math");
  constexpr int kRows = state_count(kActive);
  alignas(64) float values[kMaxStates][kQuantBlock];
  // per state index s (not table row): its codes, code values, absmax and buffer
  uint8_t* state_codes[kMaxStates] = {};
  const float* code_values[kMaxStates] = {};
  float* absmax[kMaxStates] = {};
  float* buffer[kMaxStates] = {};
  int row_of[kMaxStates] = {};
  for (int s = 0; s < kMaxStates; ++s) {
    if (!((kActive >> s) & 1u)) continue;
    const int r = state_position(kActive, s);
    row_of[s] = r;
    state_codes[s] = t.ptr<uint8_t>(kStateRow + r, i);
    code_values[s] = codes.row[r].values;
    absmax[s] = t.ptr<float>(scale_row + r, i);
    buffer[s] = values[r];
  }
  S* p = t.ptr<S>(kParamRow, i);
  S* g = t.ptr<S>(kGradRow, i);
  float* master = !kMaster ? nullptr : t.ptr<float>(kStateRow + kRows, i);
  const uint32_t key = kStochastic ? rounding_key(round_seed, i) : 0u;
  for (int64_t begin = lo; begin < hi; begin += kQuantBlock) {
    const int64_t count = std::min(kQuantBlock, hi - begin);
    const int64_t block = begin / kQuantBlock;
    if constexpr (!FIRST_STEP)  // a new state is written, not read
      for (int s = 0; s < kMaxStates; ++s)
        if ((kActive >> s) & 1u)
          gather_dequantize(state_codes[s] + begin, code_values[s], absmax[s][block], buffer[s], count);
    uint32_t largest[kMaxStates];
    int8_block_update<Kind, S, kMaster, kActive, FIRST_STEP, WRITE_GRAD, kStochastic>(
        p + begin, g + begin, kMaster ? master + begin : nullptr, buffer[0], buffer[1], buffer[2], buffer[3], largest,
        count, scalars, key, begin);
    for (int s = 0; s < kMaxStates; ++s) {
      if (!((kActive >> s) & 1u)) continue;
      const float new_absmax = absmax_from_bits(largest[s]);
      absmax[s][block] = new_absmax;
      const Int8Code& code = codes.row[row_of[s]];
      if (new_absmax == 0.0f) std::memset(state_codes[s] + begin, int(zero_code(code)), size_t(count));
      else quantize_values(buffer[s], count, new_absmax, code.buckets, state_codes[s] + begin);
    }
  }
}

// One reduction block of the norm pass into the lanes of fusedopt/reduce.h: element j goes to
// lane j % kSumLanes. Walking the block in rows of kSumLanes elements (lane = column) instead of
// indexing the lane by j % kSumLanes keeps each lane's additions in the same order (same bits)
// and lets the compiler vectorise across lanes; the pointers are __restrict parameters for the
// reason update_loop gives. kScaled: whether GradScaler's scale divides the grads.
template <typename Kind, typename S, typename SS, bool kMaster, bool kScaled, typename T>
void norm_block(const S* __restrict p, const S* __restrict g, const SS* __restrict s0, const SS* __restrict s1,
                const float* __restrict master, int64_t count, const Scalars<Kind, T>& scalars,
                double* __restrict lane_a, double* __restrict lane_b) {
  const auto element = [&](int64_t j, int l) {
    T values[kMaxStates] = {T(0), T(0), T(0), T(0)};
    if constexpr (Kind::kStates > 0) values[0] = to_opmath(s0[j]);
    if constexpr (Kind::kStates > 1) values[1] = to_opmath(s1[j]);
    const T pj = load_param<S, kMaster>(p, master, j);
    const T gj = unscaled_grad<kScaled>(to_opmath(g[j]), scalars.grad);
    Kind::norm_terms(pj, gj, values, scalars.k, lane_a[l], lane_b[l]);
  };
  int64_t row = 0;
  for (; row + kSumLanes <= count; row += kSumLanes) {
    if constexpr (!kMaster) prefetch_ahead(p + row, kSumLanes, count - row);  // else the master copy is read
    prefetch_ahead(g + row, kSumLanes, count - row);
    if constexpr (Kind::kStates > 0) prefetch_ahead(s0 + row, kSumLanes, count - row);
    if constexpr (Kind::kStates > 1) prefetch_ahead(s1 + row, kSumLanes, count - row);
    if constexpr (kMaster) prefetch_ahead(master + row, kSumLanes, count - row);
    for (int l = 0; l < kSumLanes; ++l) element(row + l, l);
  }
  for (int l = 0; row + l < count; ++l) element(row + l, l);
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
  const bool int8 = options.int8_tables != nullptr;
  if (int8 && (dtype == DType::Float64 || options.bf16_states))
    throw std::invalid_argument("fusedopt cpu: 8-bit states are for float32 math (float32 or 16-bit params), not "
                                "float64 params or bf16 states");
  const Int8Codes codes = int8 ? int8_codes(options.int8_tables, options.int8_signed, state_count(active)) : Int8Codes{};
  dispatch_storage(dtype, options.master_weights, options.bf16_states, options.float32_states,
                   [&](auto param_tag, auto state_tag, auto master) {
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
    // bf16_stochastic_round: a variant of the loops for bf16 params without a master copy only
    // (no other storage compiles it); round_seed 0 rounds to nearest even.
    constexpr bool kCanRound = std::is_same_v<S, BFloat16> && !kMaster;
    with_variant(typename Kind::Variants{}, active, [&](auto variant) {
      constexpr uint32_t kActive = decltype(variant)::value;
      with_flag(skips_state_loads<Kind>(options), [&](auto first_step) {
        with_flag(writes_grad(options.grad_transform), [&](auto write_grad) {
          with_flag(kCanRound && options.round_seed != 0, [&](auto stochastic) {
            constexpr bool kStochastic = decltype(stochastic)::value;
            if constexpr (kStochastic && !kCanRound) {
              // never taken: no loop of this storage rounds stochastically
            } else {
              const bool own = options.grad_transform.tensor_clip != nullptr || options.tensor_scale != nullptr;
              const uint64_t seed = options.round_seed;
              constexpr bool kFirst = std::decay_t<decltype(first_step)>::value;
              constexpr bool kWrite = std::decay_t<decltype(write_grad)>::value;
              if constexpr (int8_storage<S, SS, kMaster>()) {
                if (int8) {
                  const int64_t scale_row = scalar_state_row(state_count(kActive), kMaster) + Kind::kScalarStates;
                  for_each_slice(table, threads, [&](int64_t i, int64_t lo, int64_t hi) {
                    const Prepared& s = Kind::kStepDependent ? per_tensor[size_t(i)] : shared;
                    detail::update_int8_slice<Kind, S, kMaster, kActive, kFirst, kWrite, kStochastic>(
                        table, i, lo, hi, own ? for_tensor(s, options, i) : s, codes, scale_row, seed);
                  }, kQuantBlock);
                  return;
                }
              } else if (int8) {
                throw std::logic_error("fusedopt cpu: 8-bit states reached a storage without 8-bit loops");
              }
              for_each_slice(table, threads, [&](int64_t i, int64_t lo, int64_t hi) {
                const Prepared& s = Kind::kStepDependent ? per_tensor[size_t(i)] : shared;
                if (own)  // this tensor's clip_grad_norm_per_tensor multiplier and tensor scale
                  detail::update_slice<Kind, S, SS, kMaster, kActive, kFirst, kWrite, kStochastic>(
                      table, i, lo, hi, for_tensor(s, options, i), seed);
                else
                  detail::update_slice<Kind, S, SS, kMaster, kActive, kFirst, kWrite, kStochastic>(table, i, lo, hi, s,
                                                                                                 seed);
              });
            }
          });
        });
      });
    });
  });
}

// The reduction pass of a kind with kNormPass (LAMB): per tensor, the sums of Kind::norm_terms'
// two terms over its elements, into out[2i] and out[2i + 1], writing nothing else. The
// coefficients are those of the coming update (the step counter + 1, not advanced here), the
// grad transformed as the update will (clip_grad_norm_per_tensor included); blocks, lanes and
// the order of additions are fusedopt/reduce.h's, so the sums do not depend on the thread count.
template <typename Kind>
void norms(const TensorTable& table, DType dtype, const UpdateConfig<Kind>& config, int threads, double* out) {
  if constexpr (!Kind::kNormPass) {
    throw std::invalid_argument("fusedopt cpu: this optimizer has no norm pass");
  } else {
    static_assert(Kind::kStates <= 2 && Kind::kStepCounter, "the norm pass reads at most two states");
    const UpdateOptions& options = config.options;
    const uint32_t active = Kind::active_states(config.hyper);
    const SumBlockList list(table, threads);
    std::vector<double> partials(static_cast<size_t>(2 * list.blocks), 0.0);
    const bool int8 = options.int8_tables != nullptr;
    if (int8 && (dtype == DType::Float64 || options.bf16_states))
      throw std::invalid_argument("fusedopt cpu: 8-bit states are for float32 math, not float64 params or bf16 states");
    const Int8Codes codes = int8 ? int8_codes(options.int8_tables, options.int8_signed, state_count(active)) : Int8Codes{};
    // The states are read as the update reads them: bf16_states (state_dtype=torch.bfloat16)
    // selects bfloat16 storage, master weights the float32 master copy (dispatch_storage).
    dispatch_storage(dtype, options.master_weights, options.bf16_states, options.float32_states,
                     [&](auto param_tag, auto state_tag, auto master_tag) {
      using S = decltype(param_tag);
      using SS = decltype(state_tag);
      constexpr bool kMaster = decltype(master_tag)::value;
      using T = typename OpMath<S>::type;
      std::vector<Scalars<Kind, T>> per_tensor(static_cast<size_t>(table.n));
      for (int64_t i = 0; i < table.n; ++i)
        per_tensor[size_t(i)] =
            for_tensor(scalars<Kind, T>(config, double(*table.ptr<float>(kStepRow, i)) + 1.0), options, i);
      with_flag(options.grad_transform.grad_scale != nullptr, [&](auto scaled) {
        constexpr bool kScaled = decltype(scaled)::value;
        for_each_block(list, [&](int64_t b) {
          const int64_t i = list.owner[size_t(b)], begin = list.begin(b);
          const int64_t count = std::min(kSumBlock, table.numel(i) - begin);
          const Scalars<Kind, T>& s = per_tensor[size_t(i)];
          const S* p = table.ptr<const S>(kParamRow, i) + begin;
          const S* g = table.ptr<const S>(kGradRow, i) + begin;
          const float* master = !kMaster ? nullptr
                                         : table.ptr<const float>(kStateRow + state_count(active), i) + begin;
          double lane_a[kSumLanes], lane_b[kSumLanes];
          const int used = lanes_used(count);
          std::fill(lane_a, lane_a + used, 0.0);
          std::fill(lane_b, lane_b + used, 0.0);
          if (int8) {
            // 8-bit states: each quantization block dequantized, then its one row of lanes (a
            // block of kSumBlock is whole rows of kSumLanes = kQuantBlock, so the additions are
            // those of the float32 states' pass)
            static_assert(kSumLanes == kQuantBlock && kSumBlock % kQuantBlock == 0, "blocks must nest");
            const int64_t scale_row = scalar_state_row(state_count(active), kMaster) + Kind::kScalarStates;
            alignas(64) float values[2][kQuantBlock] = {};
            for (int64_t row = 0; row < count; row += kQuantBlock) {
              const int64_t n = std::min(kQuantBlock, count - row);
              const int64_t block = (begin + row) / kQuantBlock;
              for (int k = 0; k < Kind::kStates; ++k)
                gather_dequantize(table.ptr<const uint8_t>(kStateRow + k, i) + begin + row, codes.row[k].values,
                                  table.ptr<const float>(scale_row + k, i)[block], values[k], n);
              detail::norm_block<Kind, S, float, kMaster, kScaled>(p + row, g + row, values[0], values[1],
                                                                   kMaster ? master + row : nullptr, n, s, lane_a,
                                                                   lane_b);
            }
          } else {
            const SS* states[2] = {nullptr, nullptr};
            for (int k = 0; k < Kind::kStates; ++k) states[k] = table.ptr<const SS>(kStateRow + k, i) + begin;
            detail::norm_block<Kind, S, SS, kMaster, kScaled>(p, g, states[0], states[1], master, count, s, lane_a,
                                                        lane_b);
          }
          lane_tree(lane_a, used);
          lane_tree(lane_b, used);
          partials[size_t(2 * b)] = lane_a[0];
          partials[size_t(2 * b + 1)] = lane_b[0];
        });
      });
    });
    for (int64_t i = 0; i < table.n; ++i) {
      double a = 0.0, b2 = 0.0;
      for (int64_t b = list.first[size_t(i)]; b < list.first[size_t(i) + 1]; ++b) {
        a += partials[size_t(2 * b)];
        b2 += partials[size_t(2 * b + 1)];
      }
      out[2 * i] = a;
      out[2 * i + 1] = b2;
    }
  }
}

}  // namespace fusedopt::cpu::FUSEDOPT_CPU_ISA

// The instantiation a generated translation unit (csrc/cpu/update_unit.cpp.in) makes.
#define FUSEDOPT_INSTANTIATE_CPU_UPDATE(kind)                                                          \
  template void fusedopt::cpu::FUSEDOPT_CPU_ISA::update<fusedopt::optimizers::kind>(                 \
      const fusedopt::TensorTable&, fusedopt::DType, const fusedopt::UpdateConfig<fusedopt::optimizers::kind>&, \
      int);                                                                                            \
  template void fusedopt::cpu::FUSEDOPT_CPU_ISA::norms<fusedopt::optimizers::kind>(                  \
      const fusedopt::TensorTable&, fusedopt::DType, const fusedopt::UpdateConfig<fusedopt::optimizers::kind>&, \
      int, double*);
