// Adadelta (Zeiler 2012), as torch.optim.Adadelta's single-tensor path.
// States: square_avg, acc_delta.
#pragma once

#include <cmath>

#include "fusedopt/optimizer.h"

namespace fusedopt::optimizers {

struct adadelta : OptimizerDefaults<2> {
#define FUSEDOPT_ADADELTA_HYPERPARAMETERS(X) X(double, rho) X(double, eps) X(double, weight_decay) X(bool, maximize)
  FUSEDOPT_HYPERPARAMETERS(FUSEDOPT_ADADELTA_HYPERPARAMETERS);

  enum State { kSquareAvg, kAccDelta };

  static constexpr bool kStepCounter = true;  // advanced, as torch does, but unused by the math

  template <typename T> struct Coefficients {
    T rho, one_minus_rho, eps, weight_decay, grad_sign, neg_lr;
  };

  template <typename T>
  static FUSEDOPT_HD Coefficients<T> coefficients(const Hyper& c, double lr, double) {
    Coefficients<T> k;
    k.rho = T(c.rho);
    k.one_minus_rho = T(1.0 - c.rho);
    k.eps = T(c.eps);
    k.weight_decay = T(c.weight_decay);
    k.grad_sign = c.maximize ? T(-1) : T(1);
    k.neg_lr = T(-lr);
    return k;
  }

  template <uint32_t kActive, typename T, typename FirstStep>
  static FUSEDOPT_HD void update(T& p, T g, T* s, const Coefficients<T>& k, FirstStep) {
    g = g * k.grad_sign;
    g = k.weight_decay != T(0) ? g + k.weight_decay * p : g;  // a select: keeps loops vectorisable
    T& square_avg = s[kSquareAvg];
    T& acc_delta = s[kAccDelta];
    square_avg = square_avg * k.rho + k.one_minus_rho * g * g;
    const T std_dev = std::sqrt(square_avg + k.eps);
    const T delta = std::sqrt(acc_delta + k.eps) / std_dev * g;
    acc_delta = acc_delta * k.rho + k.one_minus_rho * delta * delta;
    p = p + k.neg_lr * delta;
  }
};

}  // namespace fusedopt::optimizers
