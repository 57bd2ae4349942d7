// Adafactor (torch.optim.Adafactor's math): the "factored" kernel shape, shared by the CPU
// kernels (csrc/cpu/factored_cpu.cpp) and any GPU kernels written for it. Not an optimizer
// header of optimizers/ (those are element-wise): its second moment is reduced over rows and
// columns, and its step needs per-tensor RMS values, so the kernels run in passes:
//
//   A  read p and g: sum of p² per tensor; for a factored param the sum of g² per row
//      (row_var updated by the row's owner) and per column (partials per block of rows);
//      for a vector, variance = lerp(variance, g², w) in place
//   -  per tensor (small): col_var updated, the mean of row_var per (R, C) slice, alpha
//   B  read g (and a vector's variance): sum of u² per tensor, u = g / sqrt(max(v, eps1²))
//   C  read g and p, write p: p = p * (1 - lr*wd) - alpha / max(1, RMS(u)/d) * u
//
// The table is fusedopt/_factored.py's; all pointers there were checked in Python.
#pragma once

#include <cmath>
#include <cstdint>

#include "fusedopt/common.h"

namespace fusedopt {

enum FactoredRow : int64_t {
  kFactoredNumel = 0,
  kFactoredParam = 1,
  kFactoredGrad = 2,
  kFactoredStep = 3,
  kFactoredRows = 4,    // R = shape[-2]; 0 for a vector (then kFactoredCols holds its numel)
  kFactoredCols = 5,    // C = shape[-1]
  kFactoredMoment = 6,  // row_var (lead*R elements) or a vector's variance
  kFactoredColMoment = 7,  // col_var (lead*C elements); 0 for a vector
  kFactoredTableRows = 8,
};

// How the kernels cut the work, which fixes the order of every sum (so every backend that
// follows it gets the same bits whatever its parallelism): items of about kFactoredItem
// elements (a block of max(1, kFactoredItem / C) rows of one (R, C) slice, or a range of a
// vector), and inside an item or a row sums of squares over kFactoredLanes lanes
// (factored_cpu.cpp's lane_sum; the CUDA kernels in csrc/cuda/factored.cu repeat it).
constexpr int64_t kFactoredItem = int64_t(1) << 15;
constexpr int kFactoredLanes = 16;

// The group's values, as plain numbers (eps1 resolved from the dtype in Python).
struct AdafactorOptions {
  double lr = 0.0;
  const double* lr_tensor = nullptr;  // float64 beside the params, or null: lr
  double beta2_decay = -0.8;
  double eps1 = 0.0;
  double eps2 = 1e-3;
  double d = 1.0;
  double weight_decay = 0.0;
  bool maximize = false;
};

// Per-tensor values that follow from the (advanced) step counter, in double as torch's
// Python floats: the lerp weight 1 - beta2_t = t^beta2_decay and rho = min(lr, 1/sqrt(t)).
// std::pow here and below is the C library's on the host and CUDA's on a GPU, which may
// differ in the last place (not seen through the host build of the CUDA kernels).
struct AdafactorStepScalars {
  double one_minus_beta2;
  double rho;
  double lr;
};

FUSEDOPT_HD AdafactorStepScalars adafactor_step_scalars(const AdafactorOptions& o, double step) {
  const double lr = learning_rate(o.lr_tensor, o.lr);
  const double inverse_root = 1.0 / std::pow(step, 0.5);  // torch: 1 / (step ** 0.5)
  return {std::pow(step, o.beta2_decay), lr < inverse_root ? lr : inverse_root, lr};
}

// Python's max(a, b): b only where b > a (so a NaN b gives a).
FUSEDOPT_HD double python_max(double a, double b) { return b > a ? b : a; }

// alpha = max(eps2, RMS(p)) * rho, the RMS from the sum of squares as torch's
// p.norm(2).item() / numel ** 0.5 (the norm rounded to the math type T first).
template <typename T> FUSEDOPT_HD double adafactor_alpha(const AdafactorOptions& o, const AdafactorStepScalars& s,
                                                    double sum_of_squares, int64_t numel) {
  const double rms = double(T(std::sqrt(sum_of_squares))) / std::pow(double(numel), 0.5);
  return python_max(o.eps2, rms) * s.rho;
}

// The step size of the update: -alpha / max(1, RMS(u) / d), RMS as above.
template <typename T> FUSEDOPT_HD double adafactor_coefficient(const AdafactorOptions& o, double alpha,
                                                          double update_sum_of_squares, int64_t numel) {
  const double ratio = double(T(std::sqrt(update_sum_of_squares))) / (std::pow(double(numel), 0.5) * o.d);
  return -alpha / python_max(1.0, ratio);
}

// torch's clamp_(min=...): a NaN stays a NaN.
template <typename T> FUSEDOPT_HD T clamp_min(T x, T low) { return x < low ? low : x; }

// The update of one element from its variance estimate: g / sqrt(max(v, eps1²)) (torch:
// v.clamp_(min=eps1 * eps1).rsqrt_().mul_(g)).
template <typename T> FUSEDOPT_HD T adafactor_update(T g, T estimate, T eps1_squared) {
  return (T(1) / std::sqrt(clamp_min(estimate, eps1_squared))) * g;
}

// A factored param's variance estimate: row_var[r] * col_var[c] / mean_r(row_var), the mean
// clamped to eps1 beforehand (torch: (row_var @ col_var).div_(row_mean.clamp_(min=eps1))).
template <typename T> FUSEDOPT_HD T factored_estimate(T row, T col, T clamped_row_mean) {
  return row * col / clamped_row_mean;
}

// The param's new value: decayed (torch's p.mul_(1 - lr*wd), skipped when wd is 0), then
// p + coefficient * u.
template <typename T> FUSEDOPT_HD T adafactor_param(T p, T u, T decay, T coefficient) {
  return p * decay + coefficient * u;
}

}  // namespace fusedopt
