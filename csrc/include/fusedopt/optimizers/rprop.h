// Rprop (Riedmiller & Braun 1993), as torch.optim.Rprop's single-tensor path: each
// element's step size grows by etaplus where the grad kept its sign, shrinks by etaminus
// where it flipped (that element then skips its move and forgets the grad), and the param
// moves by its step size against the grad's sign. States: prev, step_size (starting at
// lr, which Python fills in).
#pragma once

#include "fusedopt/optimizer.h"

namespace fusedopt::optimizers {

struct rprop : OptimizerDefaults<2> {
#define FUSEDOPT_RPROP_HYPERPARAMETERS(X) \
  X(double, etaminus) X(double, etaplus) X(double, step_size_min) X(double, step_size_max) X(bool, maximize)
  FUSEDOPT_HYPERPARAMETERS(FUSEDOPT_RPROP_HYPERPARAMETERS);

  enum State { kPrev, kStepSize };

  static constexpr bool kStepCounter = true;  // advanced, as torch does, but unused by the math
  // float64 math spills at 3 blocks' 80 registers (ptxas, CUDA 13.0, 86 needed): 2 blocks
  // (tests/test_ptxas.py allows this one kernel fewer blocks rather than a spill).
  template <typename S, typename SS, bool kMaster> static constexpr int min_blocks() {
    return sizeof(typename OpMath<S>::type) == 8 ? 2 : default_min_blocks<S>();
  }

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

  // Written to keep few values live (float64 math must fit 80 registers): p moves by
  // -sign(g) * step_size, i.e. p - step_size, p + step_size or p (torch.sign is 0 for 0 and
  // NaN), which equals torch's p + (-1) * sign(g) * step_size exactly.
  template <uint32_t kActive, typename T, typename FirstStep>
  static FUSEDOPT_HD void update(T& p, T g, T* s, const Coefficients<T>& k, FirstStep) {
    g = g * k.grad_sign;
    const T agreement = g * s[kPrev];
    const bool flipped = agreement < T(0);
    T size = s[kStepSize] * (agreement > T(0) ? k.etaplus : (flipped ? k.etaminus : T(1)));
    // torch's clamp_(min, max): max where min > max, NaN where a bound is NaN.
    size = (size < k.step_size_min || k.step_size_min != k.step_size_min) ? k.step_size_min : size;
    size = (size > k.step_size_max || k.step_size_max != k.step_size_max) ? k.step_size_max : size;
    s[kStepSize] = size;
    g = flipped ? T(0) : g;
    p = g > T(0) ? p - size : (g < T(0) ? p + size : p);
    s[kPrev] = g;
  }
};

}  // namespace fusedopt::optimizers
