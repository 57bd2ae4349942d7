"""NAdam (Adam with Nesterov momentum): torch.optim.NAdam's math, defaults, errors and state
layout, fused."""
from __future__ import annotations

from ._base import FusedOptimizer
from ._checks import check_betas, check_lr, check_non_negative, check_torch_flags, scalar
from ._spec import BOOL, FLOAT, OptimizerSpec

__all__ = ["NAdam"]


class NAdam(FusedOptimizer):
    """torch.optim.NAdam, every param tensor of a group updated in one fused call.

    torch keeps a per-param scalar `mu_product` (the product of the momentum schedule's
    mu_t so far, a float32 tensor multiplied by each step's mu). fusedopt keeps it as a 0-dim
    float32 tensor beside the param, advanced on the device with the step counter.
    """

    spec = OptimizerSpec(
        kind="nadam",
        hyperparameters=(("beta1", FLOAT), ("beta2", FLOAT), ("eps", FLOAT), ("weight_decay", FLOAT),
                         ("momentum_decay", FLOAT), ("decoupled_weight_decay", BOOL), ("maximize", BOOL)),
        state_keys=lambda h: ("exp_avg", "exp_avg_sq"),
        scalar_states=(("mu_product", 1.0),),
    )
    _setstate_defaults = dict(maximize=False, foreach=None, capturable=False, differentiable=False,
                              decoupled_weight_decay=False)

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, backend="auto", master_weights=False, max_grad_norm=None):
        check_lr(lr)
        check_non_negative(eps, "epsilon value")
        check_betas(betas)
        check_non_negative(weight_decay, "weight_decay value")
        check_non_negative(momentum_decay, "momentum_decay value")
        check_torch_flags(foreach, None, differentiable)
        defaults = dict(lr=lr, betas=tuple(scalar(b) for b in betas), eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                        maximize=maximize, foreach=foreach, capturable=capturable, differentiable=differentiable,
                        backend=backend, master_weights=master_weights, max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    @staticmethod
    def hyper(group: dict) -> dict:
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                    momentum_decay=group["momentum_decay"], decoupled_weight_decay=group["decoupled_weight_decay"],
                    maximize=group["maximize"])
