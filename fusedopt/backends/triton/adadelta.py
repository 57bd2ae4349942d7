"""Adadelta on Triton: the coefficients and update of csrc/include/fusedopt/optimizers/adadelta.h."""
from collections import namedtuple

import triton
import triton.language as tl

from ._math import div, signed_grad, sqrt

Scalars = namedtuple("Scalars", "rho eps weight_decay grad_sign")
Options = namedtuple("Options", "weight_decay")


def arguments(config):
    return (Scalars(config.rho, config.eps, config.weight_decay, -1.0 if config.maximize else 1.0),
            Options(config.weight_decay != 0))


@triton.jit
def coefficients(step, lr, hyper, SLOT: tl.constexpr, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    rho = tl.full((), hyper[SLOT.rho], tl.float64)
    return (tl.full((), hyper[SLOT.grad_sign], COMPUTE), tl.full((), hyper[SLOT.weight_decay], COMPUTE),
            tl.full((), rho, COMPUTE), tl.full((), 1.0 - rho, COMPUTE), tl.full((), hyper[SLOT.eps], COMPUTE),
            tl.full((), -lr, COMPUTE))


@triton.jit
def update(param, grad, states, coefficients, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """One block; states: square_avg, acc_delta."""
    grad_sign, weight_decay, rho, one_minus_rho, eps, neg_lr = coefficients
    square_avg, acc_delta, unused1, unused2 = states
    grad = signed_grad(grad, param, grad_sign, weight_decay, OPTIONS.weight_decay)
    square_avg = square_avg * rho + one_minus_rho * grad * grad
    delta = div(sqrt(acc_delta + eps), sqrt(square_avg + eps)) * grad
    acc_delta = acc_delta * rho + one_minus_rho * delta * delta
    return param + neg_lr * delta, square_avg, acc_delta, unused1, unused2
