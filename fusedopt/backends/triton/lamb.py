"""LAMB on Triton: lamb.h's coefficients, update and norm_terms (csrc/include/fusedopt/optimizers)."""
from collections import namedtuple

import triton
import triton.language as tl

from ._math import div, sqrt, step_power

Scalars = namedtuple("Scalars", "beta1 beta2 eps weight_decay grad_sign")
Options = namedtuple("Options", "bias_correction grad_averaging optimized_update")


def arguments(config):
    return (Scalars(config.beta1, config.beta2, config.eps, config.weight_decay, -1.0 if config.maximize else 1.0),
            Options(bool(config.bias_correction), bool(config.grad_averaging), bool(config.optimized_update)))


@triton.jit
def coefficients(step, lr, hyper, SLOT: tl.constexpr, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """lamb::coefficients for this tensor's counter (a skipped first step counts as 1); `lr`
    arrives already multiplied by the tensor's trust ratio (TENSOR_SCALE in _kernel)."""
    step = tl.maximum(step, 1.0).to(tl.float64)
    beta1 = tl.full((), hyper[SLOT.beta1], tl.float64)
    beta2 = tl.full((), hyper[SLOT.beta2], tl.float64)
    if OPTIONS.bias_correction:
        bias_correction1 = 1.0 - step_power(beta1, step)
        bias_correction2_sqrt = tl.sqrt(1.0 - step_power(beta2, step))
    else:
        bias_correction1 = tl.full((), 1.0, tl.float64)
        bias_correction2_sqrt = tl.full((), 1.0, tl.float64)
    m_scale = bias_correction2_sqrt / bias_correction1  # lamb.h's one-division form
    eps = tl.full((), hyper[SLOT.eps], tl.float64)
    if OPTIONS.optimized_update:
        eps_scaled = eps
    else:
        eps_scaled = eps * bias_correction2_sqrt
    if OPTIONS.grad_averaging:
        grad_weight = 1.0 - beta1
    else:
        grad_weight = tl.full((), 1.0, tl.float64)
    return (tl.full((), hyper[SLOT.grad_sign], COMPUTE), tl.full((), beta1, COMPUTE), tl.full((), grad_weight, COMPUTE),
            tl.full((), beta2, COMPUTE), tl.full((), 1.0 - beta2, COMPUTE), tl.full((), eps_scaled, COMPUTE),
            tl.full((), hyper[SLOT.weight_decay], COMPUTE), tl.full((), m_scale, COMPUTE), tl.full((), -lr, COMPUTE))


@triton.jit
def _direction(param, grad, exp_avg, exp_avg_sq, coefficients):
    grad_sign, beta1, grad_weight, beta2, one_minus_beta2, eps_scaled, weight_decay, m_scale, _ = coefficients
    grad = grad * grad_sign
    exp_avg = exp_avg * beta1 + grad_weight * grad
    exp_avg_sq = exp_avg_sq * beta2 + one_minus_beta2 * grad * grad
    return div(exp_avg * m_scale, sqrt(exp_avg_sq) + eps_scaled) + weight_decay * param, exp_avg, exp_avg_sq


@triton.jit
def update(param, grad, states, coefficients, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    exp_avg, exp_avg_sq, unused1, unused2 = states
    u, exp_avg, exp_avg_sq = _direction(param, grad, exp_avg, exp_avg_sq, coefficients)
    return param + coefficients[8] * u, exp_avg, exp_avg_sq, unused1, unused2


@triton.jit
def norm_terms(param, grad, states, coefficients, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """(p^2, u^2) per element in float64, the moments not stored."""
    exp_avg, exp_avg_sq, _, _ = states
    u, _, _ = _direction(param, grad, exp_avg, exp_avg_sq, coefficients)
    p = param.to(tl.float64)
    u = u.to(tl.float64)
    return p * p, u * u
