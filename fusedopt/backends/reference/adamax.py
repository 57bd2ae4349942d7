"""Adamax, as torch.optim.Adamax's single-tensor path."""
import torch


def update(param, grad, states, step, c) -> None:
    exp_avg, exp_inf = states
    if c.maximize:
        grad = -grad
    if c.weight_decay != 0:
        grad = grad.add(param, alpha=c.weight_decay)
    exp_avg.lerp_(grad, 1 - c.beta1)
    torch.maximum(exp_inf.mul_(c.beta2), grad.abs().add_(c.eps), out=exp_inf)
    clr = c.lr / (1 - c.beta1**step)
    param.addcdiv_(exp_avg, exp_inf, value=-clr)
