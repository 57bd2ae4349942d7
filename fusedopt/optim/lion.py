"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), fused. Not in
torch.optim: the update is the sign of an interpolation of the momentum and the gradient,
so every element moves by exactly lr (plus decoupled weight decay)."""
from __future__ import annotations

from ._base import FusedOptimizer
from ._checks import absolute_weight_decay, check_lr, check_non_negative, check_torch_flags
from ._spec import BOOL, FLOAT, OptimizerSpec

__all__ = ["Lion"]


class Lion(FusedOptimizer):
    """Lion: ``p *= 1 - lr*wd; p -= lr * sign(b1*m + (1-b1)*g); m = b2*m + (1-b2)*g``.

    One state tensor, ``exp_avg``; no step counter. Defaults are the paper's
    (lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0); its authors suggest an lr 3-10x
    smaller than AdamW's and a weight decay 3-10x larger. `weight_decay_mode="absolute"`
    decays ``p *= 1 - wd`` instead (labml's absolute weight decay, independent of lr);
    `clip_grad_value` as for every fusedopt optimizer (see Adam).
    """

    spec = OptimizerSpec(
        kind="lion",
        hyperparameters=(("beta1", FLOAT), ("beta2", FLOAT), ("weight_decay", FLOAT), ("maximize", BOOL),
                         ("absolute_weight_decay", BOOL)),
        state_keys=lambda h: ("exp_avg",),
        state_decays=("beta2",),  # beta1 only mixes the update direction: it decays no state
        step_counter=False,
    )
    _setstate_defaults = dict(maximize=False, foreach=None, differentiable=False, fused=None)
    _own_setstate_defaults = dict(FusedOptimizer._own_setstate_defaults, weight_decay_mode="decoupled")

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False, foreach=None,
                 differentiable=False, fused=None, backend="auto", master_weights=False, max_grad_norm=None,
                 clip_grad_value=None, clip_grad_norm_per_tensor=None,
                 state_dtype=None, bf16_stochastic_round=False, weight_decay_mode="decoupled"):
        check_lr(lr)
        check_torch_flags(foreach, fused, differentiable)
        for index, beta in enumerate(betas):
            if not 0.0 <= beta <= 1.0:
                raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
        check_non_negative(weight_decay, "weight_decay value")
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach, differentiable=differentiable, fused=fused, backend=backend,
                        master_weights=master_weights, max_grad_norm=max_grad_norm, clip_grad_value=clip_grad_value, clip_grad_norm_per_tensor=clip_grad_norm_per_tensor,
                        state_dtype=state_dtype, bf16_stochastic_round=bf16_stochastic_round,
                        weight_decay_mode=weight_decay_mode)
        super().__init__(params, defaults)

    @staticmethod
    def hyper(group: dict) -> dict:
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], maximize=group["maximize"],
                    absolute_weight_decay=absolute_weight_decay(group))
