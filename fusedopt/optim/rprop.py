"""Rprop (resilient backpropagation): torch.optim.Rprop's math, defaults, errors and state
layout, fused."""
from __future__ import annotations

import math

from ._base import FusedOptimizer
from ._checks import check_lr, check_torch_flags
from ._spec import BOOL, FLOAT, OptimizerSpec

__all__ = ["Rprop"]


class Rprop(FusedOptimizer):
    """torch.optim.Rprop, every param tensor of a group updated in one fused call. Each
    element keeps its own step size (`step_size`, starting at lr) and its previous grad
    (`prev`); only the grads' signs move the params."""

    spec = OptimizerSpec(
        kind="rprop",
        hyperparameters=(("etaminus", FLOAT), ("etaplus", FLOAT), ("step_size_min", FLOAT),
                         ("step_size_max", FLOAT), ("maximize", BOOL)),
        state_keys=lambda h: ("prev", "step_size"),
        initial_values=(("step_size", "lr"),),
    )
    _setstate_defaults = dict(foreach=None, maximize=False, differentiable=False, capturable=False)

    def __init__(self, params, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), *, capturable=False, foreach=None,
                 maximize=False, differentiable=False, backend="auto", master_weights=False, max_grad_norm=None,
                 clip_grad_value=None, clip_grad_norm_per_tensor=None,
                 state_dtype=None, bf16_stochastic_round=False):
        check_lr(lr)
        if not 0.0 < etas[0] < 1.0 < etas[1]:
            raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")
        check_torch_flags(foreach, None, differentiable)
        defaults = dict(lr=lr, etas=etas, step_sizes=step_sizes, foreach=foreach, maximize=maximize,
                        differentiable=differentiable, capturable=capturable, backend=backend,
                        master_weights=master_weights, max_grad_norm=max_grad_norm, clip_grad_value=clip_grad_value, clip_grad_norm_per_tensor=clip_grad_norm_per_tensor,
                        state_dtype=state_dtype, bf16_stochastic_round=bf16_stochastic_round)
        super().__init__(params, defaults)

    @staticmethod
    def hyper(group: dict) -> dict:
        (etaminus, etaplus), (step_size_min, step_size_max) = group["etas"], group["step_sizes"]
        # torch's clamp_ takes None for a bound it does not apply: the same as an infinite one.
        if step_size_min is None and step_size_max is None:
            raise RuntimeError("Rprop: step_sizes (None, None): torch's clamp_ needs at least one of min and max")
        step_size_min = -math.inf if step_size_min is None else step_size_min
        step_size_max = math.inf if step_size_max is None else step_size_max
        return dict(etaminus=etaminus, etaplus=etaplus, step_size_min=step_size_min, step_size_max=step_size_max,
                    maximize=group["maximize"])
