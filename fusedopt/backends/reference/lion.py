"""Lion (Chen et al. 2023, Program 1): decoupled weight decay, the sign of the interpolated
update, then the momentum."""
import torch


def update(param, grad, states, step, c) -> None:
    (exp_avg,) = states
    if c.maximize:
        grad = -grad
    if c.weight_decay != 0:
        param.mul_(1 - (c.weight_decay if c.absolute_weight_decay else c.lr * c.weight_decay))
    direction = torch.sign(exp_avg.lerp(grad, 1 - c.beta1))
    param.add_(direction, alpha=-c.lr)
    exp_avg.lerp_(grad, 1 - c.beta2)
