// SGD per-element update (momentum, dampening, Nesterov, weight decay, maximize), shared
// by the CPU loops and the CUDA functors. Order of operations as torch.optim.SGD.
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

struct SGDConfig {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
  // torch's first-step rule: a missing momentum buffer starts as a copy of the gradient.
  bool first_step;
  bool master_weights = false;  // see AdamConfig
  const double* lr_tensor = nullptr;  // see AdamConfig
  GradTransform grad_transform = {};
};

template <typename T> struct SGDCoefficients {
  T neg_lr, weight_decay, momentum, one_minus_dampening, grad_sign;
  bool nesterov, first_step;
  GradFactors<T> grad;
};

template <typename T> FUSEDOPT_HD SGDCoefficients<T> sgd_coefficients(const SGDConfig& c) {
  SGDCoefficients<T> k;
  k.neg_lr = T(-learning_rate(c.lr_tensor, c.lr));
  k.weight_decay = T(c.weight_decay);
  k.momentum = T(c.momentum);
  k.one_minus_dampening = T(1.0 - c.dampening);
  k.grad_sign = c.maximize ? T(-1) : T(1);
  k.nesterov = c.nesterov;
  k.first_step = c.first_step;
  k.grad = grad_factors<T>(c.grad_transform);
  return k;
}

// One element. `g` as in adam_update; `buf` is only touched when MOMENTUM.
template <bool MOMENTUM, typename T>
FUSEDOPT_HD void sgd_update(T& p, T& g_in, T& buf, const SGDCoefficients<T>& k) {
  g_in = unscaled_grad(g_in, k.grad);
  T g = g_in * k.grad_sign;
  g = k.weight_decay != T(0) ? g + k.weight_decay * p : g;  // a select: see adam.h
  if (MOMENTUM) {
    buf = k.first_step ? g : buf * k.momentum + k.one_minus_dampening * g;
    g = k.nesterov ? g + k.momentum * buf : buf;
  }
  p = p + k.neg_lr * g;
}

}  // namespace fusedopt
