"""The readable specification: each update in plain PyTorch, one tensor at a time.

Every other backend must agree with this one. The operations and their order are
torch.optim's single-tensor ones; 16-bit params are computed in float32 and rounded
once at the end, as torch's fused kernels and fusedopt's compiled kernels do. bf16 state
tensors (state_dtype=torch.bfloat16) are read into float32 the same way and rounded once, to
nearest even (Tensor.copy_), when stored back. 8-bit states (state_dtype="int8") are
dequantized into float32 (table[code] * block absmax), updated by the same function and
requantized from the new float32 values (fusedopt/_quantize.py states the format and the
rounding); the param's update reads the new float32 state, not its requantized value.
With bf16_stochastic_round (a nonzero
UpdateConfig.round_seed) a bf16 param without a master copy is rounded stochastically
instead (reference/_rounding.py states the rule and its random bits).

This module owns what every optimizer shares (the grad transform, master weights, the
step counter, write-back); each optimizer's math is one function in
fusedopt/backends/reference/<kind>.py:

    def update(param, grad, states, step, config) -> None

`param` and `states` (the spec's state tensors for these options, in table order) are
updated in place, in the math type; `grad` is the transformed gradient (unscaled, clipped
by norm, clamped by value: GradTransform's order; do not modify it in place); `step` is
the advanced step counter as a float (None without one); `config`
is the UpdateConfig (`config.lr`, `config.first_step`, hyper-parameters by name).
A "factored" kind (Adafactor: OptimizerSpec.kernel) has instead
`update_factored(batch, config)` over the whole FactoredBatch (fusedopt/_factored.py).
A kind with scalar states (OptimizerSpec.scalar_states: ASGD's eta and mu) takes them as a
sixth argument, `scalars`: that param's 0-dim float32 tensors in spec order, which it
reads and updates in place, once per step.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch

from ..._layout import LOW_PRECISION, SparseRowBatch, TensorBatch, UpdateConfig, check_clip_value
from ..._quantize import dequantize, memory_order, store
from ..base import Backend
from ._rounding import stochastic_bf16

_UPDATES: Dict[str, Callable] = {}


def update_function(kind: str) -> Callable:
    """fusedopt.backends.reference.<kind>.update, imported on first use."""
    function = _UPDATES.get(kind)
    if function is None:
        function = _UPDATES[kind] = importlib.import_module(f"{__name__}.{kind}").update
    return function


def _in_opmath(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in LOW_PRECISION else t


def _transformed_grad(stored_grad: torch.Tensor, transform, i: int) -> torch.Tensor:
    """The grad the math sees (GradTransform's order), in the math type, a new tensor: unscaled,
    times max_grad_norm's coefficient (or, with clip_grad_norm_per_tensor, the tensor's own
    coefficient, which includes it), clamped to clip_grad_value."""
    grad = _in_opmath(stored_grad)
    if transform.grad_scale is not None:
        grad = grad / transform.grad_scale.to(grad.dtype)
    clip = transform.clip_coef if transform.tensor_clip is None else transform.tensor_clip[i]
    if clip is not None:
        grad = grad * clip.to(grad.dtype)
    if transform.clip_value is not None:  # clip_grad_value, after the norm's coefficient (GradTransform)
        grad = grad.clamp(-transform.clip_value, transform.clip_value)
    return grad if grad is not stored_grad else grad.clone()


def _dequantized(codes: List[torch.Tensor], scales: List[torch.Tensor], signed) -> List[torch.Tensor]:
    """The float32 values of 8-bit states, each in its codes' shape and layout (new tensors)."""
    values = []
    for c, absmax, is_signed in zip(codes, scales, signed):
        value = torch.empty_like(c, dtype=torch.float32, memory_format=torch.preserve_format)
        memory_order(value).copy_(dequantize(c, absmax, is_signed))
        values.append(value)
    return values


class ReferenceBackend(Backend):
    name = "reference"
    kernels = ("elementwise", "factored", "int8_states")

    def unusable_reason(self, device: torch.device) -> Optional[str]:
        return None  # plain PyTorch runs wherever the tensors are

    def update_factored(self, kind: str, batch, config) -> None:
        """A factored kind (Adafactor): fusedopt/backends/reference/<kind>.py's update_factored."""
        importlib.import_module(f"{__name__}.{kind}").update_factored(batch, config)

    def update(self, kind: str, batch: TensorBatch, config: UpdateConfig) -> None:
        transform = config.grad_transform
        check_clip_value(transform.clip_value)
        if transform.skips_step():
            return
        if config.lr_tensor is not None:  # never sent here (reads_lr_tensor is False), but honour it
            config = dataclasses.replace(config, lr=float(config.lr_tensor.item()), lr_tensor=None)
        update = update_function(kind)
        for i, (param, stored_grad) in enumerate(zip(batch.params, batch.grads)):
            step = None
            if batch.steps:
                batch.steps[i] += 1
                step = float(batch.steps[i].item())
            states: List[torch.Tensor] = [s[i] for s in batch.states]
            master = states.pop() if config.master_weights else None
            targets = [param if master is None else master, *states]
            values = [_in_opmath(t) for t in targets]
            if config.int8_states:
                values[1:] = _dequantized(states, [s[i] for s in batch.scales], config.int8_signed)
            grad = _transformed_grad(stored_grad, transform, i)
            if config.tensor_scale is not None:  # LAMB's trust ratio
                update(values[0], grad, values[1:], step, config, ratio=float(config.tensor_scale[i]))
            elif batch.scalars:
                update(values[0], grad, values[1:], step, config, [s[i] for s in batch.scalars])
            else:
                update(values[0], grad, values[1:], step, config)
            if config.int8_states:
                for codes, absmax, value, signed in zip(states, [s[i] for s in batch.scales], values[1:],
                                                        config.int8_signed):
                    store(value, codes, absmax, signed)
                targets, values = targets[:1], values[:1]
            if config.round_seed and master is None and param.dtype == torch.bfloat16:
                param.copy_(stochastic_bf16(values[0], config.round_seed, i, param))
                targets, values = targets[1:], values[1:]
            for target, value in zip(targets, values):
                if value is not target:
                    target.copy_(value)
            if transform.writes_grad():
                stored_grad.copy_(grad)
            if master is not None:
                param.copy_(master)

    def norms(self, kind: str, batch: TensorBatch, config: UpdateConfig) -> torch.Tensor:
        """The kind's `norm_terms(param, grad, states, step, config) -> (a, b)` (float64 sums,
        writing nothing) per tensor, for the coming step (counter + 1)."""
        terms = importlib.import_module(f"{__name__}.{kind}").norm_terms
        transform = config.grad_transform
        out = torch.zeros(len(batch), 2, dtype=torch.float64, device=batch.device)
        for i, (param, stored_grad) in enumerate(zip(batch.params, batch.grads)):
            step = float(batch.steps[i].item()) + 1 if batch.steps else None
            states = [s[i] for s in batch.states]
            master = states.pop() if config.master_weights else None
            value = _in_opmath(param if master is None else master)
            grad = _transformed_grad(stored_grad, transform, i)
            if config.int8_states:
                state_values = _dequantized(states, [s[i] for s in batch.scales], config.int8_signed)
            else:
                state_values = [_in_opmath(s) for s in states]
            a, b = terms(value, grad, state_values, step, config)
            out[i, 0], out[i, 1] = a, b
        return out

    def sparse_rows_unsupported(self, dtype: torch.dtype) -> Optional[str]:
        return None  # torch's operations in the param's dtype, as torch.optim.SparseAdam runs them

    def sparse_adam_update(self, batch: SparseRowBatch, hyper: Mapping[str, Any], lr: float) -> None:
        from .sparse_adam import update_rows

        for i, param in enumerate(batch.params):
            batch.steps[i] += 1
            maxes = batch.max_exp_avg_sqs[i] if batch.max_exp_avg_sqs is not None else None
            update_rows(param, batch.indices[i], batch.values[i], batch.exp_avgs[i], batch.exp_avg_sqs[i], maxes,
                        float(batch.steps[i].item()), hyper, lr)
