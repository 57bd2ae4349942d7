"""RMSprop, as torch.optim.RMSprop's single-tensor path (its step counter is advanced by
the caller and not used by the math)."""


def update(param, grad, states, step, c) -> None:
    square_avg, *rest = states
    if c.maximize:
        grad = -grad
    if c.weight_decay != 0:
        grad = grad.add(param, alpha=c.weight_decay)
    square_avg.mul_(c.alpha).addcmul_(grad, grad, value=1 - c.alpha)
    if c.centered:
        grad_avg = rest.pop(0)
        grad_avg.lerp_(grad, 1 - c.alpha)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
    else:
        avg = square_avg.sqrt()
    avg = avg.add_(c.eps)
    if c.momentum > 0:
        buf = rest[0]
        buf.mul_(c.momentum).addcdiv_(grad, avg)
        param.add_(buf, alpha=-c.lr)
    else:
        param.addcdiv_(grad, avg, value=-c.lr)
