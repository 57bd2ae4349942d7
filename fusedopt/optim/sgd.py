"""SGD: torch.optim's math (momentum, dampening, Nesterov, first-step rule), fused."""
from __future__ import annotations

from typing import List

import torch
from torch.optim.sgd import sgd as torch_sgd

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
        state_decays=("momentum",),
        step_counter=False,
        first_step_rule=True,
    )
    _setstate_defaults = dict(nesterov=False, maximize=False, foreach=None, differentiable=False, fused=False)

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None, backend="auto",
                 master_weights=False, max_grad_norm=None, clip_grad_value=None, clip_grad_norm_per_tensor=None,
                 state_dtype=None, bf16_stochastic_round=False):
        check_lr(lr, nan_allowed=True)
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

    def _sparse_update(self, group: dict, params: List[torch.Tensor], grads: List[torch.Tensor]) -> None:
        """torch.optim.SGD's for-loop update, for params with sparse grads (its momentum buffer
        starts as a clone of the first grad, sparse if that grad is and nothing densifies it)."""
        buffers = [self.state[p].get("momentum_buffer") if group["momentum"] != 0 else None for p in params]
        torch_sgd(params, grads, buffers, has_sparse_grad=True, foreach=False, fused=False,
                  weight_decay=group["weight_decay"], momentum=group["momentum"], lr=group["lr"],
                  dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"])
        if group["momentum"] != 0:
            for p, buffer in zip(params, buffers):
                self.state[p]["momentum_buffer"] = buffer

    def _check_sparse_group(self, group: dict) -> None:
        if group["weight_decay"] != 0:  # torch's SGD fails on this too (adding a dense param to a sparse grad)
            raise RuntimeError("SGD: weight_decay with sparse gradients is not supported (torch.optim.SGD fails too: "
                               "add(sparse, dense) is not supported)")
