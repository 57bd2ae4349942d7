// ASGD (averaged SGD, Polyak & Juditsky 1992), as torch.optim.ASGD's single-tensor path.
// The step size eta and the averaging weight mu are per-tensor scalar states (float32, as
// torch keeps them): a step uses the values the previous step stored, then stores
// eta = lr / (1 + lambd*lr*step)^alpha and mu = 1 / max(1, step - t0), computed in double
// as torch's Python floats are. States: ax (the average). Scalar states: eta, mu.
#pragma once

#include <cmath>

#include "fusedopt/optimizer.h"

namespace fusedopt::optimizers {

struct asgd : OptimizerDefaults<1> {
#define FUSEDOPT_ASGD_HYPERPARAMETERS(X) \
  X(double, lambd) X(double, alpha) X(double, t0) X(double, weight_decay) X(bool, maximize)
  FUSEDOPT_HYPERPARAMETERS(FUSEDOPT_ASGD_HYPERPARAMETERS);

  enum State { kAx };
  enum ScalarState { kEta, kMu };

  static constexpr bool kStepCounter = true;
  static constexpr bool kStepDependent = true;  // eta and mu differ per tensor
  static constexpr int kScalarStates = 2;

  template <typename T> struct Coefficients {
    T grad_sign, weight_decay, param_scale, neg_eta, mu;
    bool average;  // mu != 1: ax moves towards p; else ax = p (torch's copy, exact)
  };

  // Reads the tensor's eta and mu, then stores the next step's (see optimizer.h).
  template <typename T>
  static FUSEDOPT_HD Coefficients<T> coefficients(const Hyper& c, double lr, double step, float* const* scalars) {
    const double eta = double(*scalars[kEta]);
    const double mu = double(*scalars[kMu]);
    Coefficients<T> k;
    k.grad_sign = c.maximize ? T(-1) : T(1);
    k.weight_decay = T(c.weight_decay);
    k.param_scale = T(1.0 - c.lambd * eta);
    k.neg_eta = T(-eta);
    k.mu = T(mu);
    k.average = mu != 1.0;
    const double since_t0 = step - c.t0;
    *scalars[kEta] = float(lr / std::pow(1.0 + c.lambd * lr * step, c.alpha));
    *scalars[kMu] = float(1.0 / (since_t0 > 1.0 ? since_t0 : 1.0));
    return k;
  }

  template <uint32_t kActive, typename T, typename FirstStep>
  static FUSEDOPT_HD void update(T& p, T g, T* s, const Coefficients<T>& k, FirstStep) {
    g = g * k.grad_sign;
    g = k.weight_decay != T(0) ? g + k.weight_decay * p : g;  // a select: keeps loops vectorisable
    p = p * k.param_scale;
    p = p + k.neg_eta * g;
    T& ax = s[kAx];
    ax = k.average ? ax + (p - ax) * k.mu : p;
  }
};

}  // namespace fusedopt::optimizers
