"""RMSprop: torch.optim's math (centered, momentum), fused. torch has no fused RMSprop."""
from __future__ import annotations

from ._base import FusedOptimizer
from ._checks import check_lr, check_non_negative, check_torch_flags
from ._spec import BOOL, FLOAT, OptimizerSpec

__all__ = ["RMSprop"]


def _state_keys(hyper) -> tuple:
    return ("square_avg", *(("grad_avg",) if hyper["centered"] else ()),
            *(("momentum_buffer",) if hyper["momentum"] > 0 else ()))


class RMSprop(FusedOptimizer):
    """torch.optim.RMSprop, every param tensor of a group updated in one fused call."""

    spec = OptimizerSpec(
        kind="rmsprop",
        hyperparameters=(("alpha", FLOAT), ("eps", FLOAT), ("weight_decay", FLOAT), ("momentum", FLOAT),
                         ("centered", BOOL), ("maximize", BOOL)),
        state_keys=_state_keys,
        state_decays=("alpha", "momentum"),
        creation_order=("square_avg", "momentum_buffer", "grad_avg"),
    )
    _setstate_defaults = dict(momentum=0, centered=False, foreach=None, maximize=False, differentiable=False,
                              capturable=False)

    # torch.optim.RMSprop takes capturable .. differentiable positionally too (no `*` before them)
    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 capturable=False, foreach=None, maximize=False, differentiable=False, *, backend="auto",
                 master_weights=False, max_grad_norm=None, clip_grad_value=None, clip_grad_norm_per_tensor=None,
                 state_dtype=None, bf16_stochastic_round=False):
        check_lr(lr)
        check_torch_flags(foreach, None, differentiable)
        check_non_negative(eps, "epsilon value")
        check_non_negative(momentum, "momentum value")
        check_non_negative(weight_decay, "weight_decay value")
        check_non_negative(alpha, "alpha value")
        defaults = dict(
            lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered, weight_decay=weight_decay,
            capturable=capturable, foreach=foreach, maximize=maximize, differentiable=differentiable, backend=backend,
            master_weights=master_weights, max_grad_norm=max_grad_norm, clip_grad_value=clip_grad_value, clip_grad_norm_per_tensor=clip_grad_norm_per_tensor,
            state_dtype=state_dtype, bf16_stochastic_round=bf16_stochastic_round,
        )
        super().__init__(params, defaults)
