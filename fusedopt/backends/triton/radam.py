"""RAdam on Triton: the coefficients and update of csrc/include/fusedopt/optimizers/radam.h."""
from collections import namedtuple

import triton
import triton.language as tl

from ._math import div, lerp, signed_grad, sqrt, step_power

Scalars = namedtuple("Scalars", "beta1 beta2 eps weight_decay grad_sign")
Options = namedtuple("Options", "l2 decoupled absolute")


def arguments(config):
    decoupled = bool(config.decoupled_weight_decay)
    return (Scalars(config.beta1, config.beta2, config.eps, config.weight_decay, -1.0 if config.maximize else 1.0),
            Options(config.weight_decay != 0 and not decoupled, decoupled, bool(config.absolute_weight_decay)))


@triton.jit
def coefficients(step, lr, hyper, SLOT: tl.constexpr, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """Bias corrections and the rectification (rho_t > 5) for this tensor's counter, in
    float64, each rounded once to COMPUTE; a skipped first step counts as 1."""
    step = tl.maximum(step, 1.0).to(tl.float64)
    beta1 = tl.full((), hyper[SLOT.beta1], tl.float64)
    beta2 = tl.full((), hyper[SLOT.beta2], tl.float64)
    weight_decay = tl.full((), hyper[SLOT.weight_decay], tl.float64)
    beta2_t = step_power(beta2, step)
    bias_correction2 = 1.0 - beta2_t
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2_t / bias_correction2
    rectified = rho_t > 5.0
    safe_rho_t = tl.where(rectified, rho_t, 6.0)  # keeps the unused branch's sqrt real
    rect = tl.sqrt((safe_rho_t - 4.0) * (safe_rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * safe_rho_t))
    decay_rate = 1.0 if OPTIONS.absolute else lr  # decoupled_scale (optimizer.h)
    param_scale = 1.0 - decay_rate * weight_decay if OPTIONS.decoupled else 1.0
    return (tl.full((), hyper[SLOT.grad_sign], COMPUTE), tl.full((), weight_decay, COMPUTE),
            tl.full((), param_scale, COMPUTE), tl.full((), 1.0 - beta1, COMPUTE), tl.full((), beta2, COMPUTE),
            tl.full((), 1.0 - beta2, COMPUTE), tl.full((), hyper[SLOT.eps], COMPUTE),
            tl.full((), 1.0 - step_power(beta1, step), COMPUTE), tl.full((), lr, COMPUTE),
            tl.full((), tl.sqrt(bias_correction2), COMPUTE), tl.full((), rect, COMPUTE), rectified)


@triton.jit
def update(param, grad, states, coefficients, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """One block; states: exp_avg, exp_avg_sq."""
    (grad_sign, l2_decay, param_scale, one_minus_beta1, beta2, one_minus_beta2, eps, bias_correction1, lr,
     bias_correction2_sqrt, rect, rectified) = coefficients
    exp_avg, exp_avg_sq, unused1, unused2 = states
    grad = signed_grad(grad, param, grad_sign, l2_decay, OPTIONS.l2)
    param = param * param_scale
    exp_avg = lerp(exp_avg, grad, one_minus_beta1)
    exp_avg_sq = exp_avg_sq * beta2 + one_minus_beta2 * grad * grad
    corrected = div(exp_avg, bias_correction1) * lr
    adaptive = div(bias_correction2_sqrt + tl.zeros_like(exp_avg_sq), sqrt(exp_avg_sq) + eps)
    return (param - tl.where(rectified, corrected * adaptive * rect, corrected), exp_avg, exp_avg_sq, unused1,
            unused2)
