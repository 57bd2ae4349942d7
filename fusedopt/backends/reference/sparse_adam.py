"""Lazy (sparse-row) Adam, readable: torch.optim.SparseAdam's arithmetic on the rows a
sparse grad holds, with Adam's options. Every other backend must agree with this one.

Per present row (g: the coalesced grad's row, p, m, v: the param's and moments' rows):

    g = -g if maximize;  g = g + wd*p (Adam's L2 decay)  or  p = p * (1 - lr*wd) (AdamW)
    m = m + (g - m) * (1 - beta1)              # SparseAdam's form of the moving averages
    v = v + (g*g - v) * (1 - beta2)
    v_hat = max(v_max, v) with amsgrad (kept in max_exp_avg_sq), else v
    p = p + step_size * (m / (sqrt(v_hat) / divisor + eps))

with bias corrections from the param's own step t (advanced first, as torch does, also
for a grad with no rows): optimized_update (SparseAdam's form) gives
step_size = -lr*sqrt(1-beta2^t)/(1-beta1^t) and divisor 1; torch Adam's form
step_size = -lr/(1-beta1^t) and divisor sqrt(1-beta2^t). Rows absent from the grad keep
every bit of their param and moments. Computed in the param's dtype, one torch operation
at a time in SparseAdam's order, so float32 results equal torch's bit for bit.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import torch


class Coefficients(NamedTuple):
    one_minus_beta1: float
    one_minus_beta2: float
    eps: float
    grad_sign: float
    l2_decay: float
    param_scale: float
    neg_step_size: float
    denom_divisor: float


def coefficients(hyper: Mapping[str, Any], lr: float, step: float) -> Coefficients:
    """The per-tensor scalars (csrc/include/fusedopt/optimizers/adam.h's, in double)."""
    bias_correction1 = 1.0 - hyper["beta1"] ** step
    bias_correction2_sqrt = math.sqrt(1.0 - hyper["beta2"] ** step)
    decoupled, wd = hyper["decoupled_weight_decay"], hyper["weight_decay"]
    if hyper["optimized_update"]:
        neg_step_size, divisor = -lr * bias_correction2_sqrt / bias_correction1, 1.0
    else:
        neg_step_size, divisor = -lr / bias_correction1, bias_correction2_sqrt
    return Coefficients(
        one_minus_beta1=1.0 - hyper["beta1"], one_minus_beta2=1.0 - hyper["beta2"], eps=hyper["eps"],
        grad_sign=-1.0 if hyper["maximize"] else 1.0,
        l2_decay=0.0 if decoupled else wd,
        param_scale=(1.0 - (wd if hyper["absolute_weight_decay"] else lr * wd)) if decoupled else 1.0,
        neg_step_size=neg_step_size, denom_divisor=divisor)


def update_rows(param, rows, grad_rows, exp_avg, exp_avg_sq, max_exp_avg_sq, step: float,
                hyper: Mapping[str, Any], lr: float) -> None:
    """One param: `rows` (int64, unique) of its flattened row view, `grad_rows` their values."""
    if rows.numel() == 0:
        return  # torch.optim.SparseAdam skips an empty grad after advancing the step
    k = coefficients(hyper, lr, step)
    length = grad_rows.shape[1]
    views = [t.view(-1, length) for t in (param, exp_avg, exp_avg_sq)]
    p, m, v = (view[rows] for view in views)
    g = grad_rows.neg() if k.grad_sign < 0 else grad_rows
    if k.l2_decay != 0:
        g = g.add(p, alpha=k.l2_decay)
    if k.param_scale != 1:
        p = p.mul(k.param_scale)
    m = m + (g - m).mul_(k.one_minus_beta1)
    v = v + (g * g - v).mul_(k.one_minus_beta2)
    second_moment = v
    if max_exp_avg_sq is not None:
        max_view = max_exp_avg_sq.view(-1, length)
        second_moment = torch.maximum(max_view[rows], v)
        max_view[rows] = second_moment
    denom = second_moment.sqrt()
    if k.denom_divisor != 1:
        denom = denom / k.denom_divisor
    p = p + k.neg_step_size * (m / denom.add_(k.eps))
    for view, value in zip(views, (p, m, v)):
        view[rows] = value
