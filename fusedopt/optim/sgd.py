"""SGD: torch.optim's math (momentum, dampening, Nesterov, first-step rule), fused."""
from __future__ import annotations

from typing import Any, Dict, Tuple

from ._base import FusedOptimizer
from ._checks import check_lr, check_torch_flags, scalar


class SGD(FusedOptimizer):
    """torch.optim.SGD, every param tensor of a group updated in one fused call."""

    kind = "sgd"
    has_step_counter = False
    # New momentum buffers (zeros, so a GradScaler-skipped first step leaves no garbage)
    # follow torch's first-step rule, buf = grad: the config's first_step.
    has_first_step_rule = True
    _setstate_defaults = dict(nesterov=False, maximize=False, foreach=None, differentiable=False, fused=False)

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None, backend="auto",
                 master_weights=False, max_grad_norm=None):
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
            master_weights=master_weights, max_grad_norm=max_grad_norm,
        )
        super().__init__(params, defaults)

    @staticmethod
    def state_keys(group: dict) -> Tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def config_fields(self, group: dict) -> Dict[str, Any]:
        return dict(
            lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
            weight_decay=scalar(group["weight_decay"]), nesterov=group["nesterov"], maximize=group["maximize"],
        )
