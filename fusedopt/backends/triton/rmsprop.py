"""RMSprop on Triton: rmsprop_coefficients and rmsprop_update of csrc/include/fusedopt/rmsprop.h."""
from collections import namedtuple

import triton
import triton.language as tl

from ._math import div, lerp, rounded, signed_grad, sqrt

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
def update(param, grad, offsets, mask, states, coefficients, OPTIONS: tl.constexpr, STATE: tl.constexpr,
           COMPUTE: tl.constexpr):
    """rmsprop_update on one block; states: square_avg[, grad_avg][, momentum_buffer]."""
    grad_sign, weight_decay, alpha, one_minus_alpha, eps, momentum, neg_lr = coefficients
    square_avg_ptr, second_ptr, third_ptr, _ = states
    grad = signed_grad(grad, param, grad_sign, weight_decay, OPTIONS.weight_decay)
    square_avg = tl.load(square_avg_ptr + offsets, mask=mask).to(COMPUTE) * alpha + one_minus_alpha * grad * grad
    tl.store(square_avg_ptr + offsets, rounded(square_avg, STATE), mask=mask)
    if OPTIONS.centered:
        grad_avg = lerp(tl.load(second_ptr + offsets, mask=mask).to(COMPUTE), grad, one_minus_alpha)
        tl.store(second_ptr + offsets, rounded(grad_avg, STATE), mask=mask)
        avg = sqrt(square_avg + -1.0 * grad_avg * grad_avg)
        buffer_ptr = third_ptr
    else:
        avg = sqrt(square_avg)
        buffer_ptr = second_ptr
    avg = avg + eps
    if OPTIONS.momentum:
        buffer = tl.load(buffer_ptr + offsets, mask=mask).to(COMPUTE) * momentum + div(grad, avg)
        tl.store(buffer_ptr + offsets, rounded(buffer, STATE), mask=mask)
        return param + neg_lr * buffer
    else:
        return param + div(neg_lr * grad, avg)
