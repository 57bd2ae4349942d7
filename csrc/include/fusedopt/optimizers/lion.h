// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Program 1):
// decoupled weight decay, a step of exactly lr along the sign of an interpolation of
// momentum and gradient, then the momentum update. State: exp_avg. No step counter.
#pragma once

#include "fusedopt/optimizer.h"

namespace fusedopt::optimizers {

struct lion : OptimizerDefaults<1> {
#define FUSEDOPT_LION_HYPERPARAMETERS(X)                                  \
  X(double, beta1) X(double, beta2) X(double, weight_decay) X(bool, maximize) \
  X(bool, absolute_weight_decay) /* weight_decay_mode="absolute": p *= 1 - wd, without lr */
  FUSEDOPT_HYPERPARAMETERS(FUSEDOPT_LION_HYPERPARAMETERS);

  enum State { kExpAvg };

  template <typename T> struct Coefficients {
    T one_minus_beta1, one_minus_beta2, neg_lr, param_scale, grad_sign;
  };

  template <typename T>
  static FUSEDOPT_HD Coefficients<T> coefficients(const Hyper& c, double lr, double) {
    Coefficients<T> k;
    k.one_minus_beta1 = T(1.0 - c.beta1);
    k.one_minus_beta2 = T(1.0 - c.beta2);
    k.neg_lr = T(-lr);
    k.param_scale = T(decoupled_scale(c.weight_decay, lr, c.absolute_weight_decay));  // exactly 1 without decay
    k.grad_sign = c.maximize ? T(-1) : T(1);
    return k;
  }

  template <uint32_t kActive, typename T, typename FirstStep>
  static FUSEDOPT_HD void update(T& p, T g, T* s, const Coefficients<T>& k, FirstStep) {
    g = g * k.grad_sign;
    T& m = s[kExpAvg];
    const T c = lerp(m, g, k.one_minus_beta1);
    const T direction = c > T(0) ? T(1) : (c < T(0) ? T(-1) : T(0));  // torch.sign: 0 for 0 and NaN
    p = p * k.param_scale + k.neg_lr * direction;
    m = lerp(m, g, k.one_minus_beta2);
  }
};

}  // namespace fusedopt::optimizers
