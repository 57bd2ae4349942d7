// RMSprop per-element update (centered, momentum, weight decay, maximize), shared by the
// CPU loops and the CUDA functors. Order of operations as torch.optim.RMSprop.
// States: square_avg, then grad_avg when centered, then momentum_buffer when momentum > 0.
#pragma once

#include <cmath>

#include "fusedopt/optimizer.h"

namespace fusedopt::optimizers {

struct rmsprop : OptimizerDefaults<3> {
#define FUSEDOPT_RMSPROP_HYPERPARAMETERS(X) \
  X(double, alpha) X(double, eps) X(double, weight_decay) X(double, momentum) X(bool, centered) X(bool, maximize)
  FUSEDOPT_HYPERPARAMETERS(FUSEDOPT_RMSPROP_HYPERPARAMETERS);

  enum State { kSquareAvg, kGradAvg, kMomentumBuffer };
  using Variants = StateVariants<0b001, 0b011, 0b101, 0b111>;
  static constexpr uint32_t active_states(const Hyper& h) {
    return 0b001u | (h.centered ? 0b010u : 0u) | (h.momentum > 0.0 ? 0b100u : 0u);
  }

  // The step counter does not enter RMSprop's math, but torch keeps and advances it.
  static constexpr bool kStepCounter = true;

  // float32 params with bf16 states (converted on load and store) spill at 64 registers
  // (ptxas, CUDA 13.0, sm_90): 3 blocks, 80.
  template <typename S, typename SS, bool kMaster> static constexpr int min_blocks() {
    return std::is_same_v<S, float> && std::is_same_v<SS, BFloat16> ? 3 : default_min_blocks<S>();
  }

  template <typename T> struct Coefficients {
    T neg_lr, alpha, one_minus_alpha, eps, weight_decay, momentum, grad_sign;
  };

  template <typename T>
  static FUSEDOPT_HD Coefficients<T> coefficients(const Hyper& c, double lr, double) {
    Coefficients<T> k;
    k.neg_lr = T(-lr);
    k.alpha = T(c.alpha);
    k.one_minus_alpha = T(1.0 - c.alpha);
    k.eps = T(c.eps);
    k.weight_decay = T(c.weight_decay);
    k.momentum = T(c.momentum);
    k.grad_sign = c.maximize ? T(-1) : T(1);
    return k;
  }

  template <uint32_t kActive, typename T, typename FirstStep>
  static FUSEDOPT_HD void update(T& p, T g, T* s, const Coefficients<T>& k, FirstStep) {
    g = g * k.grad_sign;
    g = k.weight_decay != T(0) ? g + k.weight_decay * p : g;  // a select: see adam.h
    T& square_avg = s[kSquareAvg];
    square_avg = square_avg * k.alpha + k.one_minus_alpha * g * g;
    T avg;
    if (kActive & (1u << kGradAvg)) {
      T& grad_avg = s[kGradAvg];
      grad_avg = lerp(grad_avg, g, k.one_minus_alpha);
      avg = std::sqrt(square_avg + T(-1) * grad_avg * grad_avg);
    } else {
      avg = std::sqrt(square_avg);
    }
    avg = avg + k.eps;
    if (kActive & (1u << kMomentumBuffer)) {
      T& buf = s[kMomentumBuffer];
      buf = buf * k.momentum + g / avg;
      p = p + k.neg_lr * buf;
    } else {
      p = p + k.neg_lr * g / avg;
    }
  }
};

}  // namespace fusedopt::optimizers
