"""NAdam on Triton: the coefficients and update of csrc/include/fusedopt/optimizers/nadam.h.
mu_product is a scalar state: `coefficients` multiplies the previous step's by this step's
mu (a float32 product, as torch's), and `advance_scalars` gives the same product, which the
backend's scalar-state launch stores."""
from collections import namedtuple

import triton
import triton.language as tl

from ._math import div, lerp, power, signed_grad, sqrt, step_power

Scalars = namedtuple("Scalars", "beta1 beta2 eps weight_decay momentum_decay grad_sign")
Options = namedtuple("Options", "l2 decoupled absolute")


def arguments(config):
    decoupled = bool(config.decoupled_weight_decay)
    return (Scalars(config.beta1, config.beta2, config.eps, config.weight_decay, config.momentum_decay,
                    -1.0 if config.maximize else 1.0),
            Options(config.weight_decay != 0 and not decoupled, decoupled, bool(config.absolute_weight_decay)))


@triton.jit
def _momentum(step, hyper, SLOT: tl.constexpr):
    """mu_t = beta1 (1 - 0.5 * 0.96^(t * momentum_decay)), in float64."""
    beta1 = tl.full((), hyper[SLOT.beta1], tl.float64)
    return beta1 * (1.0 - 0.5 * power(tl.full((), 0.96, tl.float64), step * hyper[SLOT.momentum_decay]))


@triton.jit
def coefficients(step, lr, hyper, SLOT: tl.constexpr, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr, scalars):
    """For this tensor's (advanced) counter and its mu_product as the previous step left it;
    a skipped first step counts as 1 (its coefficients go unused)."""
    step = tl.maximum(step, 1.0).to(tl.float64)
    beta1 = tl.full((), hyper[SLOT.beta1], tl.float64)
    beta2 = tl.full((), hyper[SLOT.beta2], tl.float64)
    weight_decay = tl.full((), hyper[SLOT.weight_decay], tl.float64)
    mu = _momentum(step, hyper, SLOT)
    mu_next = _momentum(step + 1.0, hyper, SLOT)
    mu_product = (scalars[0] * mu.to(tl.float32)).to(tl.float64)
    mu_product_next = mu_product * mu_next
    decay_rate = 1.0 if OPTIONS.absolute else lr  # decoupled_scale (optimizer.h)
    param_scale = 1.0 - decay_rate * weight_decay if OPTIONS.decoupled else 1.0
    return (tl.full((), hyper[SLOT.grad_sign], COMPUTE), tl.full((), weight_decay, COMPUTE),
            tl.full((), param_scale, COMPUTE), tl.full((), 1.0 - beta1, COMPUTE), tl.full((), beta2, COMPUTE),
            tl.full((), 1.0 - beta2, COMPUTE), tl.full((), hyper[SLOT.eps], COMPUTE),
            tl.full((), 1.0 - step_power(beta2, step), COMPUTE),
            tl.full((), -lr * (1.0 - mu) / (1.0 - mu_product), COMPUTE),
            tl.full((), (-lr * mu_next) / (1.0 - mu_product_next), COMPUTE))


@triton.jit
def advance_scalars(step, lr, hyper, scalars, SLOT: tl.constexpr, OPTIONS: tl.constexpr):
    """The next mu_product: the previous one times this step's mu, in float32."""
    mu = _momentum(step.to(tl.float64), hyper, SLOT)
    return scalars[0] * mu.to(tl.float32), scalars[1]


@triton.jit
def update(param, grad, states, coefficients, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """One block; states: exp_avg, exp_avg_sq."""
    (grad_sign, l2_decay, param_scale, one_minus_beta1, beta2, one_minus_beta2, eps, bias_correction2, grad_coef,
     exp_avg_coef) = coefficients
    exp_avg, exp_avg_sq, unused1, unused2 = states
    grad = signed_grad(grad, param, grad_sign, l2_decay, OPTIONS.l2)
    param = param * param_scale
    exp_avg = lerp(exp_avg, grad, one_minus_beta1)
    exp_avg_sq = exp_avg_sq * beta2 + one_minus_beta2 * grad * grad
    denom = sqrt(div(exp_avg_sq, bias_correction2 + tl.zeros_like(exp_avg_sq))) + eps
    param = param + div(grad_coef * grad, denom)
    return param + div(exp_avg_coef * exp_avg, denom), exp_avg, exp_avg_sq, unused1, unused2
