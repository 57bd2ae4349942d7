"""SparseAdam: torch.optim.SparseAdam's signature, defaults, errors, math and state layout;
every param's present rows of a group updated in one call per device and dtype."""
from __future__ import annotations

from typing import Any, Dict

import torch

from ._base import FusedOptimizer
from ._checks import scalar
from .adam import Adam

__all__ = ["SparseAdam"]


class SparseAdam(FusedOptimizer):
    """torch.optim.SparseAdam (dense params, sparse COO grads, e.g. nn.Embedding(sparse=True)):
    only the rows a grad holds change, with the step-based bias correction and eps added to
    sqrt(v) unscaled. It is Adam's lazy mode with SparseAdam's options (fusedopt/optim/_lazy.py),
    run by the same kernels. `state_dict()` keeps torch's layout: `step` a Python int,
    `exp_avg` and `exp_avg_sq` in the param's shape, so checkpoints move both ways."""

    spec = Adam.spec  # the same kind and state as Adam: one set of kernels
    sparse_grads_only = True  # dense grads are an error (the test and bench harnesses read this)
    _setstate_defaults = dict(maximize=False)
    # state_dtype: not a constructor argument (torch's signature); a group asking for bf16
    # states is refused by lazy mode (_lazy.py).
    _own_setstate_defaults = dict(backend="auto", state_dtype=None)
    _implied_group_options = ("lazy_mode",)
    _dense_grad_error = "SparseAdam does not support dense gradients, please consider Adam instead"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False, *, backend="auto"):
        # torch.optim.SparseAdam's checks, conditions, order and messages
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        defaults = dict(lr=lr, betas=betas, eps=eps, maximize=maximize, backend=backend)
        super().__init__(params, defaults)
        sparse_params, complex_params = [], []
        for index, group in enumerate(self.param_groups):
            for d_index, d_param in enumerate(group["params"]):
                if d_param.is_sparse:
                    sparse_params.append([index, d_index])
                if d_param.is_complex():
                    complex_params.append([index, d_index])
        if sparse_params:
            raise ValueError(f"Sparse params at indices {sparse_params}: SparseAdam requires dense parameter tensors")
        if complex_params:
            raise ValueError(f"Complex params at indices {complex_params}: SparseAdam does not support complex "
                             "parameters")

    def add_param_group(self, param_group: dict) -> None:
        if isinstance(param_group, dict):
            param_group["lazy_mode"] = True  # every group: SparseAdam has no dense path
        super().add_param_group(param_group)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["lazy_mode"] = True

    @staticmethod
    def hyper(group: dict) -> Dict[str, Any]:
        beta1, beta2 = group["betas"]
        return dict(beta1=scalar(beta1), beta2=scalar(beta2), eps=group["eps"], weight_decay=0.0, amsgrad=False,
                    maximize=group.get("maximize", False), decoupled_weight_decay=False, optimized_update=True,
                    absolute_weight_decay=False)

    def _shape_state_dict(self, state_dict: dict) -> dict:
        """torch's layout: `step` a Python int (torch.optim.SparseAdam computes its bias
        corrections from it in double), no lazy_mode key (implied here)."""
        state_dict = super()._shape_state_dict(state_dict)
        for entry in state_dict["state"].values():
            if isinstance(entry, dict) and isinstance(entry.get("step"), torch.Tensor):
                entry["step"] = int(entry["step"].item())
        for group in state_dict["param_groups"]:
            group.pop("lazy_mode", None)
        return state_dict
