"""Adam and AdamW: torch.optim's math, defaults, errors and state layout, fused."""
from __future__ import annotations

from typing import Any, Dict

from ._base import FusedOptimizer
from ._checks import absolute_weight_decay, check_adam_hyperparameters, check_torch_flags, scalar
from ._spec import BOOL, FLOAT, OptimizerSpec

__all__ = ["Adam", "AdamW"]


class Adam(FusedOptimizer):
    """torch.optim.Adam, every param tensor of a group updated in one fused call.

    `optimized_update=True` uses the bias-correction form of Kingma & Ba, section 2:
    ``p -= lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)``; the default is torch's
    ``p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``. They differ in where eps enters.

    `weight_decay_mode="absolute"` (with decoupled weight decay: AdamW, or
    decoupled_weight_decay=True) decays ``p *= 1 - wd`` independent of lr (labml's absolute
    weight decay) instead of ``p *= 1 - lr*wd``; with Adam's L2 decay it is a ValueError.
    `clip_grad_value=c` clamps every grad element to [-c, c] after GradScaler's unscale and
    max_grad_norm's clip (whose norm is taken over the unclamped grads), before maximize and
    weight decay: torch's ``unscale_``, ``clip_grad_norm_``, ``clip_grad_value_``, then the step.

    `lazy_mode=True` (paddle's Adam lazy_mode): sparse COO grads (nn.Embedding(sparse=True))
    update only the rows they hold, with torch.optim.SparseAdam's arithmetic (equal to it with
    optimized_update=True and no weight decay); dense grads are then an error, as in SparseAdam.
    What each option means there: fusedopt/optim/_lazy.py.
    """

    spec = OptimizerSpec(
        kind="adam",
        hyperparameters=(("beta1", FLOAT), ("beta2", FLOAT), ("eps", FLOAT), ("weight_decay", FLOAT),
                         ("amsgrad", BOOL), ("maximize", BOOL), ("decoupled_weight_decay", BOOL),
                         ("optimized_update", BOOL), ("absolute_weight_decay", BOOL)),
        state_keys=lambda h: ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if h["amsgrad"] else ("exp_avg", "exp_avg_sq"),
        state_decays=("beta1", "beta2"),
        bias_corrected=("beta1", "beta2"),
    )
    _decoupled_weight_decay = False
    # torch.optim.Adam.__setstate__'s defaults for flags an older checkpoint lacks
    _setstate_defaults = dict(amsgrad=False, maximize=False, foreach=None, capturable=False, differentiable=False,
                              decoupled_weight_decay=False, fused=None)
    _own_setstate_defaults = dict(FusedOptimizer._own_setstate_defaults, optimized_update=False,
                                  weight_decay_mode="decoupled", lazy_mode=False)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False, optimized_update=False, backend="auto",
                 master_weights=False, max_grad_norm=None, clip_grad_value=None, clip_grad_norm_per_tensor=None,
                 state_dtype=None, bf16_stochastic_round=False, weight_decay_mode="decoupled",
                 lazy_mode=False):
        check_adam_hyperparameters(lr, betas, eps, weight_decay)
        check_torch_flags(foreach, fused, differentiable)
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
            amsgrad=amsgrad, maximize=maximize,
            # torch.optim.Adam's own keys, so checkpoints load into it with the same meaning
            foreach=foreach, capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=bool(decoupled_weight_decay or self._decoupled_weight_decay),
            optimized_update=optimized_update, backend=backend,
            master_weights=master_weights, max_grad_norm=max_grad_norm, clip_grad_value=clip_grad_value, clip_grad_norm_per_tensor=clip_grad_norm_per_tensor,
            state_dtype=state_dtype, bf16_stochastic_round=bf16_stochastic_round,
            weight_decay_mode=weight_decay_mode, lazy_mode=bool(lazy_mode),
        )
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        if self._decoupled_weight_decay:  # as torch.optim.AdamW: whatever the checkpoint says
            for group in self.param_groups:
                group["decoupled_weight_decay"] = True

    _sparse_grad_advice = ("; pass lazy_mode=True to update only the rows a sparse grad holds, or use "
                           "fusedopt.SparseAdam")

    @property
    def _dense_grad_error(self) -> str:
        return (f"{type(self).__name__}(lazy_mode=True) does not support dense gradients: lazy mode updates only "
                "the rows a sparse grad holds (nn.Embedding(sparse=True)); use lazy_mode=False for dense grads")

    @staticmethod
    def hyper(group: dict) -> Dict[str, Any]:
        beta1, beta2 = group["betas"]
        return dict(
            beta1=scalar(beta1), beta2=scalar(beta2), eps=group["eps"], weight_decay=group["weight_decay"],
            amsgrad=group["amsgrad"], maximize=group["maximize"],
            decoupled_weight_decay=group["decoupled_weight_decay"], optimized_update=group["optimized_update"],
            absolute_weight_decay=absolute_weight_decay(group, group["decoupled_weight_decay"]),
        )


class AdamW(Adam):
    """torch.optim.AdamW (decoupled weight decay, default 1e-2), fused; see Adam."""

    _decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None,
                 optimized_update=False, backend="auto", master_weights=False, max_grad_norm=None,
                 clip_grad_value=None, clip_grad_norm_per_tensor=None,
                 state_dtype=None, bf16_stochastic_round=False, weight_decay_mode="decoupled", lazy_mode=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         optimized_update=optimized_update, backend=backend, master_weights=master_weights,
                         max_grad_norm=max_grad_norm, clip_grad_value=clip_grad_value,
                         clip_grad_norm_per_tensor=clip_grad_norm_per_tensor, state_dtype=state_dtype,
                         bf16_stochastic_round=bf16_stochastic_round, weight_decay_mode=weight_decay_mode,
                         lazy_mode=lazy_mode)
