"""RMSprop: torch.optim's math (centered, momentum), fused. torch has no fused RMSprop."""
from __future__ import annotations

from typing import Any, Dict, Tuple

from ._base import FusedOptimizer
from ._checks import check_lr, check_non_negative, check_torch_flags, scalar


class RMSprop(FusedOptimizer):
    """torch.optim.RMSprop, every param tensor of a group updated in one fused call."""

    kind = "rmsprop"
    _setstate_defaults = dict(momentum=0, centered=False, foreach=None, maximize=False, differentiable=False,
                              capturable=False)

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, *,
                 capturable=False, foreach=None, maximize=False, differentiable=False, backend="auto",
                 master_weights=False, max_grad_norm=None):
        check_lr(lr)
        check_torch_flags(foreach, None, differentiable)
        check_non_negative(eps, "epsilon value")
        check_non_negative(momentum, "momentum value")
        check_non_negative(weight_decay, "weight_decay value")
        check_non_negative(alpha, "alpha value")
        defaults = dict(
            lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered, weight_decay=weight_decay,
            capturable=capturable, foreach=foreach, maximize=maximize, differentiable=differentiable, backend=backend,
            master_weights=master_weights, max_grad_norm=max_grad_norm,
        )
        super().__init__(params, defaults)

    @staticmethod
    def state_keys(group: dict) -> Tuple[str, ...]:
        keys = ("square_avg",)
        if group["centered"]:
            keys += ("grad_avg",)
        if group["momentum"] > 0:
            keys += ("momentum_buffer",)
        return keys

    def config_fields(self, group: dict) -> Dict[str, Any]:
        return dict(
            lr=group["lr"], alpha=group["alpha"], eps=group["eps"], weight_decay=group["weight_decay"],
            momentum=group["momentum"], centered=group["centered"], maximize=group["maximize"],
        )
