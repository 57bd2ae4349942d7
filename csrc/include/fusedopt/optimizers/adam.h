// Adam / AdamW per-element update, written once for the CPU loops and the CUDA functors.
// The operation order follows torch.optim.Adam's single-tensor path step for step, so
// float64 results agree to rounding and float32 results to a few ulp.
// States (table order): exp_avg, exp_avg_sq, then max_exp_avg_sq with amsgrad.
#pragma once

#include <cmath>

#include "fusedopt/optimizer.h"

namespace fusedopt::optimizers {

struct adam : OptimizerDefaults<3> {
#define FUSEDOPT_ADAM_HYPERPARAMETERS(X)                                  \
  X(double, beta1) X(double, beta2) X(double, eps) X(double, weight_decay) \
  X(bool, amsgrad) X(bool, maximize)                                       \
  X(bool, decoupled_weight_decay) /* AdamW: p *= 1 - lr*wd, instead of g += wd*p */ \
  X(bool, optimized_update)       /* Kingma & Ba's "efficient" form: eps added to sqrt(v) unscaled */ \
  X(bool, absolute_weight_decay)  /* weight_decay_mode="absolute": decoupled decay p *= 1 - wd, without lr */
  FUSEDOPT_HYPERPARAMETERS(FUSEDOPT_ADAM_HYPERPARAMETERS);

  enum State { kExpAvg, kExpAvgSq, kMaxExpAvgSq };
  using Variants = StateVariants<0b011, 0b111>;
  static constexpr uint32_t active_states(const Hyper& h) { return h.amsgrad ? 0b111 : 0b011; }

  static constexpr bool kStepCounter = true;
  static constexpr bool kStepDependent = true;  // the bias corrections

  // bfloat16 without master weights: at 64 registers ptxas (CUDA 13.0) gives it an 8-byte
  // stack frame, so 80 as for float64.
  template <typename S, typename SS, bool kMaster> static constexpr int min_blocks() {
    return std::is_same_v<SS, BFloat16> ? 3 : default_min_blocks<S>();
  }

  // Scalars that depend on the tensor's step, computed in double (as torch does in Python)
  // and rounded once to the math type. `step` is the counter after this step's increment.
  template <typename T> struct Coefficients {
    T one_minus_beta1, beta2, one_minus_beta2, eps;
    T grad_sign;        // -1 with maximize; multiplying by +-1 is exact
    T l2_decay;         // Adam's weight decay added to the gradient (0 for AdamW)
    T param_scale;      // AdamW's 1 - lr*wd, or 1 - wd with absolute_weight_decay (1 for Adam)
    T neg_step_size;    // -lr / (1 - beta1^t), or the optimized form's -lr*sqrt(1-beta2^t)/(1-beta1^t)
    T denom_divisor;    // sqrt(1 - beta2^t); 1 in the optimized form
  };

  template <typename T>
  static FUSEDOPT_HD Coefficients<T> coefficients(const Hyper& c, double lr, double step) {
    const double bias_correction1 = 1.0 - step_power(c.beta1, step);
    const double bias_correction2_sqrt = std::sqrt(1.0 - step_power(c.beta2, step));
    Coefficients<T> k;
    k.one_minus_beta1 = T(1.0 - c.beta1);
    k.beta2 = T(c.beta2);
    k.one_minus_beta2 = T(1.0 - c.beta2);
    k.eps = T(c.eps);
    k.grad_sign = c.maximize ? T(-1) : T(1);
    k.l2_decay = c.decoupled_weight_decay ? T(0) : T(c.weight_decay);
    k.param_scale = c.decoupled_weight_decay ? T(decoupled_scale(c.weight_decay, lr, c.absolute_weight_decay)) : T(1);
    if (c.optimized_update) {
      k.neg_step_size = T(-lr * bias_correction2_sqrt / bias_correction1);
      k.denom_divisor = T(1);
    } else {
      k.neg_step_size = T(-lr / bias_correction1);
      k.denom_divisor = T(bias_correction2_sqrt);
    }
    return k;
  }

  template <uint32_t kActive, typename T, typename FirstStep>
  static FUSEDOPT_HD void update(T& p, T g, T* s, const Coefficients<T>& k, FirstStep) {
    g = g * k.grad_sign;
    g = k.l2_decay != T(0) ? g + k.l2_decay * p : g;  // a select, not a branch: keeps loops vectorisable
    p = p * k.param_scale;
    T& m = s[kExpAvg];
    T& v = s[kExpAvgSq];
    m = lerp(m, g, k.one_minus_beta1);
    v = v * k.beta2 + k.one_minus_beta2 * g * g;
    T second_moment = v;
    if (kActive & (1u << kMaxExpAvgSq)) {
      T& max_v = s[kMaxExpAvgSq];
      max_v = max_v > v ? max_v : v;  // torch.maximum; v is never NaN unless g is
      second_moment = max_v;
    }
    const T denom = std::sqrt(second_moment) / k.denom_divisor + k.eps;
    p = p + k.neg_step_size * m / denom;
  }
};

}  // namespace fusedopt::optimizers
