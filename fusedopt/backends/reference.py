"""The readable specification: each update in plain PyTorch, one tensor at a time.

Every other backend must agree with this one. The operations and their order are
torch.optim's single-tensor ones; 16-bit params are computed in float32 and rounded
once at the end, as torch's fused kernels and fusedopt's compiled kernels do.
"""
from __future__ import annotations

import math
from typing import Iterator, List, Optional, Tuple

import torch

from .base import AdamConfig, Backend, RMSpropConfig, SGDConfig, TensorBatch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _in_opmath(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    return [t.float() if t.dtype in _LOW_PRECISION else t for t in tensors]


def _write_back(originals: List[torch.Tensor], computed: List[torch.Tensor]) -> None:
    for original, value in zip(originals, computed):
        if value is not original:
            original.copy_(value)


def _columns(batch: TensorBatch, config) -> Iterator[Tuple[int, torch.Tensor, List[torch.Tensor]]]:
    """Per param: (index, transformed grad, [param value, *state values]), all in opmath.

    The param value is the fp32 master copy (the last state) with master weights; after the
    caller's update the values are written back and the param gets the rounded master.
    With a scale or clip coefficient the transformed grad is written back into the grad
    (GradTransform's docstring says why); the caller must not modify it in place.
    """
    transform = config.grad_transform
    scale = transform.grad_scale
    clip = transform.clip_coef
    for i, (param, grad) in enumerate(zip(batch.params, batch.grads)):
        stored_grad = grad
        states = [s[i] for s in batch.states]
        master = states.pop() if config.master_weights else None
        targets = [param if master is None else master, *states]
        values = _in_opmath(targets)
        grad = grad.float() if grad.dtype in _LOW_PRECISION else grad
        if scale is not None:
            grad = grad / scale.to(grad.dtype)
        if clip is not None:
            grad = grad * clip.to(grad.dtype)
        yield i, grad, values
        _write_back(targets, values)
        if transform.writes_grad():
            stored_grad.copy_(grad)
        if master is not None:
            param.copy_(master)


def _advance(step: Optional[torch.Tensor]) -> float:
    step += 1
    return float(step.item())


class ReferenceBackend(Backend):
    name = "reference"

    def unusable_reason(self, device: torch.device) -> Optional[str]:
        return None  # plain PyTorch runs wherever the tensors are

    def adam(self, batch: TensorBatch, c: AdamConfig) -> None:
        if c.grad_transform.skips_step():
            return
        for i, grad, (param, exp_avg, exp_avg_sq, *rest) in _columns(batch, c):
            step = _advance(batch.steps[i])
            if c.maximize:
                grad = -grad
            if c.weight_decay != 0:
                if c.decoupled_weight_decay:
                    param.mul_(1 - c.lr * c.weight_decay)
                else:
                    grad = grad.add(param, alpha=c.weight_decay)
            exp_avg.lerp_(grad, 1 - c.beta1)
            exp_avg_sq.mul_(c.beta2).addcmul_(grad, grad, value=1 - c.beta2)
            second_moment = exp_avg_sq
            if c.amsgrad:
                torch.maximum(rest[0], exp_avg_sq, out=rest[0])
                second_moment = rest[0]
            bias_correction1 = 1 - c.beta1**step
            bias_correction2_sqrt = math.sqrt(1 - c.beta2**step)
            if c.optimized_update:
                step_size = c.lr * bias_correction2_sqrt / bias_correction1
                denom = second_moment.sqrt().add_(c.eps)
            else:
                step_size = c.lr / bias_correction1
                denom = (second_moment.sqrt() / bias_correction2_sqrt).add_(c.eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)

    def sgd(self, batch: TensorBatch, c: SGDConfig) -> None:
        if c.grad_transform.skips_step():
            return
        for _, grad, (param, *rest) in _columns(batch, c):
            if c.maximize:
                grad = -grad
            if c.weight_decay != 0:
                grad = grad.add(param, alpha=c.weight_decay)
            if c.momentum != 0:
                buf = rest[0]
                if c.first_step:
                    buf.copy_(grad)
                else:
                    buf.mul_(c.momentum).add_(grad, alpha=1 - c.dampening)
                grad = grad.add(buf, alpha=c.momentum) if c.nesterov else buf
            param.add_(grad, alpha=-c.lr)

    def rmsprop(self, batch: TensorBatch, c: RMSpropConfig) -> None:
        if c.grad_transform.skips_step():
            return
        for i, grad, (param, square_avg, *rest) in _columns(batch, c):
            _advance(batch.steps[i])
            if c.maximize:
                grad = -grad
            if c.weight_decay != 0:
                grad = grad.add(param, alpha=c.weight_decay)
            square_avg.mul_(c.alpha).addcmul_(grad, grad, value=1 - c.alpha)
            if c.centered:
                grad_avg = rest.pop(0)
                grad_avg.lerp_(grad, 1 - c.alpha)
                avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
            else:
                avg = square_avg.sqrt()
            avg = avg.add_(c.eps)
            if c.momentum > 0:
                buf = rest[0]
                buf.mul_(c.momentum).addcdiv_(grad, avg)
                param.add_(buf, alpha=-c.lr)
            else:
                param.addcdiv_(grad, avg, value=-c.lr)
