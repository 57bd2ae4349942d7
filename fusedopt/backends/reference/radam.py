"""RAdam, as torch.optim.RAdam's single-tensor path: below a variance-tractability
threshold (rho_t <= 5) the step is un-adapted momentum SGD."""
from ._moments import decayed_grad, update_moments


def update(param, grad, states, step, c) -> None:
    exp_avg, exp_avg_sq = states
    grad = decayed_grad(param, grad, c)
    update_moments(exp_avg, exp_avg_sq, grad, c)
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
