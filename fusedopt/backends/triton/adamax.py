"""Adamax on Triton: the coefficients and update of csrc/include/fusedopt/optimizers/adamax.h."""
from collections import namedtuple

import triton
import triton.language as tl

from ._math import div, lerp, signed_grad, step_power

Scalars = namedtuple("Scalars", "beta1 beta2 eps weight_decay grad_sign")
Options = namedtuple("Options", "weight_decay")


def arguments(config):
    return (Scalars(config.beta1, config.beta2, config.eps, config.weight_decay, -1.0 if config.maximize else 1.0),
            Options(config.weight_decay != 0))


@triton.jit
def coefficients(step, lr, hyper, SLOT: tl.constexpr, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """float64 arithmetic, each rounded once to COMPUTE; a skipped first step (counter 0)
    counts as 1 so its unused coefficients stay finite."""
    step = tl.maximum(step, 1.0).to(tl.float64)
    beta1 = tl.full((), hyper[SLOT.beta1], tl.float64)
    neg_step_size = -lr / (1.0 - step_power(beta1, step))
    return (tl.full((), hyper[SLOT.grad_sign], COMPUTE), tl.full((), hyper[SLOT.weight_decay], COMPUTE),
            tl.full((), 1.0 - beta1, COMPUTE), tl.full((), hyper[SLOT.beta2], COMPUTE),
            tl.full((), hyper[SLOT.eps], COMPUTE), tl.full((), neg_step_size, COMPUTE))


@triton.jit
def update(param, grad, states, coefficients, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """One block; states: exp_avg, exp_inf."""
    grad_sign, weight_decay, one_minus_beta1, beta2, eps, neg_step_size = coefficients
    exp_avg, exp_inf, unused1, unused2 = states
    grad = signed_grad(grad, param, grad_sign, weight_decay, OPTIONS.weight_decay)
    exp_avg = lerp(exp_avg, grad, one_minus_beta1)
    decayed = exp_inf * beta2
    magnitude = tl.abs(grad) + eps
    exp_inf = tl.where((decayed > magnitude) | (decayed != decayed), decayed, magnitude)  # torch.maximum
    return param + neg_step_size * div(exp_avg, exp_inf), exp_avg, exp_inf, unused1, unused2
