"""ASGD, as torch.optim.ASGD's single-tensor path: decay and step with the eta of the end of
the previous step, average into ax with the previous mu (a copy while mu is 1), then store
the new eta and mu, computed in double as torch's Python floats are, as float32."""


def update(param, grad, states, step, c, scalars) -> None:
    (ax,) = states
    eta, mu = scalars
    if c.maximize:
        grad = -grad
    if c.weight_decay != 0:
        grad = grad.add(param, alpha=c.weight_decay)
    eta_value = eta.item()
    param.mul_(1 - c.lambd * eta_value)
    param.add_(grad, alpha=-eta_value)
    if mu.item() != 1:
        ax.add_(param.sub(ax).mul_(mu.item()))
    else:
        ax.copy_(param)
    eta.fill_(c.lr / ((1 + c.lambd * c.lr * step) ** c.alpha))
    mu.fill_(1 / max(1, step - c.t0))
