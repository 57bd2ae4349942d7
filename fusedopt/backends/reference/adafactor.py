"""Adafactor, the readable specification: torch.optim.Adafactor's single-tensor step, one
tensor at a time, with its scalars (the step's powers, the param's RMS, the update's RMS)
kept as 0-dim tensors on the params' device instead of Python floats read with .item().
Those scalars are float64, as torch's Python floats are; the element math runs in the
param's dtype (float32 for 16-bit params, rounded once into the param and its moments).
The update reads the new moments as they are stored (a 16-bit param's rounded to its
dtype), as the compiled kernels do, which keep no float32 copy of a vector's variance.
"""
from __future__ import annotations

import math

import torch

from ..._factored import FactoredBatch, FactoredConfig
from ..._layout import LOW_PRECISION


def _in_opmath(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in LOW_PRECISION else t


def update_factored(batch: FactoredBatch, c: FactoredConfig) -> None:
    for i, stored in enumerate(batch.params):
        batch.steps[i] += 1
        if stored.numel() == 0:
            continue  # torch divides by the numel; nothing to update
        moments = [m for m in (batch.moments[i], batch.col_moments[i]) if m is not None]
        param, *values = [_in_opmath(t) for t in (stored, *moments)]
        grad = _in_opmath(batch.grads[i])
        update_one(param, grad, values, batch.steps[i], c, stored.dtype)
        for target, value in zip((stored, *moments), (param, *values)):
            if value is not target:
                target.copy_(value)


def update_one(param, grad, moments, step, c: FactoredConfig, storage=None) -> None:
    """One tensor: `param` and `moments` ([variance] or [row_var, col_var]) updated in place;
    `step` is the already advanced float32 counter; `storage`, the dtype the moments are
    stored in (rounded to it before they are read)."""

    def stored(moment):
        if storage is not None and storage != moment.dtype:
            moment.copy_(moment.to(storage))
        return moment

    if c.maximize:
        grad = -grad
    t = step.double()
    one_minus_beta2 = t.pow(c.beta2_decay).to(param.dtype)  # torch: step ** beta2_decay, used as a lerp weight
    rho = torch.clamp(1 / t.sqrt(), max=c.lr)  # min(lr, 1 / step ** 0.5)
    rms = param.norm(2).double() / math.sqrt(param.numel())
    alpha = torch.clamp(rms, min=c.eps2) * rho  # max(eps2, RMS(p)) * rho, from the param before decay
    if c.weight_decay != 0:
        param.mul_(1 - c.lr * c.weight_decay)
    if len(moments) == 2:
        row_var, col_var = moments
        stored(row_var.lerp_(grad.square().sum(dim=-1, keepdim=True).div_(grad.size(-1)), one_minus_beta2))
        stored(col_var.lerp_(grad.square().sum(dim=-2, keepdim=True).div_(grad.size(-2)), one_minus_beta2))
        estimate = (row_var @ col_var).div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=c.eps1))
    else:
        (variance,) = moments
        stored(variance.lerp_(grad * grad, one_minus_beta2))
        estimate = variance.clone()
    # eps1 squared, as the square root follows
    update = estimate.clamp_(min=c.eps1 * c.eps1).rsqrt_().mul_(grad)
    denom = torch.clamp(update.norm(2).double() / (math.sqrt(update.numel()) * c.d), min=1.0)
    param.add_(update.mul_((-alpha / denom).to(param.dtype)))
