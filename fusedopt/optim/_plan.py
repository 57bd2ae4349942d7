"""The step planner: what the eager step (FusedOptimizer.step) and the torch.compile path
(fusedopt/_ops.py) both decide the same way, so the two cannot drift apart:

- a group's hyper-parameters by name (`group_hyper`), coerced to the spec's types, and
  checked for a step (`step_hyper`);
- the state keys of a bucket, the master copy last (`bucket_state_keys`);
- how the learning rate travels (`learning_rate`);
- the split of a batch into new and seasoned state for a first-step rule, and the
  UpdateConfig each backend call gets (`run_update`).

The clip norm is shared through fusedopt/clip.py (Backend.sum_of_squares per bucket, then
global_norm and clip_coefficient), in bucket order on both paths.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .._buckets import select
from .._layout import (LOW_PRECISION, MASTER_KEY, GradTransform, TensorBatch, UpdateConfig, check_clip_options,
                       math_dtype)
from .._quantize import CODE_DTYPE, is_int8, is_signed, quantized_numel, scale_key
from ..backends.base import Backend
from ..clip import per_tensor_clip_coefficients
from ._spec import OptimizerSpec


def group_hyper(optimizer, group: dict) -> Dict[str, Any]:
    """The group's hyper-parameters as the kernels read them: by name, floats and bools."""
    return optimizer.spec.coerce(optimizer.hyper(group))


def step_hyper(optimizer, group: dict) -> Dict[str, Any]:
    """group_hyper for a step about to run, called for every group before any update (eager,
    lazy and compiled steps), with what may have changed since the group was added checked
    again: a string lr or hyper-parameter is a TypeError, as in torch's arithmetic; the clip
    options as when the group was added (a negative max_grad_norm would ascend the gradient);
    a bias-corrected beta moved to 1 or above (by hand, or by OneCycleLR/CyclicLR cycling
    momentum up to 1.0) as the constructor refuses it: torch divides by 1 - beta**t = 0 there
    (ZeroDivisionError) or takes the root of a negative number, and the kernels would fill the
    params with NaN or inf without a word. Also state_dtype and bf16_stochastic_round, against
    what the optimizer can keep (a hand-set "fp8", or 8-bit states for kinds that refuse them)."""
    check_clip_options(group)
    if isinstance(group["lr"], (str, bytes)):  # float() would read "0.1"; torch's arithmetic raises
        raise TypeError(f"{type(optimizer).__name__}: lr must be a number or a tensor, got {group['lr']!r}")
    hyper = group_hyper(optimizer, group)
    for name in optimizer.spec.bias_corrected if hyper.get("bias_correction", True) else ():  # LAMB's may be off
        if not hyper[name] < 1.0:
            raise ValueError(f"Invalid beta parameter at index {('beta1', 'beta2').index(name)}: {hyper[name]} "
                             f"(set after construction; the bias correction 1 - {name}**step needs it below 1)")
    optimizer._check_low_precision_options(group, hyper, params=False)
    return hyper


def uses_master(group: Mapping[str, Any], dtype: torch.dtype) -> bool:
    return bool(group.get("master_weights")) and dtype in LOW_PRECISION


def bf16_states(group: Mapping[str, Any]) -> bool:
    """The group keeps its state tensors in bfloat16 (state_dtype=torch.bfloat16)."""
    return group.get("state_dtype") == torch.bfloat16


def int8_states(group: Mapping[str, Any]) -> bool:
    """The group stores its large state tensors in 8 bits (state_dtype="int8")."""
    return is_int8(group.get("state_dtype"))


# The kernel shape (Backend.kernels) a bucket with 8-bit states needs: backends without it are
# refused by name and passed over by "auto" (fusedopt/backends/__init__.py).
INT8_KERNEL = "int8_states"


def quantizes(group: Mapping[str, Any], p: torch.Tensor) -> bool:
    """Whether param p of this group has 8-bit states (the group's state_dtype is "int8" and
    p has at least _quantize.MIN_QUANTIZED_NUMEL elements)."""
    return int8_states(group) and quantized_numel(p.numel())


def stochastic_round(group: Mapping[str, Any]) -> bool:
    """The group rounds its bf16 params stochastically (bf16_stochastic_round=True)."""
    return bool(group.get("bf16_stochastic_round", False))


def round_seed(stochastic: bool, dtype: torch.dtype, master_weights: bool) -> int:
    """The seed of one update call's stochastic rounding, or 0 (round to nearest even): drawn
    from torch's default CPU generator (a CPU tensor, so no device sync, and reproducible
    under torch.manual_seed) only when the call rounds bf16 params without a master copy, so
    runs without it draw nothing and keep torch's random stream as it was."""
    if not stochastic or dtype != torch.bfloat16 or master_weights:
        return 0
    return int(torch.randint(1, 2**62, (1,)).item())


def bucket_state_dtype(group: Mapping[str, Any], dtype: torch.dtype, quantized: bool = False) -> Optional[torch.dtype]:
    """The dtype of a bucket's state tensors (the master copy, always float32, excepted):
    uint8 (the codes) for a bucket with 8-bit states, bfloat16 with state_dtype=torch.bfloat16,
    float32 with master weights and for the small tensors of an "int8" group (float32_states),
    else None (the param's dtype). (The step checks first that the group's options fit the
    bucket: _checks.check_low_precision_fits.)"""
    if quantized:
        return CODE_DTYPE
    if bf16_states(group):
        return torch.bfloat16
    return torch.float32 if uses_master(group, dtype) or float32_states(group, dtype, quantized) else None


def float32_states(group: Mapping[str, Any], dtype: torch.dtype, quantized: bool) -> bool:
    """A bucket of 16-bit params without a master copy whose states are nevertheless float32:
    the small tensors of an "int8" group (under 4,096 elements; `quantized` False), as
    bitsandbytes keeps them (issue 13); UpdateConfig.float32_states."""
    return int8_states(group) and not quantized and dtype in LOW_PRECISION and not uses_master(group, dtype)


def bucket_scale_keys(state_keys: Tuple[str, ...], quantized: bool) -> Tuple[str, ...]:
    """The block-scale keys of a bucket's states (the master copy has none); () unless quantized."""
    return tuple(scale_key(key) for key in state_keys if key != MASTER_KEY) if quantized else ()


def bucket_state_keys(spec: OptimizerSpec, hyper: Mapping[str, Any], master: bool) -> Tuple[str, ...]:
    """State tensor names in table order: the spec's for these options, then the master copy."""
    keys = spec.state_keys(hyper)
    return (*keys, MASTER_KEY) if master else tuple(keys)


def learning_rate(lr, backend: Backend, device: torch.device) -> Tuple[float, Optional[torch.Tensor]]:
    """(lr, lr_tensor) for an UpdateConfig: a tensor lr on the params' device goes to a
    backend that reads it as a float64 tensor, with no host sync (a float32 one is converted
    on the device); anything else is read here."""
    if not isinstance(lr, torch.Tensor):
        return float(lr), None
    if backend.reads_lr_tensor and lr.device == device and lr.numel() == 1 and lr.is_floating_point():
        return math.nan, lr.detach().to(torch.float64).reshape(())
    return float(lr.item()), None


def run_update(spec: OptimizerSpec, backend: Backend, batch: TensorBatch, fresh: Sequence[int],
               hyper: Mapping[str, Any], lr, master_weights: bool, grad_transform: GradTransform,
               clip_norm_per_tensor: Optional[float] = None, bf16_states: bool = False,
               int8_states: bool = False, stochastic: bool = False, float32_states: bool = False) -> None:
    """One backend call per batch, or two when only some of its state is new and the
    optimizer has a first-step rule (`fresh`: batch indices whose state was just created).

    clip_norm_per_tensor (clip_grad_norm_per_tensor): first one multi-tensor reduction of the
    batch's grads (Backend.sum_of_squares_per_tensor), whose per-tensor coefficients the
    kernels apply as they read each grad (GradTransform.tensor_clip). A kind with a norm pass
    (LAMB): Backend.update_with_norm_pass, the norms, then the per-tensor trust ratio
    ||p|| / ||u|| as UpdateConfig.tensor_scale. All on the device: nothing waits on the host.

    stochastic (bf16_stochastic_round): each backend call of a bf16 batch without master
    weights gets a seed of its own (`round_seed`: one per bucket per step, two when the
    first-step rule splits the bucket), the tensors numbered within that call."""
    lr, lr_tensor = learning_rate(lr, backend, batch.device)
    if clip_norm_per_tensor is not None and len(batch):
        sums = backend.sum_of_squares_per_tensor(batch.grads)
        coefs = per_tensor_clip_coefficients(sums, clip_norm_per_tensor, grad_transform.grad_scale,
                                             grad_transform.clip_coef, math_dtype(batch.dtype))
        grad_transform = dataclasses.replace(grad_transform, tensor_clip=coefs.to(batch.device))

    signed = tuple(is_signed(key) for key in spec.state_keys(hyper)) if int8_states else ()

    def call(part: TensorBatch, first_step: bool, transform: GradTransform) -> None:
        config = UpdateConfig(hyper, lr, lr_tensor, first_step, master_weights, transform, bf16_states=bf16_states,
                              float32_states=float32_states, int8_states=int8_states, int8_signed=signed,
                              round_seed=round_seed(stochastic, part.dtype, master_weights))
        if spec.norm_pass and len(part):
            backend.update_with_norm_pass(spec.kind, part, config)
        else:
            backend.update(spec.kind, part, config)

    if not spec.first_step_rule or not fresh or len(fresh) == len(batch):
        call(batch, spec.first_step_rule and bool(fresh), grad_transform)
    else:
        fresh_set = set(fresh)
        for indices, first in ((list(fresh), True), ([i for i in range(len(batch)) if i not in fresh_set], False)):
            transform = grad_transform
            if transform.tensor_clip is not None:
                transform = dataclasses.replace(transform, tensor_clip=transform.tensor_clip[indices].contiguous())
            call(select(batch, indices), first, transform)


@torch.compiler.disable
def _create_state_eagerly(init, p: torch.Tensor, s: dict) -> None:
    """init(p, s) outside dynamo: traced, it compiled once per param (its guards hold the
    param's identity) until dynamo's recompile limit, on the first compiled step."""
    init(p, s)


def split_fresh(params: Sequence[torch.Tensor], state: Mapping, keys: Sequence[str], step_counter: bool,
                init) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """(fresh, seasoned) params for the compiled path: `init` fills what is missing first;
    the eager path learns the same split from Bucket.batch."""
    fresh, seasoned = [], []
    for p in params:
        s = state[p]
        if any(key not in s for key in keys) or (step_counter and "step" not in s):
            _create_state_eagerly(init, p, s)
            fresh.append(p)
        else:
            seasoned.append(p)
    return fresh, seasoned


def return_copied_grads(grads: List[torch.Tensor], used: List[torch.Tensor]) -> None:
    """The kernels wrote the unscaled grads into the tensors they read (GradTransform); where
    that was a copy in the param's layout (a grad laid out unlike its param, see
    Bucket._validated_grads), put the values into the user's grad."""
    for grad, written in zip(grads, used):
        if written is not grad:
            grad.copy_(written)
