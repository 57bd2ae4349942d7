"""What Adam, RAdam and NAdam's reference updates share, as torch's single-tensor paths
write it: the signed, weight-decayed gradient and the two moment updates."""


def decayed_grad(param, grad, c):
    """maximize's sign, then decoupled decay of the param (`p *= 1 - lr*wd`, or `1 - wd`
    with absolute_weight_decay) or L2 decay added to the gradient; returns the gradient."""
    if c.maximize:
        grad = -grad
    if c.weight_decay != 0:
        if c.decoupled_weight_decay:
            param.mul_(1 - (c.weight_decay if c.absolute_weight_decay else c.lr * c.weight_decay))
        else:
            grad = grad.add(param, alpha=c.weight_decay)
    return grad


def update_moments(exp_avg, exp_avg_sq, grad, c) -> None:
    exp_avg.lerp_(grad, 1 - c.beta1)
    exp_avg_sq.mul_(c.beta2).addcmul_(grad, grad, value=1 - c.beta2)
