"""Adagrad on Triton: the coefficients and update of csrc/include/fusedopt/optimizers/adagrad.h."""
from collections import namedtuple

import triton
import triton.language as tl

from ._math import div, signed_grad, sqrt

Scalars = namedtuple("Scalars", "lr_decay eps weight_decay grad_sign")
Options = namedtuple("Options", "weight_decay")


def arguments(config):
    return (Scalars(config.lr_decay, config.eps, config.weight_decay, -1.0 if config.maximize else 1.0),
            Options(config.weight_decay != 0))


@triton.jit
def coefficients(step, lr, hyper, SLOT: tl.constexpr, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """lr / (1 + (step - 1) * lr_decay) in float64, rounded once to COMPUTE."""
    step = tl.maximum(step, 1.0).to(tl.float64)
    neg_clr = -(lr / (1.0 + (step - 1.0) * hyper[SLOT.lr_decay]))
    return (tl.full((), hyper[SLOT.grad_sign], COMPUTE), tl.full((), hyper[SLOT.weight_decay], COMPUTE),
            tl.full((), hyper[SLOT.eps], COMPUTE), tl.full((), neg_clr, COMPUTE))


@triton.jit
def update(param, grad, states, coefficients, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """One block; states: sum."""
    grad_sign, weight_decay, eps, neg_clr = coefficients
    total, unused1, unused2, unused3 = states
    grad = signed_grad(grad, param, grad_sign, weight_decay, OPTIONS.weight_decay)
    total = total + grad * grad
    return param + neg_clr * div(grad, sqrt(total) + eps), total, unused1, unused2, unused3
