// NAdam (Dozat 2016, "Incorporating Nesterov Momentum into Adam"), as torch.optim.NAdam's
// single-tensor path. The momentum schedule mu_t = beta1 (1 - 0.5 * 0.96^(t psi)) and its
// next value are computed in double (torch's Python floats); the per-tensor scalar state
// mu_product is a float32 that torch multiplies in place by mu_t (a float32 product, as a
// float32 tensor times a Python float is), then reads back as a double.
// States: exp_avg, exp_avg_sq. Scalar state: mu_product.
#pragma once

#include <cmath>

#include "fusedopt/optimizer.h"

namespace fusedopt::optimizers {

struct nadam : OptimizerDefaults<2> {
#define FUSEDOPT_NADAM_HYPERPARAMETERS(X)                                                          \
  X(double, beta1) X(double, beta2) X(double, eps) X(double, weight_decay) X(double, momentum_decay) \
  X(bool, decoupled_weight_decay) X(bool, maximize)                                                  \
  X(bool, absolute_weight_decay) /* weight_decay_mode="absolute": decoupled decay p *= 1 - wd */
  FUSEDOPT_HYPERPARAMETERS(FUSEDOPT_NADAM_HYPERPARAMETERS);

  enum State { kExpAvg, kExpAvgSq };
  enum ScalarState { kMuProduct };

  static constexpr bool kStepCounter = true;
  static constexpr bool kStepDependent = true;  // bias correction, momentum schedule, mu_product
  static constexpr int kScalarStates = 1;

  template <typename T> struct Coefficients {
    T grad_sign, l2_decay, param_scale, one_minus_beta1, beta2, one_minus_beta2, eps;
    T bias_correction2, grad_coef, exp_avg_coef;
  };

  // Reads the tensor's mu_product and stores it times this step's mu (see optimizer.h).
  template <typename T>
  static FUSEDOPT_HD Coefficients<T> coefficients(const Hyper& c, double lr, double step, float* const* scalars) {
    const double mu = c.beta1 * (1.0 - 0.5 * std::pow(0.96, step * c.momentum_decay));
    const double mu_next = c.beta1 * (1.0 - 0.5 * std::pow(0.96, (step + 1.0) * c.momentum_decay));
    const float mu_product = *scalars[kMuProduct] * float(mu);
    *scalars[kMuProduct] = mu_product;
    const double mu_product_next = double(mu_product) * mu_next;
    Coefficients<T> k;
    k.grad_sign = c.maximize ? T(-1) : T(1);
    k.l2_decay = c.decoupled_weight_decay ? T(0) : T(c.weight_decay);
    k.param_scale = c.decoupled_weight_decay ? T(decoupled_scale(c.weight_decay, lr, c.absolute_weight_decay)) : T(1);
    k.one_minus_beta1 = T(1.0 - c.beta1);
    k.beta2 = T(c.beta2);
    k.one_minus_beta2 = T(1.0 - c.beta2);
    k.eps = T(c.eps);
    k.bias_correction2 = T(1.0 - step_power(c.beta2, step));
    k.grad_coef = T(-lr * (1.0 - mu) / (1.0 - double(mu_product)));
    k.exp_avg_coef = T((-lr * mu_next) / (1.0 - mu_product_next));
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
    const T denom = std::sqrt(v / k.bias_correction2) + k.eps;
    p = p + k.grad_coef * g / denom;
    p = p + k.exp_avg_coef * m / denom;
  }
};

}  // namespace fusedopt::optimizers
