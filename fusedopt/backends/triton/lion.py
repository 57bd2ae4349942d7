"""Lion on Triton: the coefficients and update of csrc/include/fusedopt/optimizers/lion.h."""
from collections import namedtuple

import triton
import triton.language as tl

from ._math import lerp

Scalars = namedtuple("Scalars", "beta1 beta2 weight_decay grad_sign")
Options = namedtuple("Options", "absolute")


def arguments(config):
    return (Scalars(config.beta1, config.beta2, config.weight_decay, -1.0 if config.maximize else 1.0),
            Options(bool(config.absolute_weight_decay)))


@triton.jit
def coefficients(step, lr, hyper, SLOT: tl.constexpr, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    # decoupled_scale (optimizer.h): 1 - lr*wd, or 1 - wd; in float64 (a bare scalar may be a
    # float32 under the interpreter)
    weight_decay = tl.full((), hyper[SLOT.weight_decay], tl.float64)
    param_scale = 1.0 - weight_decay if OPTIONS.absolute else 1.0 - lr * weight_decay
    return (tl.full((), hyper[SLOT.grad_sign], COMPUTE), tl.full((), 1.0 - hyper[SLOT.beta1], COMPUTE),
            tl.full((), 1.0 - hyper[SLOT.beta2], COMPUTE), tl.full((), param_scale, COMPUTE),
            tl.full((), -lr, COMPUTE))


@triton.jit
def update(param, grad, states, coefficients, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """One block; states: exp_avg."""
    grad_sign, one_minus_beta1, one_minus_beta2, param_scale, neg_lr = coefficients
    exp_avg, unused1, unused2, unused3 = states
    grad = grad * grad_sign
    interpolated = lerp(exp_avg, grad, one_minus_beta1)
    direction = tl.where(interpolated > 0.0, 1.0, tl.where(interpolated < 0.0, -1.0, 0.0))  # torch.sign
    return (param * param_scale + neg_lr * direction, lerp(exp_avg, grad, one_minus_beta2), unused1, unused2,
            unused3)
