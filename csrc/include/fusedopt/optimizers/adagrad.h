// Adagrad (Duchi et al. 2011), as torch.optim.Adagrad's single-tensor path for dense grads.
// State: sum (starting at initial_accumulator_value, which Python fills in).
#pragma once

#include <cmath>

#include "fusedopt/optimizer.h"

namespace fusedopt::optimizers {

struct adagrad : OptimizerDefaults<1> {
#define FUSEDOPT_ADAGRAD_HYPERPARAMETERS(X) X(double, lr_decay) X(double, eps) X(double, weight_decay) X(bool, maximize)
  FUSEDOPT_HYPERPARAMETERS(FUSEDOPT_ADAGRAD_HYPERPARAMETERS);

  enum State { kSum };

  static constexpr bool kStepCounter = true;
  static constexpr bool kStepDependent = true;  // lr / (1 + (step - 1) * lr_decay)

  template <typename T> struct Coefficients {
    T eps, weight_decay, grad_sign, neg_clr;
  };

  template <typename T>
  static FUSEDOPT_HD Coefficients<T> coefficients(const Hyper& c, double lr, double step) {
    Coefficients<T> k;
    k.eps = T(c.eps);
    k.weight_decay = T(c.weight_decay);
    k.grad_sign = c.maximize ? T(-1) : T(1);
    k.neg_clr = T(-(lr / (1.0 + (step - 1.0) * c.lr_decay)));
    return k;
  }

  template <uint32_t kActive, typename T, typename FirstStep>
  static FUSEDOPT_HD void update(T& p, T g, T* s, const Coefficients<T>& k, FirstStep) {
    g = g * k.grad_sign;
    g = k.weight_decay != T(0) ? g + k.weight_decay * p : g;  // a select: keeps loops vectorisable
    T& sum = s[kSum];
    sum = sum + g * g;
    const T std_dev = std::sqrt(sum) + k.eps;
    p = p + k.neg_clr * (g / std_dev);
  }
};

}  // namespace fusedopt::optimizers
