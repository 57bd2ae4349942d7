"""SGD, as torch.optim.SGD's single-tensor path (torch's first-step rule: a new momentum
buffer starts as a copy of the gradient)."""


def update(param, grad, states, step, c) -> None:
    if c.maximize:
        grad = -grad
    if c.weight_decay != 0:
        grad = grad.add(param, alpha=c.weight_decay)
    if c.momentum != 0:
        buf = states[0]
        if c.first_step:
            buf.copy_(grad)
        else:
            buf.mul_(c.momentum).add_(grad, alpha=1 - c.dampening)
        grad = grad.add(buf, alpha=c.momentum) if c.nesterov else buf
    param.add_(grad, alpha=-c.lr)
