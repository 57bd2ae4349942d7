"""SGD: torch.optim's math (momentum, dampening, Nesterov, first-step rule), fused."""
from __future__ import annotations

from ._base import FusedOptimizer
from ._checks import check_lr, check_torch_flags
from ._spec import BOOL, FLOAT, OptimizerSpec

__all__ = ["SGD"]


class SGD(FusedOptimizer):
    """torch.optim.SGD, every param tensor of a group updated in one fused call."""

    # New momentum buffers (zeros, so a GradScaler-skipped first step leaves no garbage)
    # follow torch's first-step rule, buf = grad: UpdateConfig.first_step.
    spec = OptimizerSpec(
        kind="sgd",
        hyperparameters=(("momentum", FLOAT), ("dampening", FLOAT), ("weight_decay", FLOAT), ("nesterov", BOOL),
                         ("maximize", BOOL)),
        state_keys=lambda h: ("momentum_buffer",) if h["momentum"] != 0 else (),
        step_counter=False,
        first_step_rule=True,
    )
    _setstate_defaults = dict(nesterov=False, maximize=False, foreach=None, differentiable=False, fused=False)

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None, backend="auto",
                 master_weights=False, max_grad_norm=None, clip_grad_value=None, clip_grad_norm_per_tensor=None,
                 state_dtype=None, bf16_stochastic_round=False):
        check_lr(lr)
        check_torch_flags(foreach, fused, differentiable)
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
            maximize=maximize, foreach=foreach, differentiable=differentiable, fused=fused, backend=backend,
            master_weights=master_weights, max_grad_norm=max_grad_norm, clip_grad_value=clip_grad_value, clip_grad_norm_per_tensor=clip_grad_norm_per_tensor,
            state_dtype=state_dtype, bf16_stochastic_round=bf16_stochastic_round,
        )
        super().__init__(params, defaults)
