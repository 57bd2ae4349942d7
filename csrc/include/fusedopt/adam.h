// Adam / AdamW per-element update, written once for the CPU loops and the CUDA functors.
// The operation order follows torch.optim.Adam's single-tensor path step for step, so
// float64 results agree to rounding and float32 results to a few ulp.
#pragma once

#include <cmath>

#include "fusedopt/common.h"

namespace fusedopt {

// Hyper-parameters of one call, passed by value from Python.
struct AdamConfig {
  double lr, beta1, beta2, eps, weight_decay;
  bool amsgrad, maximize;
  bool decoupled_weight_decay;  // AdamW: p *= 1 - lr*wd, instead of g += wd*p
  bool optimized_update;        // Kingma & Ba's "efficient" form: eps added to sqrt(v) unscaled
  bool master_weights = false;  // 16-bit params: fp32 master copy (last state row) and fp32 moments
  const double* lr_tensor = nullptr;  // when set, lr is read from here (see learning_rate)
  GradTransform grad_transform = {};
};

// Scalars that depend on the tensor's step, computed in double (as torch does in Python)
// and rounded once to the math type. `step` is the counter after this step's increment.
template <typename T> struct AdamCoefficients {
  T one_minus_beta1, beta2, one_minus_beta2, eps;
  T grad_sign;        // -1 with maximize; multiplying by +-1 is exact
  T l2_decay;         // Adam's weight decay added to the gradient (0 for AdamW)
  T param_scale;      // AdamW's 1 - lr*wd (1 for Adam)
  T neg_step_size;    // -lr / (1 - beta1^t), or the optimized form's -lr*sqrt(1-beta2^t)/(1-beta1^t)
  T denom_divisor;    // sqrt(1 - beta2^t); 1 in the optimized form
  GradFactors<T> grad;
};

template <typename T>
FUSEDOPT_HD AdamCoefficients<T> adam_coefficients(const AdamConfig& c, double step) {
  const double lr = learning_rate(c.lr_tensor, c.lr);
  const double bias_correction1 = 1.0 - step_power(c.beta1, step);
  const double bias_correction2_sqrt = std::sqrt(1.0 - step_power(c.beta2, step));
  AdamCoefficients<T> k;
  k.one_minus_beta1 = T(1.0 - c.beta1);
  k.beta2 = T(c.beta2);
  k.one_minus_beta2 = T(1.0 - c.beta2);
  k.eps = T(c.eps);
  k.grad_sign = c.maximize ? T(-1) : T(1);
  k.grad = grad_factors<T>(c.grad_transform);
  k.l2_decay = c.decoupled_weight_decay ? T(0) : T(c.weight_decay);
  k.param_scale = c.decoupled_weight_decay ? T(1.0 - lr * c.weight_decay) : T(1);
  if (c.optimized_update) {
    k.neg_step_size = T(-lr * bias_correction2_sqrt / bias_correction1);
    k.denom_divisor = T(1);
  } else {
    k.neg_step_size = T(-lr / bias_correction1);
    k.denom_divisor = T(bias_correction2_sqrt);
  }
  return k;
}

// One element. `g` comes in as stored and leaves unscaled and clipped (what the caller
// writes back when writes_grad). `max_v` is only touched when AMSGRAD.
template <bool AMSGRAD, typename T>
FUSEDOPT_HD void adam_update(T& p, T& g_in, T& m, T& v, T& max_v, const AdamCoefficients<T>& k) {
  g_in = unscaled_grad(g_in, k.grad);
  T g = g_in * k.grad_sign;
  g = k.l2_decay != T(0) ? g + k.l2_decay * p : g;  // a select, not a branch: keeps loops vectorisable
  p = p * k.param_scale;
  m = lerp(m, g, k.one_minus_beta1);
  v = v * k.beta2 + k.one_minus_beta2 * g * g;
  T second_moment = v;
  if (AMSGRAD) {
    max_v = max_v > v ? max_v : v;  // torch.maximum; v is never NaN unless g is
    second_moment = max_v;
  }
  const T denom = std::sqrt(second_moment) / k.denom_divisor + k.eps;
  p = p + k.neg_step_size * m / denom;
}

}  // namespace fusedopt
