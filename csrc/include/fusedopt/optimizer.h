// What every optimizer header (csrc/include/fusedopt/optimizers/<kind>.h) builds on, and
// what the generic CPU loop, CUDA functor and bindings read from it.
//
// An optimizer is a traits struct fusedopt::optimizers::<kind> (the name of its header, and
// the `kind` Python's OptimizerSpec uses), usually derived from OptimizerDefaults<kStates>
// below, which supplies every member marked (default), with:
//
//   FUSEDOPT_HYPERPARAMETERS(LIST)   where LIST(X) is X(double, name) X(bool, name) ...:
//                                    struct Hyper with those fields, and Hyper::fields(f),
//                                    which calls f("name", &Hyper::name) for each, in order;
//   static constexpr int kStates;    state tensors it may use (at most kMaxStates), table order
//   using Variants = StateVariants<mask, ...>;   the sets of active states its options allow
//                                    (bit s: state s), each a compile-time variant of the loops
//                                    (default: all states, always)
//   static constexpr uint32_t active_states(const Hyper&);   the set for these options (default: all)
//   static constexpr bool kStepCounter;          keeps a float32 step counter (advanced per step;
//                                                default false)
//   static constexpr bool kStepDependent;        its coefficients depend on that counter
//                                                (computed per tensor from it), else once per
//                                                call (default false)
//   static constexpr bool kReadsStateOnFirstStep;   false: on UpdateOptions::first_step the
//                                                active states are written, never read (SGD;
//                                                default true)
//   static constexpr int kScalarStates;          per-tensor float32 scalar states besides the step
//                                                counter (ASGD's eta and mu, NAdam's mu_product;
//                                                at most kMaxScalarStates; default 0). Such a kind
//                                                is step dependent, and its coefficients() takes
//                                                a fourth argument, `float* const* scalars`:
//                                                scalars[j] points to the tensor's j-th scalar
//                                                state (table rows after the states and master
//                                                copy, tensor_table.h), holding the value the
//                                                previous step stored; coefficients() reads it and
//                                                stores the new one. It is called exactly once
//                                                per tensor per step that is not skipped (the CPU
//                                                host loop, the CUDA prologue's thread for that
//                                                tensor), never by the element loops, so no two
//                                                threads touch a scalar state.
//   template <typename S, typename SS, bool kMaster> static constexpr int min_blocks();
//                                                CUDA launch bound (blocks per multiprocessor)
//                                                per param and state storage and master copy
//                                                (default: default_min_blocks<S>())
//   template <typename T> struct Coefficients;   the scalars of one update, in the math type T
//   template <typename T> static FUSEDOPT_HD Coefficients<T> coefficients(const Hyper&, double lr,
//                                                                         double step);
//   template <uint32_t kActive, typename T, typename FirstStep>
//   static FUSEDOPT_HD void update(T& p, T g, T* state, const Coefficients<T>& k, FirstStep first);
//                                    one element: p the param (or its fp32 master copy), g the
//                                    gradient already unscaled and clipped, state[s] for each
//                                    active s (others hold 0 and are not stored), `first` a
//                                    bool or std::bool_constant saying UpdateOptions::first_step.
//
// GradScaler's unscale and skip, clipping, master weights, step counters, the write-back of
// the grad and the learning rate given as a tensor are handled by the generic code, for
// every optimizer alike.
#pragma once

#include <cstdint>
#include <type_traits>

#include "fusedopt/common.h"

namespace fusedopt {

// Most state tensors an optimizer may keep (the CUDA records carry param, grad, a coefficient
// record, these and the master copy: launch_plan.h's kMaxAddresses).
constexpr int kMaxStates = 4;
// Most per-tensor scalar states (kScalarStates) an optimizer may keep.
constexpr int kMaxScalarStates = 2;

// What every optimizer's call has besides its own hyper-parameters (fusedopt/_layout.py's
// UpdateConfig): the learning rate, given as a number or read from a float64 in memory
// (lr_tensor, when not null), the first-step rule, master weights and the grad transform.
struct UpdateOptions {
  double lr = 0.0;
  const double* lr_tensor = nullptr;
  bool first_step = false;      // every state of the call was created for this step
  bool master_weights = false;  // 16-bit params: fp32 master copy (last state row) and fp32 states
  bool bf16_states = false;     // state_dtype=bfloat16: states stored as bf16 (master copy stays fp32)
  bool float32_states = false;  // 16-bit params without a master copy, states stored as fp32 ("int8" groups' small tensors)
  GradTransform grad_transform = {};
  // Kinds with kTensorScale (LAMB's trust ratio): one float64 per table column, handed to
  // Kind::scale_coefficients once per tensor (null: 1 for every tensor).
  const double* tensor_scale = nullptr;
  // bf16_stochastic_round (bf16 params without a master copy): the seed of this call's
  // stochastic rounding of the param (fusedopt/common.h's float_to_bf16_stochastic); 0: to
  // nearest even. Ignored for other storage.
  uint64_t round_seed = 0;
  // state_dtype="int8": the code tables (fusedopt/int8_states.h; null: the states are not 8-bit)
  // and, bit k for state row k, whether that row uses the signed code. The states' rows hold
  // uint8 codes; their float32 block absmax rows follow the scalar-state rows, one per state.
  const uint8_t* int8_tables = nullptr;
  uint32_t int8_signed = 0;
};

// One call's configuration: the optimizer's hyper-parameters and the common options.
template <typename Kind>
struct UpdateConfig {
  typename Kind::Hyper hyper;
  UpdateOptions options;
};

// ---- hyper-parameters, declared once ----------------------------------------------------
#define FUSEDOPT_HYPER_FIELD_(type, name) type name = type{};
#define FUSEDOPT_HYPER_VISIT_(type, name) f(#name, &Hyper::name);
// Inside an optimizer's traits struct: the Hyper struct with LIST's fields and a visitor
// over them by name, so bindings and checks follow the one list.
#define FUSEDOPT_HYPERPARAMETERS(LIST)                                        \
  struct Hyper {                                                              \
    LIST(FUSEDOPT_HYPER_FIELD_)                                               \
    template <typename F> static void fields(F&& f) { LIST(FUSEDOPT_HYPER_VISIT_) } \
  }

// ---- state variants ---------------------------------------------------------------------
template <uint32_t... kMasks>
struct StateVariants {
  static constexpr uint32_t kAlways = (kMasks & ... & ~0u);  // states every variant has
};

// How many bits of `bits` are set (a few integer operations, no loop: the kernels compute it
// once per block from a run-time set of states).
FUSEDOPT_HD constexpr int bit_count(uint32_t bits) {
  bits = bits - ((bits >> 1) & 0x55555555u);
  bits = (bits & 0x33333333u) + ((bits >> 2) & 0x33333333u);
  return int((((bits + (bits >> 4)) & 0x0f0f0f0fu) * 0x01010101u) >> 24);
}
// The position among the table's state rows of state s: the active states before it come first.
FUSEDOPT_HD constexpr int state_position(uint32_t active, int s) { return bit_count(active & ((1u << s) - 1u)); }
FUSEDOPT_HD constexpr int state_count(uint32_t active) { return bit_count(active); }

// Calls body(std::integral_constant<uint32_t, mask>{}) for the variant whose mask is
// `active`; false when none is (an optimizer's active_states outside its Variants).
template <uint32_t... kMasks, typename Body>
FUSEDOPT_HD constexpr bool with_variant(StateVariants<kMasks...>, uint32_t active, Body&& body) {
  return ((active == kMasks ? (body(std::integral_constant<uint32_t, kMasks>{}), true) : false) || ...);
}

// Whether `active` is one of Kind's variants (a header whose active_states strays outside
// its Variants would otherwise update nothing): the entry points check it before any work.
template <typename Kind> constexpr bool is_variant(uint32_t active) {
  return with_variant(typename Kind::Variants{}, active, [](auto) {});
}

// ---- decoupled weight decay ----------------------------------------------------------------
// The factor a decoupled weight decay multiplies the param by, computed in double: torch's
// `1 - lr*wd` (AdamW, Lion, RAdam's decoupled form), or labml's absolute decay `1 - wd`,
// independent of lr (weight_decay_mode="absolute", an optimizer's absolute_weight_decay).
FUSEDOPT_HD double decoupled_scale(double weight_decay, double lr, bool absolute) {
  return absolute ? 1.0 - weight_decay : 1.0 - lr * weight_decay;
}

// ---- the scalars of one update -------------------------------------------------------------
// The optimizer's coefficients and the grad's unscale/clip factors, as the prologue kernel
// (CUDA) or the host (CPU) computes them once per tensor or per call.
template <typename Kind, typename T>
struct Scalars {
  typename Kind::template Coefficients<T> k;
  GradFactors<T> grad;
};

// `scalar_states`: the tensor's scalar states (Kind::kScalarStates of them, read and
// advanced here), null for kinds without.
template <typename Kind, typename T>
FUSEDOPT_HD Scalars<Kind, T> scalars(const UpdateConfig<Kind>& c, double step, float* const* scalar_states = nullptr) {
  Scalars<Kind, T> s;
  const double lr = learning_rate(c.options.lr_tensor, c.options.lr);
  if constexpr (Kind::kScalarStates > 0) s.k = Kind::template coefficients<T>(c.hyper, lr, step, scalar_states);
  else s.k = Kind::template coefficients<T>(c.hyper, lr, step);
  s.grad = grad_factors<T>(c.options.grad_transform);
  return s;
}

// The scalars of tensor `column` from the call's (`shared`, or the tensor's own step-dependent
// ones): its clip_grad_norm_per_tensor multiplier and its tensor scale, where the call has them.
template <typename Kind, typename T>
FUSEDOPT_HD Scalars<Kind, T> for_tensor(Scalars<Kind, T> s, const UpdateOptions& o, int64_t column) {
  if (o.grad_transform.tensor_clip != nullptr) s.grad.multiplier = math_value<T>(o.grad_transform.tensor_clip, column);
  if constexpr (Kind::kTensorScale) {
    if (o.tensor_scale != nullptr) Kind::scale_coefficients(s.k, o.tensor_scale[column]);
  }
  return s;
}

// Whether a call reads no state tensor it updates: a first step of an optimizer whose new
// states are written before they are read.
template <typename Kind>
FUSEDOPT_HD bool skips_state_loads(const UpdateOptions& o) {
  return o.first_step && !Kind::kReadsStateOnFirstStep;
}

// CUDA launch bound most optimizers use: 4 blocks of 256 threads (at most 64 registers) for
// float32 math, 3 (at most 80) for float64 math, which spills at 64 (cuda/launch_plan.h).
template <typename S>
constexpr int default_min_blocks() {
  return sizeof(typename OpMath<S>::type) == 8 ? 3 : 4;
}

// The defaults an optimizer inherits and may restate (a name in the derived struct hides the
// base's): kStates states, all of them always active; no step counter; new states read like
// any other; the default CUDA launch bounds. `struct lion : OptimizerDefaults<1> { ... }`
// then only adds its Hyper, Coefficients, coefficients() and update().
template <int kStateCount>
struct OptimizerDefaults {
  static constexpr int kStates = kStateCount;
  static constexpr uint32_t kAllStates = (1u << kStateCount) - 1u;
  using Variants = StateVariants<kAllStates>;
  template <typename Hyper> static constexpr uint32_t active_states(const Hyper&) { return kAllStates; }
  static constexpr bool kStepCounter = false;
  static constexpr bool kStepDependent = false;
  static constexpr int kScalarStates = 0;
  static constexpr bool kReadsStateOnFirstStep = true;
  // A per-tensor scale of the coefficients (UpdateOptions::tensor_scale), applied by
  // `static void scale_coefficients(Coefficients<T>&, double)` (LAMB's trust ratio).
  static constexpr bool kTensorScale = false;
  // A reduction pass before the update (LAMB's norms): `static void norm_terms(T p, T g,
  // const T* state, const Coefficients<T>&, double& a, double& b)` adds one element's two
  // terms without writing anything; the CPU's and the CUDA's norms<Kind> sum them per tensor
  // (cpu/update_cpu.h, cuda/norms.cuh), in fusedopt/reduce.h's order.
  static constexpr bool kNormPass = false;
  template <typename S, typename SS, bool kMaster> static constexpr int min_blocks() {
    return default_min_blocks<S>();
  }
};

}  // namespace fusedopt
