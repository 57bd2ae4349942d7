"""Adadelta: torch.optim.Adadelta's math, defaults, errors and state layout, fused."""
from __future__ import annotations

from ._base import FusedOptimizer
from ._checks import check_lr, check_non_negative, check_torch_flags
from ._spec import BOOL, FLOAT, OptimizerSpec

__all__ = ["Adadelta"]


class Adadelta(FusedOptimizer):
    """torch.optim.Adadelta, every param tensor of a group updated in one fused call."""

    spec = OptimizerSpec(
        kind="adadelta",
        hyperparameters=(("rho", FLOAT), ("eps", FLOAT), ("weight_decay", FLOAT), ("maximize", BOOL)),
        state_keys=lambda h: ("square_avg", "acc_delta"),
        state_decays=("rho",),
    )
    _setstate_defaults = dict(foreach=None, maximize=False, differentiable=False, capturable=False)

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, foreach=None, *, capturable=False,
                 maximize=False, differentiable=False, backend="auto", master_weights=False, max_grad_norm=None,
                 clip_grad_value=None, clip_grad_norm_per_tensor=None,
                 state_dtype=None, bf16_stochastic_round=False):
        check_lr(lr)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        check_non_negative(eps, "epsilon value")
        check_non_negative(weight_decay, "weight_decay value")
        check_torch_flags(foreach, None, differentiable)
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize, capturable=capturable,
                        foreach=foreach, differentiable=differentiable, backend=backend,
                        master_weights=master_weights, max_grad_norm=max_grad_norm, clip_grad_value=clip_grad_value, clip_grad_norm_per_tensor=clip_grad_norm_per_tensor,
                        state_dtype=state_dtype, bf16_stochastic_round=bf16_stochastic_round)
        super().__init__(params, defaults)
