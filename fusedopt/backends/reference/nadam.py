"""NAdam, as torch.optim.NAdam's single-tensor path: the momentum schedule mu_t and mu_{t+1}
in double, mu_product (float32) times mu_t in float32 as torch's in-place multiply of a
float32 tensor, then two addcdiv steps."""
from ._moments import decayed_grad, update_moments


def update(param, grad, states, step, c, scalars) -> None:
    exp_avg, exp_avg_sq = states
    (mu_product,) = scalars
    grad = decayed_grad(param, grad, c)
    bias_correction2 = 1 - c.beta2**step
    mu = c.beta1 * (1.0 - 0.5 * (0.96 ** (step * c.momentum_decay)))
    mu_next = c.beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * c.momentum_decay)))
    mu_product.mul_(mu)
    update_moments(exp_avg, exp_avg_sq, grad, c)
    denom = exp_avg_sq.div(bias_correction2).sqrt()
    mu_product_value = mu_product.item()
    mu_product_next = mu_product_value * mu_next
    denom.add_(c.eps)
    param.addcdiv_(grad, denom, value=(-c.lr * (1.0 - mu) / (1.0 - mu_product_value)))
    param.addcdiv_(exp_avg, denom, value=(-c.lr * mu_next) / (1.0 - mu_product_next))
