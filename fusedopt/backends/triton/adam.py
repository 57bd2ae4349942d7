"""Adam / AdamW on Triton: adam_coefficients and adam_update of csrc/include/fusedopt/adam.h."""
from collections import namedtuple

import triton
import triton.language as tl

from ._math import div, lerp, signed_grad, sqrt, step_power

Scalars = namedtuple("Scalars", "beta1 beta2 eps weight_decay grad_sign")
Options = namedtuple("Options", "l2 decoupled amsgrad optimized_update absolute")


def arguments(config):
    decoupled = bool(config.decoupled_weight_decay)
    return (Scalars(config.beta1, config.beta2, config.eps, config.weight_decay, -1.0 if config.maximize else 1.0),
            Options(config.weight_decay != 0 and not decoupled, decoupled, bool(config.amsgrad),
                    bool(config.optimized_update), bool(config.absolute_weight_decay)))


@triton.jit
def coefficients(step, lr, hyper, SLOT: tl.constexpr, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """adam_coefficients for this tensor's (already advanced) counter, in float64, each
    rounded once to COMPUTE. A skipped first step leaves the counter at 0: its coefficients
    go unused, and counting it as 1 keeps them finite."""
    step = tl.maximum(step, 1.0).to(tl.float64)
    beta1 = tl.full((), hyper[SLOT.beta1], tl.float64)
    beta2 = tl.full((), hyper[SLOT.beta2], tl.float64)
    weight_decay = tl.full((), hyper[SLOT.weight_decay], tl.float64)
    bias_correction1 = 1.0 - step_power(beta1, step)
    bias_correction2_sqrt = tl.sqrt(1.0 - step_power(beta2, step))
    if OPTIONS.optimized_update:
        neg_step_size = -lr * bias_correction2_sqrt / bias_correction1
        denom_divisor = 1.0
    else:
        neg_step_size = -lr / bias_correction1
        denom_divisor = bias_correction2_sqrt
    # AdamW's decay (decoupled_scale, optimizer.h): 1 - lr*wd, or 1 - wd when absolute
    decay_rate = 1.0 if OPTIONS.absolute else lr
    param_scale = 1.0 - decay_rate * weight_decay if OPTIONS.decoupled else 1.0
    return (tl.full((), hyper[SLOT.grad_sign], COMPUTE), tl.full((), weight_decay, COMPUTE),
            tl.full((), param_scale, COMPUTE), tl.full((), 1.0 - beta1, COMPUTE), tl.full((), beta2, COMPUTE),
            tl.full((), 1.0 - beta2, COMPUTE), tl.full((), hyper[SLOT.eps], COMPUTE),
            tl.full((), neg_step_size, COMPUTE), tl.full((), denom_divisor, COMPUTE))


@triton.jit
def update(param, grad, states, coefficients, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """adam_update on one block; states: exp_avg, exp_avg_sq[, max_exp_avg_sq]."""
    grad_sign, l2_decay, param_scale, one_minus_beta1, beta2, one_minus_beta2, eps, neg_step_size, denom_divisor = \
        coefficients
    exp_avg, exp_avg_sq, max_exp_avg_sq, unused = states
    grad = signed_grad(grad, param, grad_sign, l2_decay, OPTIONS.l2)
    param = param * param_scale
    exp_avg = lerp(exp_avg, grad, one_minus_beta1)
    exp_avg_sq = exp_avg_sq * beta2 + one_minus_beta2 * grad * grad
    second_moment = exp_avg_sq
    if OPTIONS.amsgrad:
        max_exp_avg_sq = tl.where(max_exp_avg_sq > exp_avg_sq, max_exp_avg_sq, exp_avg_sq)
        second_moment = max_exp_avg_sq
    denom = div(sqrt(second_moment), denom_divisor) + eps
    return param + div(neg_step_size * exp_avg, denom), exp_avg, exp_avg_sq, max_exp_avg_sq, unused
