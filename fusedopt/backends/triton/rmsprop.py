"""RMSprop on Triton: rmsprop_coefficients and rmsprop_update of csrc/include/fusedopt/rmsprop.h."""
from collections import namedtuple

import triton
import triton.language as tl

from ._math import div, lerp, signed_grad, sqrt

Scalars = namedtuple("Scalars", "alpha eps weight_decay momentum grad_sign")
Options = namedtuple("Options", "weight_decay centered momentum")


def arguments(config):
    return (Scalars(config.alpha, config.eps, config.weight_decay, config.momentum, -1.0 if config.maximize else 1.0),
            Options(config.weight_decay != 0, bool(config.centered), config.momentum > 0))


@triton.jit
def coefficients(step, lr, hyper, SLOT: tl.constexpr, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """rmsprop_coefficients: float64 arithmetic, each rounded once to COMPUTE."""
    alpha = tl.full((), hyper[SLOT.alpha], tl.float64)
    return (tl.full((), hyper[SLOT.grad_sign], COMPUTE), tl.full((), hyper[SLOT.weight_decay], COMPUTE),
            tl.full((), alpha, COMPUTE), tl.full((), 1.0 - alpha, COMPUTE), tl.full((), hyper[SLOT.eps], COMPUTE),
            tl.full((), hyper[SLOT.momentum], COMPUTE), tl.full((), -lr, COMPUTE))


@triton.jit
def update(param, grad, states, coefficients, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """rmsprop_update on one block; states: square_avg[, grad_avg][, momentum_buffer]."""
    grad_sign, weight_decay, alpha, one_minus_alpha, eps, momentum, neg_lr = coefficients
    square_avg, second, third, unused = states
    grad = signed_grad(grad, param, grad_sign, weight_decay, OPTIONS.weight_decay)
    square_avg = square_avg * alpha + one_minus_alpha * grad * grad
    if OPTIONS.centered:
        second = lerp(second, grad, one_minus_alpha)  # grad_avg
        avg = sqrt(square_avg + -1.0 * second * second)
        buffer = third
    else:
        avg = sqrt(square_avg)
        buffer = second
    avg = avg + eps
    if OPTIONS.momentum:
        buffer = buffer * momentum + div(grad, avg)
        param = param + neg_lr * buffer
    else:
        param = param + div(neg_lr * grad, avg)
    if OPTIONS.centered:  # the momentum buffer back in its slot
        third = buffer
    else:
        second = buffer
    return param, square_avg, second, third, unused
