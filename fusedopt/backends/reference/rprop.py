"""Rprop, as torch.optim.Rprop's single-tensor path: the step size grows where the grad kept
its sign, shrinks where it flipped (and that element then skips its move and forgets the
grad), and each param moves by its step size against the grad's sign."""


def update(param, grad, states, step, c) -> None:
    prev, step_size = states
    if c.maximize:
        grad = -grad
    factor = grad.mul(prev).sign()  # NaN stays NaN, as in torch
    factor[factor.gt(0)] = c.etaplus
    factor[factor.lt(0)] = c.etaminus
    factor[factor.eq(0)] = 1
    step_size.mul_(factor).clamp_(c.step_size_min, c.step_size_max)
    grad = grad.clone()
    grad[factor.eq(c.etaminus)] = 0
    param.addcmul_(grad.sign(), step_size, value=-1)
    prev.copy_(grad)
