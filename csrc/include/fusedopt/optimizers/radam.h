// RAdam (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate and Beyond"), as
// torch.optim.RAdam's single-tensor path. The rectification depends only on the step, so
// whether it applies (rho_t > 5) and its factor are per-tensor coefficients.
// States: exp_avg, exp_avg_sq.
#pragma once

#include <cmath>

#include "fusedopt/optimizer.h"

namespace fusedopt::optimizers {

struct radam : OptimizerDefaults<2> {
#define FUSEDOPT_RADAM_HYPERPARAMETERS(X)                                  \
  X(double, beta1) X(double, beta2) X(double, eps) X(double, weight_decay) \
  X(bool, decoupled_weight_decay) X(bool, maximize)                        \
  X(bool, absolute_weight_decay) /* weight_decay_mode="absolute": decoupled decay p *= 1 - wd */
  FUSEDOPT_HYPERPARAMETERS(FUSEDOPT_RADAM_HYPERPARAMETERS);

  enum State { kExpAvg, kExpAvgSq };

  static constexpr bool kStepCounter = true;
  static constexpr bool kStepDependent = true;  // bias corrections and rectification

  template <typename T> struct Coefficients {
    T one_minus_beta1, beta2, one_minus_beta2, eps, grad_sign, l2_decay, param_scale;
    T bias_correction1, lr, bias_correction2_sqrt, rect;
    // rho_t > 5: the adaptive step; else plain momentum SGD. A T (1 or 0), not a bool: GCC
    // turns a select on a bool member into a branch and leaves the CPU loop scalar (4x slower).
    T rectified;
  };

  template <typename T>
  static FUSEDOPT_HD Coefficients<T> coefficients(const Hyper& c, double lr, double step) {
    const double beta2_t = step_power(c.beta2, step);
    const double bias_correction2 = 1.0 - beta2_t;
    const double rho_inf = 2.0 / (1.0 - c.beta2) - 1.0;
    const double rho_t = rho_inf - 2.0 * step * beta2_t / bias_correction2;
    Coefficients<T> k;
    k.one_minus_beta1 = T(1.0 - c.beta1);
    k.beta2 = T(c.beta2);
    k.one_minus_beta2 = T(1.0 - c.beta2);
    k.eps = T(c.eps);
    k.grad_sign = c.maximize ? T(-1) : T(1);
    k.l2_decay = c.decoupled_weight_decay ? T(0) : T(c.weight_decay);
    k.param_scale = c.decoupled_weight_decay ? T(decoupled_scale(c.weight_decay, lr, c.absolute_weight_decay)) : T(1);
    k.bias_correction1 = T(1.0 - step_power(c.beta1, step));
    k.lr = T(lr);
    k.bias_correction2_sqrt = T(std::sqrt(bias_correction2));
    k.rectified = rho_t > 5.0 ? T(1) : T(0);
    k.rect = rho_t > 5.0 ? T(std::sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                                       ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)))
                         : T(1);
    return k;
  }

  template <uint32_t kActive, typename T, typename FirstStep>
  static FUSEDOPT_HD void update(T& p, T g, T* s, const Coefficients<T>& k, FirstStep) {
    g = g * k.grad_sign;
    g = k.l2_decay != T(0) ? g + k.l2_decay * p : g;  // a select: keeps loops vectorisable
    p = p * k.param_scale;
    T& m = s[kExpAvg];
    T& v = s[kExpAvgSq];
    m = lerp(m, g, k.one_minus_beta1);
    v = v * k.beta2 + k.one_minus_beta2 * g * g;
    const T corrected = m / k.bias_correction1 * k.lr;
    const T adaptive = k.bias_correction2_sqrt / (std::sqrt(v) + k.eps);
    p = p - (k.rectified != T(0) ? corrected * adaptive * k.rect : corrected);
  }
};

}  // namespace fusedopt::optimizers
