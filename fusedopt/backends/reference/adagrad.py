"""Adagrad, as torch.optim.Adagrad's single-tensor path for dense grads."""


def update(param, grad, states, step, c) -> None:
    (state_sum,) = states
    if c.maximize:
        grad = -grad
    if c.weight_decay != 0:
        grad = grad.add(param, alpha=c.weight_decay)
    clr = c.lr / (1 + (step - 1) * c.lr_decay)
    state_sum.addcmul_(grad, grad, value=1)
    std = state_sum.sqrt().add_(c.eps)
    param.addcdiv_(grad, std, value=-clr)
