"""Lazy mode (paddle's Adam `lazy_mode`, torch.optim.SparseAdam): param groups whose
sparse COO grads update only the rows they hold, one backend call per device and dtype.

What lazy mode does with Adam's options, applied to the present rows only (absent rows
keep every bit of their param and state): maximize negates the grad; Adam's L2 weight
decay adds wd*p to the grad rows; AdamW's decoupled decay scales the present rows by
1 - lr*wd (1 - wd with weight_decay_mode="absolute"); amsgrad keeps max_exp_avg_sq at
the present rows; optimized_update picks SparseAdam's bias-correction form (eps added to
sqrt(v) unscaled), the default torch Adam's. The moving averages use SparseAdam's
arithmetic (m += (g - m)*(1-b1)), which equals Adam's up to rounding.

Refused with a clear error (they would need all rows, or grads in a dense form):
dense grads (as torch.optim.SparseAdam refuses them), max_grad_norm, clip_grad_value,
master_weights, state_dtype=torch.bfloat16, GradScaler's unscale inside step, complex params.
Under torch.compile the step runs eagerly, outside the graph (fusedopt/optim/_ops.py).
"""
from __future__ import annotations

from typing import List, Tuple

import torch

from .. import backends
from .._layout import SparseRowBatch
from .._sparse_rows import group_by_device_and_dtype, sparse_row_batch

Prepared = List[Tuple[object, SparseRowBatch]]


def is_lazy(group: dict) -> bool:
    return bool(group.get("lazy_mode"))


def check_lazy_group(group: dict, name: str) -> None:
    """The options lazy mode cannot honour, refused when the group is added and at each step."""
    for key in ("max_grad_norm", "clip_grad_value", "clip_grad_norm_per_tensor"):
        if group.get(key) is not None:
            raise ValueError(f"{name}: {key} is not supported in lazy mode (sparse grads); clip the grads "
                             "before step() instead")
    if group.get("master_weights"):
        raise ValueError(f"{name}: master_weights is not supported in lazy mode (sparse grads)")
    if group.get("state_dtype") not in (None, torch.float32):
        raise ValueError(f"{name}: state_dtype={group['state_dtype']!r} is not supported in lazy mode (sparse grads): "
                         "its sparse-row kernels keep the states in the param's dtype; use state_dtype=None")
    if group.get("bf16_stochastic_round"):
        raise ValueError(f"{name}: bf16_stochastic_round=True is not supported in lazy mode (sparse grads): its "
                         "sparse-row kernels round to nearest")


def prepare_lazy_groups(optimizer, groups: List[Tuple[dict, dict]]) -> List[Prepared]:
    """Every lazy group's batches, validated, with lazy state created: nothing is updated
    unless every grad of every lazy group can be. groups: (group, its step_hyper)."""
    name = type(optimizer).__name__
    if getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None:
        raise RuntimeError(f"{name}: lazy mode (sparse grads) cannot unscale grads inside step(); call "
                           "scaler.unscale_(optimizer) first, or use GradScaler without this optimizer's fused path")
    if any(g.get("max_grad_norm") is not None for g in optimizer.param_groups):
        raise RuntimeError(f"{name}: max_grad_norm takes the norm over every group's grads, which lazy mode's "
                           "sparse grads do not join; clip before step() instead")
    with_grads = []
    for group, _ in groups:
        check_lazy_group(group, name)
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            if p.grad.layout != torch.sparse_coo:
                raise RuntimeError(optimizer._dense_grad_error)
            if p.is_complex():
                raise RuntimeError(f"{name}: lazy mode (sparse grads) does not support complex params")
        with_grads.append(params)
    prepared = []
    for (group, hyper), params in zip(groups, with_grads):
        batches = []
        for positions in group_by_device_and_dtype(params):
            members = [params[i] for i in positions]
            init = optimizer._init_state(group, members[0].dtype, hyper)
            states = []
            for p in members:
                state = optimizer.state[p]
                init(p, state)
                states.append(state)
            backend = backends.resolve_sparse_rows(group["backend"], members[0].device, members[0].dtype)
            batches.append((backend, sparse_row_batch(members, states, hyper["amsgrad"], name)))
        prepared.append(batches)
    return prepared


def run_lazy_groups(groups: List[Tuple[dict, dict]], prepared: List[Prepared]) -> None:
    for (group, hyper), batches in zip(groups, prepared):
        lr = float(group["lr"])
        for backend, batch in batches:
            backend.sparse_adam_update(batch, hyper, lr)
