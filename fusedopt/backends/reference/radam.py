"""RAdam, as torch.optim.RAdam's single-tensor path: below a variance-tractability
threshold (rho_t <= 5) the step is un-adapted momentum SGD."""


def update(param, grad, states, step, c) -> None:
    exp_avg, exp_avg_sq = states
    if c.maximize:
        grad = -grad
    if c.weight_decay != 0:
        if c.decoupled_weight_decay:
            param.mul_(1 - (c.weight_decay if c.absolute_weight_decay else c.lr * c.weight_decay))
        else:
            grad = grad.add(param, alpha=c.weight_decay)
    exp_avg.lerp_(grad, 1 - c.beta1)
    exp_avg_sq.mul_(c.beta2).addcmul_(grad, grad, value=1 - c.beta2)
    bias_correction1 = 1 - c.beta1**step
    bias_correction2 = 1 - c.beta2**step
    bias_corrected_exp_avg = exp_avg / bias_correction1
    rho_inf = 2 / (1 - c.beta2) - 1
    rho_t = rho_inf - 2 * step * (c.beta2**step) / bias_correction2
    if rho_t > 5.0:
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        adaptive_lr = (bias_correction2**0.5) / exp_avg_sq.sqrt().add_(c.eps)
        param.add_(bias_corrected_exp_avg * c.lr * adaptive_lr * rect, alpha=-1.0)
    else:
        param.add_(bias_corrected_exp_avg * c.lr, alpha=-1.0)
