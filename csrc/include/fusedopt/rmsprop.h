// RMSprop per-element update (centered, momentum, weight decay, maximize), shared by the
// CPU loops and the CUDA functors. Order of operations as torch.optim.RMSprop.
#pragma once

#include <cmath>

#include "fusedopt/common.h"

namespace fusedopt {

struct RMSpropConfig {
  double lr, alpha, eps, weight_decay, momentum;
  bool centered, maximize;
  bool master_weights = false;  // see AdamConfig
  const double* lr_tensor = nullptr;  // see AdamConfig
  GradTransform grad_transform = {};
};

template <typename T> struct RMSpropCoefficients {
  T neg_lr, alpha, one_minus_alpha, eps, weight_decay, momentum, grad_sign;
  GradFactors<T> grad;
};

template <typename T> FUSEDOPT_HD RMSpropCoefficients<T> rmsprop_coefficients(const RMSpropConfig& c) {
  RMSpropCoefficients<T> k;
  k.neg_lr = T(-learning_rate(c.lr_tensor, c.lr));
  k.alpha = T(c.alpha);
  k.one_minus_alpha = T(1.0 - c.alpha);
  k.eps = T(c.eps);
  k.weight_decay = T(c.weight_decay);
  k.momentum = T(c.momentum);
  k.grad_sign = c.maximize ? T(-1) : T(1);
  k.grad = grad_factors<T>(c.grad_transform);
  return k;
}

// One element. `g` as in adam_update; `grad_avg` is only touched when CENTERED, `buf`
// only when MOMENTUM.
template <bool CENTERED, bool MOMENTUM, typename T>
FUSEDOPT_HD void rmsprop_update(T& p, T& g_in, T& square_avg, T& grad_avg, T& buf,
                                const RMSpropCoefficients<T>& k) {
  g_in = unscaled_grad(g_in, k.grad);
  T g = g_in * k.grad_sign;
  g = k.weight_decay != T(0) ? g + k.weight_decay * p : g;  // a select: see adam.h
  square_avg = square_avg * k.alpha + k.one_minus_alpha * g * g;
  T avg;
  if (CENTERED) {
    grad_avg = lerp(grad_avg, g, k.one_minus_alpha);
    avg = std::sqrt(square_avg + T(-1) * grad_avg * grad_avg);
  } else {
    avg = std::sqrt(square_avg);
  }
  avg = avg + k.eps;
  if (MOMENTUM) {
    buf = buf * k.momentum + g / avg;
    p = p + k.neg_lr * buf;
  } else {
    p = p + k.neg_lr * g / avg;
  }
}

}  // namespace fusedopt
