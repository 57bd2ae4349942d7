"""Adam and AdamW, as torch.optim.Adam's single-tensor path; `optimized_update` is Kingma &
Ba's section-2 form (eps added to sqrt(v) before the bias correction); decoupled decay is
`p *= 1 - lr*wd`, or `p *= 1 - wd` with absolute_weight_decay (labml's absolute decay)."""
import math

import torch

from ._moments import decayed_grad, update_moments


def update(param, grad, states, step, c) -> None:
    exp_avg, exp_avg_sq, *rest = states
    grad = decayed_grad(param, grad, c)
    update_moments(exp_avg, exp_avg_sq, grad, c)
    second_moment = exp_avg_sq
    if c.amsgrad:
        torch.maximum(rest[0], exp_avg_sq, out=rest[0])
        second_moment = rest[0]
    bias_correction1 = 1 - c.beta1**step
    bias_correction2_sqrt = math.sqrt(1 - c.beta2**step)
    if c.optimized_update:
        step_size = c.lr * bias_correction2_sqrt / bias_correction1
        denom = second_moment.sqrt().add_(c.eps)
    else:
        step_size = c.lr / bias_correction1
        denom = (second_moment.sqrt() / bias_correction2_sqrt).add_(c.eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)

