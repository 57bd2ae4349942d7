"""RAdam (rectified Adam): torch.optim.RAdam's math, defaults, errors and state layout, fused."""
from __future__ import annotations

from ._base import FusedOptimizer
from ._checks import absolute_weight_decay, check_betas, check_lr, check_non_negative, check_torch_flags
from ._spec import BOOL, FLOAT, OptimizerSpec

__all__ = ["RAdam"]


class RAdam(FusedOptimizer):
    """torch.optim.RAdam, every param tensor of a group updated in one fused call. The
    rectification term depends only on the step, so it is a per-tensor coefficient, like
    Adam's bias corrections. `weight_decay_mode="absolute"` (with
    decoupled_weight_decay=True; a ValueError otherwise) decays ``p *= 1 - wd`` instead of
    ``p *= 1 - lr*wd``; `clip_grad_value` as for every fusedopt optimizer (see Adam)."""

    spec = OptimizerSpec(
        kind="radam",
        hyperparameters=(("beta1", FLOAT), ("beta2", FLOAT), ("eps", FLOAT), ("weight_decay", FLOAT),
                         ("decoupled_weight_decay", BOOL), ("maximize", BOOL), ("absolute_weight_decay", BOOL)),
        state_keys=lambda h: ("exp_avg", "exp_avg_sq"),
        state_decays=("beta1", "beta2"),
        bias_corrected=("beta1", "beta2"),
    )
    _setstate_defaults = dict(foreach=None, maximize=False, differentiable=False, decoupled_weight_decay=False,
                              capturable=False)
    _own_setstate_defaults = dict(FusedOptimizer._own_setstate_defaults, weight_decay_mode="decoupled")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, decoupled_weight_decay=False,
                 *, foreach=None, maximize=False, capturable=False, differentiable=False, backend="auto",
                 master_weights=False, max_grad_norm=None, clip_grad_value=None, clip_grad_norm_per_tensor=None,
                 state_dtype=None, bf16_stochastic_round=False, weight_decay_mode="decoupled"):
        check_lr(lr)
        check_non_negative(eps, "epsilon value")
        check_betas(betas)
        check_non_negative(weight_decay, "weight_decay value")
        check_torch_flags(foreach, None, differentiable)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        decoupled_weight_decay=decoupled_weight_decay, differentiable=differentiable,
                        backend=backend, master_weights=master_weights, max_grad_norm=max_grad_norm,
                        clip_grad_value=clip_grad_value, clip_grad_norm_per_tensor=clip_grad_norm_per_tensor,
                        state_dtype=state_dtype, bf16_stochastic_round=bf16_stochastic_round,
                        weight_decay_mode=weight_decay_mode)
        super().__init__(params, defaults)

    @staticmethod
    def hyper(group: dict) -> dict:
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                    decoupled_weight_decay=group["decoupled_weight_decay"], maximize=group["maximize"],
                    absolute_weight_decay=absolute_weight_decay(group, group["decoupled_weight_decay"]))
