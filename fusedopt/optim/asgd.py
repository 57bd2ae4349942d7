"""ASGD (averaged SGD): torch.optim.ASGD's math, defaults, errors and state layout, fused."""
from __future__ import annotations

from ._base import FusedOptimizer
from ._checks import check_lr, check_non_negative, check_torch_flags
from ._spec import BOOL, FLOAT, OptimizerSpec

__all__ = ["ASGD"]


class ASGD(FusedOptimizer):
    """torch.optim.ASGD, every param tensor of a group updated in one fused call.

    Besides `step` and the average `ax`, torch keeps two per-param scalars: `eta` (the step
    size, starting at the group's lr) and `mu` (the averaging weight, starting at 1). They
    stay 0-dim float32 tensors beside the param, read and advanced on the device where the
    per-tensor coefficients are computed, so a step never waits on the host.
    `clip_grad_value` as for every fusedopt optimizer (see Adam).
    """

    spec = OptimizerSpec(
        kind="asgd",
        hyperparameters=(("lambd", FLOAT), ("alpha", FLOAT), ("t0", FLOAT), ("weight_decay", FLOAT),
                         ("maximize", BOOL)),
        state_keys=lambda h: ("ax",),
        scalar_states=(("eta", "lr"), ("mu", 1.0)),
    )
    _setstate_defaults = dict(foreach=None, maximize=False, differentiable=False, capturable=False)

    def __init__(self, params, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0, foreach=None,
                 maximize=False, differentiable=False, capturable=False, *, backend="auto", master_weights=False,
                 max_grad_norm=None, clip_grad_value=None, clip_grad_norm_per_tensor=None,
                 state_dtype=None, bf16_stochastic_round=False):
        check_lr(lr)
        check_non_negative(weight_decay, "weight_decay value")
        check_torch_flags(foreach, None, differentiable)
        defaults = dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, capturable=capturable, backend=backend,
                        master_weights=master_weights, max_grad_norm=max_grad_norm,
                        clip_grad_value=clip_grad_value, clip_grad_norm_per_tensor=clip_grad_norm_per_tensor,
                        state_dtype=state_dtype, bf16_stochastic_round=bf16_stochastic_round)
        super().__init__(params, defaults)
