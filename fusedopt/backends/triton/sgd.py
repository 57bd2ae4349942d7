"""SGD on Triton: sgd_coefficients and sgd_update of csrc/include/fusedopt/sgd.h."""
from collections import namedtuple

import triton
import triton.language as tl

from ._math import signed_grad

Scalars = namedtuple("Scalars", "momentum dampening weight_decay grad_sign")
Options = namedtuple("Options", "weight_decay momentum nesterov first_step")


def arguments(config):
    return (Scalars(config.momentum, config.dampening, config.weight_decay, -1.0 if config.maximize else 1.0),
            Options(config.weight_decay != 0, config.momentum != 0, bool(config.nesterov), bool(config.first_step)))


@triton.jit
def coefficients(step, lr, hyper, SLOT: tl.constexpr, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """sgd_coefficients: float64 arithmetic, each rounded once to COMPUTE."""
    dampening = tl.full((), hyper[SLOT.dampening], tl.float64)
    return (tl.full((), hyper[SLOT.grad_sign], COMPUTE), tl.full((), hyper[SLOT.weight_decay], COMPUTE),
            tl.full((), hyper[SLOT.momentum], COMPUTE), tl.full((), 1.0 - dampening, COMPUTE),
            tl.full((), -lr, COMPUTE))


@triton.jit
def update(param, grad, states, coefficients, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """sgd_update on one block; states: [momentum_buffer]."""
    grad_sign, weight_decay, momentum, one_minus_dampening, neg_lr = coefficients
    buffer, unused1, unused2, unused3 = states
    grad = signed_grad(grad, param, grad_sign, weight_decay, OPTIONS.weight_decay)
    if OPTIONS.momentum:
        if OPTIONS.first_step:  # torch's rule: a new momentum buffer starts as a copy of the gradient
            buffer = grad
        else:
            buffer = buffer * momentum + one_minus_dampening * grad
        if OPTIONS.nesterov:
            grad = grad + momentum * buffer
        else:
            grad = buffer
    return param + neg_lr * grad, buffer, unused1, unused2, unused3
