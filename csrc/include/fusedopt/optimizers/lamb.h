// LAMB (You et al. 2020, arXiv 1904.00962, Algorithm 2) per-element math, for the CPU and CUDA kernels:
// Adam's moments, the update direction u = m_hat / (sqrt(v_hat) + eps) + wd * p, and the
// step p -= lr * ratio * u, with ratio = ||p|| / ||u|| per tensor (1 where either is 0).
// Two passes per step: norm_terms (the reduction pass: ||p||^2 and ||u||^2, u recomputed from
// p, g, m, v without writing), then update (m, v and p written, the ratio arriving through
// UpdateOptions::tensor_scale; on the CPU both passes run a group of tensors at a time,
// csrc/cpu/norm_then_update.h). States (table order): exp_avg, exp_avg_sq.
#pragma once

#include <cmath>

#include "fusedopt/optimizer.h"

namespace fusedopt::optimizers {

struct lamb : OptimizerDefaults<2> {
#define FUSEDOPT_LAMB_HYPERPARAMETERS(X)                                  \
  X(double, beta1) X(double, beta2) X(double, eps) X(double, weight_decay) \
  X(bool, maximize)                                                        \
  X(bool, bias_correction)  /* m and v divided by 1 - beta^t */            \
  X(bool, grad_averaging)   /* m = b1*m + (1-b1)*g; without it m = b1*m + g (Apex) */ \
  X(bool, optimized_update) /* Kingma & Ba's form: eps added to sqrt(v) before the bias correction */
  FUSEDOPT_HYPERPARAMETERS(FUSEDOPT_LAMB_HYPERPARAMETERS);

  enum State { kExpAvg, kExpAvgSq };
  static constexpr bool kStepCounter = true;
  static constexpr bool kStepDependent = true;  // the bias corrections
  static constexpr bool kTensorScale = true;    // the trust ratio
  static constexpr bool kNormPass = true;       // ||p||^2 and ||u||^2

  template <typename T> struct Coefficients {
    T beta1, grad_weight, beta2, one_minus_beta2, grad_sign, weight_decay;
    // u = m * m_scale / (sqrt(v) + eps_scaled). torch's form, m_hat / (sqrt(v_hat) + eps), is
    // m * (sqrt(1-b2^t)/(1-b1^t)) / (sqrt(v) + eps*sqrt(1-b2^t)) exactly: one division per
    // element and pass instead of two (a vector division costs a dozen multiplies where the
    // data sits in cache); the optimized form puts eps beside sqrt(v) unscaled. Without bias
    // correction both are m / (sqrt(v) + eps).
    T m_scale;     // sqrt(1-b2^t)/(1-b1^t)
    T eps_scaled;  // eps*sqrt(1-b2^t); eps in the optimized form
    T neg_step_size;  // -lr * ratio (ratio 1 until scale_coefficients)
    double neg_lr;
  };

  template <typename T>
  static FUSEDOPT_HD Coefficients<T> coefficients(const Hyper& c, double lr, double step) {
    const double bias_correction1 = c.bias_correction ? 1.0 - step_power(c.beta1, step) : 1.0;
    const double bias_correction2_sqrt = c.bias_correction ? std::sqrt(1.0 - step_power(c.beta2, step)) : 1.0;
    Coefficients<T> k;
    k.beta1 = T(c.beta1);
    k.grad_weight = c.grad_averaging ? T(1.0 - c.beta1) : T(1);
    k.beta2 = T(c.beta2);
    k.one_minus_beta2 = T(1.0 - c.beta2);
    k.grad_sign = c.maximize ? T(-1) : T(1);
    k.weight_decay = T(c.weight_decay);
    k.m_scale = T(bias_correction2_sqrt / bias_correction1);
    k.eps_scaled = T(c.optimized_update ? c.eps : c.eps * bias_correction2_sqrt);
    k.neg_lr = -lr;
    k.neg_step_size = T(-lr);
    return k;
  }

  // The trust ratio, computed in double from the norms, multiplies lr before one rounding.
  template <typename T> static FUSEDOPT_HD void scale_coefficients(Coefficients<T>& k, double ratio) {
    k.neg_step_size = T(k.neg_lr * ratio);
  }

  // The moments (in place) and the update direction u.
  template <typename T> static FUSEDOPT_HD T direction(T p, T g, T& m, T& v, const Coefficients<T>& k) {
    g = g * k.grad_sign;
    m = m * k.beta1 + k.grad_weight * g;
    v = v * k.beta2 + k.one_minus_beta2 * g * g;
    return m * k.m_scale / (std::sqrt(v) + k.eps_scaled) + k.weight_decay * p;
  }

  template <typename T>
  static FUSEDOPT_HD void norm_terms(T p, T g, const T* s, const Coefficients<T>& k, double& pp, double& uu) {
    T m = s[kExpAvg], v = s[kExpAvgSq];
    const T u = direction(p, g, m, v, k);
    pp += double(p) * double(p);
    uu += double(u) * double(u);
  }

  template <uint32_t kActive, typename T, typename FirstStep>
  static FUSEDOPT_HD void update(T& p, T g, T* s, const Coefficients<T>& k, FirstStep) {
    const T u = direction(p, g, s[kExpAvg], s[kExpAvgSq], k);
    p = p + k.neg_step_size * u;
  }
};

}  // namespace fusedopt::optimizers
