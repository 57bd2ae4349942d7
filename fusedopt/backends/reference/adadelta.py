"""Adadelta, as torch.optim.Adadelta's single-tensor path."""


def update(param, grad, states, step, c) -> None:
    square_avg, acc_delta = states
    if c.maximize:
        grad = -grad
    if c.weight_decay != 0:
        grad = grad.add(param, alpha=c.weight_decay)
    square_avg.mul_(c.rho).addcmul_(grad, grad, value=1 - c.rho)
    std = square_avg.add(c.eps).sqrt_()
    delta = acc_delta.add(c.eps).sqrt_()
    delta.div_(std).mul_(grad)
    acc_delta.mul_(c.rho).addcmul_(delta, delta, value=1 - c.rho)
    param.add_(delta, alpha=-c.lr)
