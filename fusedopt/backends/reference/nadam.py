"""NAdam, as torch.optim.NAdam's single-tensor path: the momentum schedule mu_t and mu_{t+1}
in double, mu_product (float32) times mu_t in float32 as torch's in-place multiply of a
float32 tensor, then two addcdiv steps."""


def update(param, grad, states, step, c, scalars) -> None:
    exp_avg, exp_avg_sq = states
    (mu_product,) = scalars
    if c.maximize:
        grad = -grad
    bias_correction2 = 1 - c.beta2**step
    if c.weight_decay != 0:
        if c.decoupled_weight_decay:
            param.mul_(1 - (c.weight_decay if c.absolute_weight_decay else c.lr * c.weight_decay))
        else:
            grad = grad.add(param, alpha=c.weight_decay)
    mu = c.beta1 * (1.0 - 0.5 * (0.96 ** (step * c.momentum_decay)))
    mu_next = c.beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * c.momentum_decay)))
    mu_product.mul_(mu)
    exp_avg.lerp_(grad, 1 - c.beta1)
    exp_avg_sq.mul_(c.beta2).addcmul_(grad, grad, value=1 - c.beta2)
    denom = exp_avg_sq.div(bias_correction2).sqrt()
    mu_product_value = mu_product.item()
    mu_product_next = mu_product_value * mu_next
    denom.add_(c.eps)
    param.addcdiv_(grad, denom, value=(-c.lr * (1.0 - mu) / (1.0 - mu_product_value)))
    param.addcdiv_(exp_avg, denom, value=(-c.lr * mu_next) / (1.0 - mu_product_next))
