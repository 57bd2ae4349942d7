"""fusedopt.clip_grad_norm_: torch.nn.utils.clip_grad_norm_ with one multi-tensor pass for
the L2 norm (the compiled CPU kernel, or torch's multi-tensor norm on GPUs)."""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch

from . import backends
from ._layout import CLIP_EPSILON, SUPPORTED_DTYPES, math_dtype
from ._memory import storage_problem_strided


def _grads_by_device_and_dtype(params: List[torch.Tensor]) -> List[Tuple[torch.device, List[torch.Tensor]]]:
    groups: Dict[Tuple[torch.device, torch.dtype], List[torch.Tensor]] = {}
    for p in params:
        groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    return [(device, grads) for (device, _), grads in groups.items()]


def _kernel_readable(grad: torch.Tensor) -> bool:
    return grad.layout == torch.strided and grad.dtype in SUPPORTED_DTYPES and grad.is_contiguous()


def _sum_of_squares(device: torch.device, grads: List[torch.Tensor]) -> torch.Tensor:
    return backends.resolve("auto", device).sum_of_squares(grads)


def global_norm(sums: List[torch.Tensor], grad_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The L2 norm of all grads from their per-bucket sums of squares, in float64 on the
    first bucket's device, divided by GradScaler's scale when there is one. The eager step
    and the torch.compile path both clip through this and clip_coefficient, with sums from
    Backend.sum_of_squares, so they compute the same bits."""
    if not sums:
        return torch.zeros((), dtype=torch.float64)
    device = sums[0].device
    norm = torch.stack([s.to(device, torch.float64) for s in sums]).sum().sqrt()
    if grad_scale is not None:
        norm = norm / grad_scale.to(device, torch.float64)
    return norm


def clip_coefficient(max_norm: float, norm: torch.Tensor) -> torch.Tensor:
    return torch.clamp(max_norm / (norm + CLIP_EPSILON), max=1.0)


def per_tensor_clip_coefficients(sums: torch.Tensor, max_norm: float, grad_scale: Optional[torch.Tensor],
                                 clip_coef: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """clip_grad_norm_per_tensor's coefficients (GradTransform.tensor_clip): from each
    tensor's sum of squares of its stored grad (float64), the norm of the grad the optimizer
    sees (divided by GradScaler's scale, times max_grad_norm's coefficient), then paddle's
    ClipGradByNorm (phi's clip_by_norm kernel): 1 where norm <= max_norm, else
    max_norm / (norm + eps) with eps = 1e-6 only where norm <= 1e-30 (else 0); times
    max_grad_norm's coefficient, so the grad is multiplied once. In `dtype`, the math type of
    the grads' update (GradTransform), on sums' device."""
    norm = sums.sqrt()
    if grad_scale is not None:
        norm = norm / grad_scale.to(norm.device, torch.float64)
    if clip_coef is not None:
        norm = norm * clip_coef.to(norm.device, torch.float64)
    eps = torch.where(norm <= 1e-30, 1e-6, 0.0)
    coef = torch.where(norm <= max_norm, torch.ones_like(norm), max_norm / (norm + eps))
    if clip_coef is not None:
        coef = coef * clip_coef.to(norm.device, torch.float64)
    return coef.to(dtype)


def clip_grad_norm_(
    parameters: Union[torch.Tensor, Iterable[torch.Tensor]],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach=None,
) -> torch.Tensor:
    """Scale the gradients of `parameters` in place so that their global norm is at most
    `max_norm`; returns the norm before clipping. Same contract and results as
    torch.nn.utils.clip_grad_norm_ (other norm types are delegated to it)."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    params = [p for p in parameters if p.grad is not None]
    for p in params:
        problem = p.grad.layout == torch.strided and storage_problem_strided(p.grad)
        if problem:  # torch would read (and scale) past the storage too: refuse
            raise RuntimeError(f"clip_grad_norm_: a grad of shape {tuple(p.grad.shape)} {problem}")
    # torch's own function serves what the kernels don't: other norms, sparse and complex
    # grads, and any grad whose memory is not a plain dense block inside its storage.
    if float(norm_type) != 2.0 or not all(_kernel_readable(p.grad) for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type, error_if_nonfinite, foreach)
    if not params:
        return torch.tensor(0.0)
    by_device = _grads_by_device_and_dtype(params)
    first_device = by_device[0][0]
    total = torch.stack([_sum_of_squares(device, grads).to(first_device) for device, grads in by_device]).sum().sqrt()
    total = total.to(params[0].grad.dtype if params[0].grad.is_floating_point() else torch.float32)
    if error_if_nonfinite and torch.logical_or(total.isnan(), total.isinf()):
        raise RuntimeError(
            f"The total norm of order {float(norm_type)} for gradients from `parameters` is non-finite, so it cannot "
            "be clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
            "`error_if_nonfinite=False`"
        )
    coef = clip_coefficient(max_norm, total.double())
    for device, grads in by_device:  # as torch: float64 grads scaled in float64, the others by a float32 coef
        torch._foreach_mul_(grads, coef.to(device=device, dtype=math_dtype(grads[0].dtype)))
    return total
