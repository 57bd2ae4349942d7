"""Sparse (COO) grads for the optimizers whose torch namesake updates them: SGD and Adagrad
(an `nn.Embedding(sparse=True)` trained with them). The fused kernels read dense grads, so
such params go through torch.optim's own for-loop update (its functional API), with torch's
numbers and state, while the group's other params take the fused step.

FusedOptimizer.step learns of them from the bucket check (SparseGradError, raised before
anything is written, so a step with only dense grads pays nothing for this), hides those
grads from the bucket (`p.grad = None` for the fused step, given back right after), and
runs `update` on them once the fused step is done. Everything that could refuse them is
checked before any param moves.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch


@dataclass
class SparseGrads:
    """The params of one group, within one bucket, whose grads are sparse, and those grads."""

    group: dict
    params: List[torch.Tensor]
    grads: List[torch.Tensor]


# fusedopt's own group options, which torch's update cannot apply: their values when off
# (max_grad_norm, which clips by the norm of every group's grads, is checked over all groups).
_FUSEDOPT_OPTIONS = dict(master_weights=False, clip_grad_value=None, clip_grad_norm_per_tensor=None,
                         state_dtype=None, bf16_stochastic_round=False)


def hide_sparse_grads(optimizer, group: dict, params: List[torch.Tensor]) -> SparseGrads:
    """Take the sparse grads of these params (one bucket of `group`) out of the fused step:
    checked (with the optimizer's own refusals, `_check_sparse_group`: e.g. Adagrad's weight
    decay), then each such `p.grad` set to None until `restore_grads`."""
    name = type(optimizer).__name__
    taken = [p for p in params if p.grad is not None and p.grad.is_sparse]
    for key, off in _FUSEDOPT_OPTIONS.items():
        if group.get(key, off) != off:
            raise RuntimeError(f"{name}: sparse gradients are updated by torch.optim's own {name} step, which has "
                               f"no {key}; set {key}={off!r} for the group of params with sparse gradients")
    if any(g.get("max_grad_norm") is not None for g in optimizer.param_groups):
        raise RuntimeError(f"{name}: max_grad_norm clips by the norm of every grad, and sparse gradients are "
                           "updated by torch.optim's own step; clip with torch.nn.utils.clip_grad_norm_ instead")
    if getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None:
        raise RuntimeError(f"{name}: sparse gradients under torch.amp.GradScaler are not supported (torch's "
                           f"fused {name} refuses them too); step these params without a GradScaler")
    optimizer._check_sparse_group(group)
    hidden = SparseGrads(group, taken, [p.grad for p in taken])
    for p in taken:
        p.grad = None
    return hidden


def restore_grads(hidden: List[SparseGrads]) -> None:
    for entry in hidden:
        for p, grad in zip(entry.params, entry.grads):
            p.grad = grad
