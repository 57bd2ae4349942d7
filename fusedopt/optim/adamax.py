"""Adamax (Adam with the infinity norm): torch.optim.Adamax's math, defaults, errors and
state layout, fused."""
from __future__ import annotations

from ._base import FusedOptimizer
from ._checks import check_betas, check_lr, check_non_negative, check_torch_flags
from ._spec import BOOL, FLOAT, OptimizerSpec

__all__ = ["Adamax"]


class Adamax(FusedOptimizer):
    """torch.optim.Adamax, every param tensor of a group updated in one fused call."""

    spec = OptimizerSpec(
        kind="adamax",
        hyperparameters=(("beta1", FLOAT), ("beta2", FLOAT), ("eps", FLOAT), ("weight_decay", FLOAT),
                         ("maximize", BOOL)),
        state_keys=lambda h: ("exp_avg", "exp_inf"),
        state_decays=("beta1", "beta2"),
        bias_corrected=("beta1",),
    )
    _setstate_defaults = dict(foreach=None, maximize=False, differentiable=False, capturable=False)

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, foreach=None, *,
                 maximize=False, differentiable=False, capturable=False, backend="auto", master_weights=False,
                 max_grad_norm=None, clip_grad_value=None, clip_grad_norm_per_tensor=None,
                 state_dtype=None, bf16_stochastic_round=False):
        check_lr(lr)
        check_non_negative(eps, "epsilon value")
        check_betas(betas)
        check_non_negative(weight_decay, "weight_decay value")
        check_torch_flags(foreach, None, differentiable)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        foreach=foreach, maximize=maximize, differentiable=differentiable, capturable=capturable,
                        backend=backend, master_weights=master_weights, max_grad_norm=max_grad_norm,
                        clip_grad_value=clip_grad_value, clip_grad_norm_per_tensor=clip_grad_norm_per_tensor,
                        state_dtype=state_dtype, bf16_stochastic_round=bf16_stochastic_round)
        super().__init__(params, defaults)

    @staticmethod
    def hyper(group: dict) -> dict:
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                    maximize=group["maximize"])
