"""LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning: Training BERT in 76
minutes", arXiv 1904.00962), fused: one reduction pass and one update pass per bucket per step."""
from __future__ import annotations

from typing import Any, Dict

from ._base import FusedOptimizer
from ._checks import check_lr, check_non_negative, check_torch_flags
from ._spec import BOOL, FLOAT, OptimizerSpec

__all__ = ["LAMB"]


class LAMB(FusedOptimizer):
    """LAMB, the paper's Algorithm 2 with the identity as its scaling function phi:

    ``m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;  u = m_hat / (sqrt(v_hat) + eps) + wd*p;
    p -= lr * (||p|| / ||u||) * u``, the norms per param tensor, the ratio 1 where either is 0.

    `bias_correction=True`: ``m_hat = m/(1-b1^t)``, ``v_hat = v/(1-b2^t)`` (computed with one
    division as ``m * (sqrt(1-b2^t)/(1-b1^t)) / (sqrt(v) + eps*sqrt(1-b2^t))``, the same number
    before rounding); `optimized_update=True` takes Adam's other form,
    ``m * sqrt(1-b2^t)/(1-b1^t) / (sqrt(v) + eps)`` (eps enters before the bias correction, see
    fusedopt.Adam). `grad_averaging=False` accumulates ``m = b1*m + g``
    (Apex's option). `max_grad_norm`, `clip_grad_value`, `clip_grad_norm_per_tensor`, GradScaler,
    `maximize`, `master_weights` and `state_dtype` (torch.bfloat16: both moments stored in bf16,
    read as the update reads them by the norm pass too) as for every fusedopt optimizer; sparse
    grads are refused.

    Defaults: Apex's FusedLAMB's numbers (lr=1e-3, betas=(0.9, 0.999), eps=1e-6,
    weight_decay=0.01, bias_correction=True, grad_averaging=True), which are also the paper's
    BERT settings for betas, eps and weight decay. Two differences from Apex, both the paper's
    algorithm: the trust ratio applies to every tensor (Apex applies it only to groups with
    weight_decay != 0 unless use_nvlamb=True), and there is no global-norm clipping unless asked
    for (Apex clips at max_grad_norm=1.0 by default, by ``norm / max_norm``; here
    ``max_grad_norm=c`` clips as torch's clip_grad_norm_ does, like every fusedopt optimizer).

    Per step and bucket: the norm pass reads p, g, m and v and computes ``||p||^2`` and
    ``||u||^2`` per tensor (u recomputed, nothing written); the update pass then recomputes u,
    writes m, v and p with the tensor's ratio, which stays on the device (no host sync). On
    the CPU both passes and the ratios are one native call that takes a group of tensors (2**18
    elements, or one larger tensor) at a time, so the update reads from cache what the norm pass
    has just read; the same bits as two passes over the whole bucket. The ratio's square roots
    and division are correctly rounded on every backend (backends.base.trust_ratio).
    State: ``step`` (float32), ``exp_avg``, ``exp_avg_sq``.
    """

    spec = OptimizerSpec(
        kind="lamb",
        hyperparameters=(("beta1", FLOAT), ("beta2", FLOAT), ("eps", FLOAT), ("weight_decay", FLOAT),
                         ("maximize", BOOL), ("bias_correction", BOOL), ("grad_averaging", BOOL),
                         ("optimized_update", BOOL)),
        state_keys=lambda h: ("exp_avg", "exp_avg_sq"),
        state_decays=("beta1", "beta2"),
        norm_pass=True,
        bias_corrected=("beta1", "beta2"),
    )
    _setstate_defaults = dict(maximize=False, foreach=None, differentiable=False, fused=None)
    _own_setstate_defaults = dict(FusedOptimizer._own_setstate_defaults)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, *, bias_correction=True,
                 grad_averaging=True, optimized_update=False, maximize=False, foreach=None, differentiable=False,
                 fused=None, backend="auto", master_weights=False, max_grad_norm=None, clip_grad_value=None,
                 clip_grad_norm_per_tensor=None, state_dtype=None, bf16_stochastic_round=False):
        check_lr(lr)
        check_torch_flags(foreach, fused, differentiable)
        check_non_negative(eps, "epsilon value")
        for index, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
        check_non_negative(weight_decay, "weight_decay value")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, grad_averaging=grad_averaging,
                        optimized_update=optimized_update, maximize=maximize, foreach=foreach,
                        differentiable=differentiable, fused=fused, backend=backend, master_weights=master_weights,
                        max_grad_norm=max_grad_norm, clip_grad_value=clip_grad_value,
                        clip_grad_norm_per_tensor=clip_grad_norm_per_tensor, state_dtype=state_dtype,
                        bf16_stochastic_round=bf16_stochastic_round)
        super().__init__(params, defaults)

    @staticmethod
    def hyper(group: dict) -> Dict[str, Any]:
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                    maximize=group["maximize"], bias_correction=group["bias_correction"],
                    grad_averaging=group["grad_averaging"], optimized_update=group["optimized_update"])
