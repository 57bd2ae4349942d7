// Rprop (Riedmiller & Braun 1993), as torch.optim.Rprop's single-tensor path: each
// element's step size grows by etaplus where the grad kept its sign, shrinks by etaminus
// where it flipped (that element then skips its move and forgets the grad), and the param
// moves by its step size against the grad's sign. States: prev, step_size (starting at
// lr, which Python fills in).
#pragma once

#include "fusedopt/optimizer.h"

namespace fusedopt::optimizers {

struct rprop {
#define FUSEDOPT_RPROP_HYPERPARAMETERS(X) \
  X(double, etaminus) X(double, etaplus) X(double, step_size_min) X(double, step_size_max) X(bool, maximize)
  FUSEDOPT_HYPERPARAMETERS(FUSEDOPT_RPROP_HYPERPARAMETERS);

  enum State { kPrev, kStepSize };
  static constexpr int kStates = 2;
  using Variants = StateVariants<0b11>;
  static constexpr uint32_t active_states(const Hyper&) { return 0b11; }

  static constexpr bool kStepCounter = true;  // advanced, as torch does, but unused by the math
  static constexpr bool kStepDependent = false;
  static constexpr bool kReadsStateOnFirstStep = true;
  template <typename S, typename SS> static constexpr int min_blocks() { return default_min_blocks<S>(); }

  template <typename T> struct Coefficients {
    T etaminus, etaplus, step_size_min, step_size_max, grad_sign;
  };

  template <typename T>
  static FUSEDOPT_HD Coefficients<T> coefficients(const Hyper& c, double, double) {
    Coefficients<T> k;
    k.etaminus = T(c.etaminus);
    k.etaplus = T(c.etaplus);
    k.step_size_min = T(c.step_size_min);
    k.step_size_max = T(c.step_size_max);
    k.grad_sign = c.maximize ? T(-1) : T(1);
    return k;
  }

  // torch.sign: +-1, and 0 for zero and NaN.
  template <typename T> static FUSEDOPT_HD T sign(T x) { return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0)); }

  template <uint32_t kActive, typename T, typename FirstStep>
  static FUSEDOPT_HD void update(T& p, T g, T* s, const Coefficients<T>& k, FirstStep) {
    g = g * k.grad_sign;
    T& prev = s[kPrev];
    T& step_size = s[kStepSize];
    const T agreement = g * prev;
    const T factor = agreement > T(0) ? k.etaplus : (agreement < T(0) ? k.etaminus : T(1));
    const T scaled = step_size * factor;
    step_size = scaled < k.step_size_min ? k.step_size_min : (scaled > k.step_size_max ? k.step_size_max : scaled);
    g = agreement < T(0) ? T(0) : g;
    p = p + T(-1) * sign(g) * step_size;
    prev = g;
  }
};

}  // namespace fusedopt::optimizers
