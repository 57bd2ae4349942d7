"""Rprop on Triton: the coefficients and update of csrc/include/fusedopt/optimizers/rprop.h."""
from collections import namedtuple

import triton
import triton.language as tl


Scalars = namedtuple("Scalars", "etaminus etaplus step_size_min step_size_max grad_sign")
Options = namedtuple("Options", "")


def arguments(config):
    return (Scalars(config.etaminus, config.etaplus, config.step_size_min, config.step_size_max,
                    -1.0 if config.maximize else 1.0), Options())


@triton.jit
def coefficients(step, lr, hyper, SLOT: tl.constexpr, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    return (tl.full((), hyper[SLOT.grad_sign], COMPUTE), tl.full((), hyper[SLOT.etaminus], COMPUTE),
            tl.full((), hyper[SLOT.etaplus], COMPUTE), tl.full((), hyper[SLOT.step_size_min], COMPUTE),
            tl.full((), hyper[SLOT.step_size_max], COMPUTE))


@triton.jit
def update(param, grad, states, coefficients, OPTIONS: tl.constexpr, COMPUTE: tl.constexpr):
    """One block; states: prev, step_size."""
    grad_sign, etaminus, etaplus, step_size_min, step_size_max = coefficients
    prev, step_size, unused1, unused2 = states
    grad = grad * grad_sign
    agreement = grad * prev
    factor = tl.where(agreement > 0.0, etaplus, tl.where(agreement < 0.0, etaminus, 1.0))
    scaled = step_size * factor
    # torch's clamp_(min, max): max where min > max, NaN where a bound is NaN (a false comparison
    # picks the bound) or the step size is.
    step_size = tl.where(scaled >= step_size_min, scaled, step_size_min)
    step_size = tl.where(scaled != scaled, scaled, step_size)
    clamped = tl.where(step_size <= step_size_max, step_size, step_size_max)
    step_size = tl.where(step_size != step_size, step_size, clamped)
    grad = tl.where(agreement < 0.0, 0.0, grad)
    direction = tl.where(grad > 0.0, 1.0, tl.where(grad < 0.0, -1.0, 0.0))  # torch.sign: 0 for 0 and NaN
    return param + -1.0 * direction * step_size, grad, step_size, unused1, unused2
