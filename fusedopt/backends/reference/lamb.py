"""LAMB (You et al. 2020, Algorithm 2), as csrc/include/fusedopt/optimizers/lamb.h computes it:
Adam's moments (with or without grad averaging and bias correction), the direction
u = m_hat / (sqrt(v_hat) + eps) + wd * p, and p -= lr * ratio * u, the ratio ||p|| / ||u||
coming from the norm pass (`norm_terms`, summed per tensor) through UpdateConfig.tensor_scale."""
import math

import torch


def _coefficients(step, c):
    """(m_scale, eps_scaled): u = m * m_scale / (sqrt(v) + eps_scaled), lamb.h's one-division
    form of m_hat / (sqrt(v_hat) + eps) (eps unscaled in the optimized form)."""
    if c.bias_correction:
        bias_correction1 = 1 - c.beta1**step
        bias_correction2_sqrt = math.sqrt(1 - c.beta2**step)
    else:
        bias_correction1 = bias_correction2_sqrt = 1.0
    m_scale = bias_correction2_sqrt / bias_correction1
    return m_scale, c.eps if c.optimized_update else c.eps * bias_correction2_sqrt


def _direction(param, grad, exp_avg, exp_avg_sq, step, c):
    """The moments, updated in place, and u (a new tensor)."""
    if c.maximize:
        grad = -grad
    exp_avg.mul_(c.beta1).add_(grad * (1 - c.beta1) if c.grad_averaging else grad)
    exp_avg_sq.mul_(c.beta2).addcmul_(grad, grad, value=1 - c.beta2)
    m_scale, eps_scaled = _coefficients(step, c)
    denom = exp_avg_sq.sqrt().add_(eps_scaled)
    # Products rounded before they are added, as the kernels (-ffp-contract=off) do: add_ with
    # alpha= fuses the multiply-add on CPU, an ulp off the kernels for about one element in 200.
    return (exp_avg * m_scale).div_(denom).add_(param * c.weight_decay)


def norm_terms(param, grad, states, step, c):
    """(||p||^2, ||u||^2) in float64 for the coming step, the moments left as they are."""
    exp_avg, exp_avg_sq = (s.clone() for s in states)
    u = _direction(param, grad, exp_avg, exp_avg_sq, step, c)
    return param.double().square().sum(), u.double().square().sum()


def update(param, grad, states, step, c, ratio=1.0) -> None:
    exp_avg, exp_avg_sq = states
    u = _direction(param, grad, exp_avg, exp_avg_sq, step, c)
    param.add_(u * (-c.lr * ratio))
