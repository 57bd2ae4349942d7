// Adamax (Kingma & Ba, section 7.1): Adam with the infinity norm, as torch.optim.Adamax's
// single-tensor path. States: exp_avg, exp_inf.
#pragma once

#include <cmath>

#include "fusedopt/optimizer.h"

namespace fusedopt::optimizers {

struct adamax : OptimizerDefaults<2> {
#define FUSEDOPT_ADAMAX_HYPERPARAMETERS(X) \
  X(double, beta1) X(double, beta2) X(double, eps) X(double, weight_decay) X(bool, maximize)
  FUSEDOPT_HYPERPARAMETERS(FUSEDOPT_ADAMAX_HYPERPARAMETERS);

  enum State { kExpAvg, kExpInf };

  static constexpr bool kStepCounter = true;
  static constexpr bool kStepDependent = true;  // the bias correction of exp_avg

  template <typename T> struct Coefficients {
    T one_minus_beta1, beta2, eps, weight_decay, grad_sign, neg_step_size;
  };

  template <typename T>
  static FUSEDOPT_HD Coefficients<T> coefficients(const Hyper& c, double lr, double step) {
    Coefficients<T> k;
    k.one_minus_beta1 = T(1.0 - c.beta1);
    k.beta2 = T(c.beta2);
    k.eps = T(c.eps);
    k.weight_decay = T(c.weight_decay);
    k.grad_sign = c.maximize ? T(-1) : T(1);
    k.neg_step_size = T(-lr / (1.0 - step_power(c.beta1, step)));
    return k;
  }

  template <uint32_t kActive, typename T, typename FirstStep>
  static FUSEDOPT_HD void update(T& p, T g, T* s, const Coefficients<T>& k, FirstStep) {
    g = g * k.grad_sign;
    g = k.weight_decay != T(0) ? g + k.weight_decay * p : g;  // a select: keeps loops vectorisable
    T& m = s[kExpAvg];
    T& u = s[kExpInf];
    m = lerp(m, g, k.one_minus_beta1);
    const T decayed = u * k.beta2;
    const T magnitude = std::fabs(g) + k.eps;
    u = decayed > magnitude || decayed != decayed ? decayed : magnitude;  // torch.maximum (NaN wins)
    p = p + k.neg_step_size * (m / u);
  }
};

}  // namespace fusedopt::optimizers
