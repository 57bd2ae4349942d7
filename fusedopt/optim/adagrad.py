"""Adagrad: torch.optim.Adagrad's math, defaults, errors and state layout, fused (dense grads;
sparse grads take torch's own update, fusedopt/optim/_sparse_grads.py)."""
from __future__ import annotations

from typing import List

import torch
from torch.optim.adagrad import adagrad as torch_adagrad

from .._quantize import scale_key
from ._base import FusedOptimizer
from ._checks import check_lr, check_non_negative, check_torch_flags
from ._plan import group_hyper
from ._spec import BOOL, FLOAT, OptimizerSpec

__all__ = ["Adagrad"]


class Adagrad(FusedOptimizer):
    """torch.optim.Adagrad, every param tensor of a group updated in one fused call.

    As torch does, the constructor creates every param's state (`sum` at
    `initial_accumulator_value`, complex(v, v) for complex params, and `step` at 0), so
    `state_dict()` and `share_memory()` see it before the first step; params of groups added
    later get theirs at their first step.
    """

    spec = OptimizerSpec(
        kind="adagrad",
        hyperparameters=(("lr_decay", FLOAT), ("eps", FLOAT), ("weight_decay", FLOAT), ("maximize", BOOL)),
        state_keys=lambda h: ("sum",),
        initial_values=(("sum", "initial_accumulator_value"),),
    )
    _setstate_defaults = dict(foreach=None, maximize=False, differentiable=False, fused=None)

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                 foreach=None, *, maximize=False, differentiable=False, fused=None, backend="auto",
                 master_weights=False, max_grad_norm=None, clip_grad_value=None, clip_grad_norm_per_tensor=None,
                 state_dtype=None, bf16_stochastic_round=False):
        check_lr(lr)
        check_non_negative(lr_decay, "lr_decay value")
        check_non_negative(weight_decay, "weight_decay value")
        check_non_negative(initial_accumulator_value, "initial_accumulator_value value")
        check_non_negative(eps, "epsilon value")
        check_torch_flags(foreach, fused, differentiable)
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach, maximize=maximize,
                        differentiable=differentiable, fused=fused, backend=backend, master_weights=master_weights,
                        max_grad_norm=max_grad_norm, clip_grad_value=clip_grad_value, clip_grad_norm_per_tensor=clip_grad_norm_per_tensor,
                        state_dtype=state_dtype, bf16_stochastic_round=bf16_stochastic_round)
        super().__init__(params, defaults)
        self._create_state_now()

    def share_memory(self) -> None:
        """Move each param's `sum` (and, stored in 8 bits, its block scales) into shared
        memory, as torch.optim.Adagrad.share_memory does (Hogwild training); `step` stays
        per process."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                for key in ("sum", scale_key("sum")):
                    if key in state:
                        state[key].share_memory_()

    def _check_sparse_group(self, group: dict) -> None:
        if group["weight_decay"] != 0:  # torch's message; raised here before any param moves
            raise RuntimeError("weight_decay option is not compatible with sparse gradients")

    def _sparse_update(self, group: dict, params: List[torch.Tensor], grads: List[torch.Tensor]) -> None:
        """torch.optim.Adagrad's for-loop update, for params with sparse grads: `sum` gains the
        squares of the rows present, and only those rows move."""
        hyper = group_hyper(self, group)
        for p in params:  # params of a group added after construction get their state now
            self._init_param_state(group, hyper, p)
        states = [self.state[p] for p in params]
        torch_adagrad(params, grads, [s["sum"] for s in states], [s["step"] for s in states], has_sparse_grad=True,
                      foreach=False, has_complex=any(map(torch.is_complex, params)), lr=group["lr"],
                      weight_decay=group["weight_decay"], lr_decay=group["lr_decay"], eps=group["eps"],
                      maximize=group["maximize"])
