"""ASGD on Triton: the coefficients and update of csrc/include/fusedopt/optimizers/asgd.h.
eta and mu are scalar states: `coefficients` reads the previous step's, and
`advance_scalars` gives the next ones, which the backend's scalar-state launch stores."""
from collections import namedtuple

import triton
import triton.language as tl

from ._math import power, signed_grad

Scalars = namedtuple("Scalars", "lambd alpha t0 weight_decay grad_sign")
Options = namedtuple("Options", "l2")


def arguments(config):
    return (Scalars(config.lambd, config.alpha, config.t0, config.weight_decay, -1.0 if config.maximize else 1.0),
            Options(config.weight_decay != 0))


@triton.jit
def coefficients(step, lr, hyper, SLOT: tl.constexpr, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr, scalars):
    """From this tensor's eta and mu (float32, as the previous step stored them)."""
    eta = scalars[0].to(tl.float64)
    mu = scalars[1].to(tl.float64)
    lambd = tl.full((), hyper[SLOT.lambd], tl.float64)
    return (tl.full((), hyper[SLOT.grad_sign], COMPUTE), tl.full((), hyper[SLOT.weight_decay], COMPUTE),
            tl.full((), 1.0 - lambd * eta, COMPUTE), tl.full((), -eta, COMPUTE), tl.full((), mu, COMPUTE),
            mu != 1.0)


@triton.jit
def advance_scalars(step, lr, hyper, scalars, SLOT: tl.constexpr, OPTIONS: tl.constexpr):
    """The next eta = lr / (1 + lambd*lr*step)^alpha and mu = 1 / max(1, step - t0), in
    float64, stored as float32."""
    step = step.to(tl.float64)
    lambd = tl.full((), hyper[SLOT.lambd], tl.float64)
    since_t0 = step - hyper[SLOT.t0]
    eta = lr / power(1.0 + lambd * lr * step, tl.full((), hyper[SLOT.alpha], tl.float64))
    mu = 1.0 / tl.where(since_t0 > 1.0, since_t0, 1.0)
    return eta.to(tl.float32), mu.to(tl.float32)


@triton.jit
def update(param, grad, states, coefficients, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """One block; states: ax."""
    grad_sign, weight_decay, param_scale, neg_eta, mu, average = coefficients
    ax, unused1, unused2, unused3 = states
    grad = signed_grad(grad, param, grad_sign, weight_decay, OPTIONS.l2)
    param = param * param_scale
    param = param + neg_eta * grad
    ax = tl.where(average, ax + (param - ax) * mu, param)
    return param, ax, unused1, unused2, unused3
