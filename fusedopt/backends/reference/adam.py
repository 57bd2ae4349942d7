"""Adam and AdamW, as torch.optim.Adam's single-tensor path; `optimized_update` is Kingma &
Ba's section-2 form (eps added to sqrt(v) before the bias correction); decoupled decay is
`p *= 1 - lr*wd`, or `p *= 1 - wd` with absolute_weight_decay (labml's absolute decay)."""
import math

import torch


def update(param, grad, states, step, c) -> None:
    exp_avg, exp_avg_sq, *rest = states
    if c.maximize:
        grad = -grad
    if c.weight_decay != 0:
        if c.decoupled_weight_decay:
            param.mul_(1 - (c.weight_decay if c.absolute_weight_decay else c.lr * c.weight_decay))
        else:
            grad = grad.add(param, alpha=c.weight_decay)
    exp_avg.lerp_(grad, 1 - c.beta1)
    exp_avg_sq.mul_(c.beta2).addcmul_(grad, grad, value=1 - c.beta2)
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

