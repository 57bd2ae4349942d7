// SGD per-element update (momentum, dampening, Nesterov, weight decay, maximize), shared
// by the CPU loops and the CUDA functors. Order of operations as torch.optim.SGD.
// States: momentum_buffer when momentum != 0.
#pragma once

#include "fusedopt/optimizer.h"

namespace fusedopt::optimizers {

struct sgd : OptimizerDefaults<1> {
#define FUSEDOPT_SGD_HYPERPARAMETERS(X) \
  X(double, momentum) X(double, dampening) X(double, weight_decay) X(bool, nesterov) X(bool, maximize)
  FUSEDOPT_HYPERPARAMETERS(FUSEDOPT_SGD_HYPERPARAMETERS);

  enum State { kMomentumBuffer };
  using Variants = StateVariants<0b0, 0b1>;
  static constexpr uint32_t active_states(const Hyper& h) { return h.momentum != 0.0 ? 0b1 : 0b0; }

  // torch's first-step rule: a missing momentum buffer starts as a copy of the gradient.
  static constexpr bool kReadsStateOnFirstStep = false;

  // SGD's update needs fewer registers: float64 fits 4 blocks (60 registers) and float32
  // math with param-typed states 5 (48); a master copy or bf16 states beside another param
  // type spill at 5, and a master copy with bf16 states spills at 4 (ptxas, CUDA 13.0, sm_90).
  template <typename S, typename SS, bool kMaster> static constexpr int min_blocks() {
    if (kMaster && std::is_same_v<SS, BFloat16>) return 3;
    return sizeof(typename OpMath<S>::type) == 8 || kMaster || !std::is_same_v<S, SS> ? 4 : 5;
  }

  template <typename T> struct Coefficients {
    T neg_lr, weight_decay, momentum, one_minus_dampening, grad_sign;
    bool nesterov;
  };

  template <typename T>
  static FUSEDOPT_HD Coefficients<T> coefficients(const Hyper& c, double lr, double) {
    Coefficients<T> k;
    k.neg_lr = T(-lr);
    k.weight_decay = T(c.weight_decay);
    k.momentum = T(c.momentum);
    k.one_minus_dampening = T(1.0 - c.dampening);
    k.grad_sign = c.maximize ? T(-1) : T(1);
    k.nesterov = c.nesterov;
    return k;
  }

  template <uint32_t kActive, typename T, typename FirstStep>
  static FUSEDOPT_HD void update(T& p, T g, T* s, const Coefficients<T>& k, FirstStep first_step) {
    g = g * k.grad_sign;
    g = k.weight_decay != T(0) ? g + k.weight_decay * p : g;  // a select: see adam.h
    if (kActive & (1u << kMomentumBuffer)) {
      T& buf = s[kMomentumBuffer];
      buf = first_step ? g : buf * k.momentum + k.one_minus_dampening * g;
      g = k.nesterov ? g + k.momentum * buf : buf;
    }
    p = p + k.neg_lr * g;
  }
};

}  // namespace fusedopt::optimizers
