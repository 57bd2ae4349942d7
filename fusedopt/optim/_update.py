"""Runs one optimizer's backend op on a batch: the single place a config is built from a
group's fields, shared by the eager step and the torch.library op (fusedopt/_ops.py)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch

from .._buckets import select
from ..backends.base import AdamConfig, Backend, RMSpropConfig, SGDConfig, TensorBatch

CONFIGS = {"adam": AdamConfig, "sgd": SGDConfig, "rmsprop": RMSpropConfig}


def learning_rate(lr, backend: Backend, device: torch.device) -> Tuple[float, Optional[torch.Tensor]]:
    """(lr, lr_tensor) for a config (see LR_TENSOR in backends/base.py): a tensor lr on the
    params' device goes to a backend that reads it as a float64 tensor, with no host sync
    (a float32 one is converted on the device); anything else is read here."""
    if not isinstance(lr, torch.Tensor):
        return float(lr), None
    if backend.reads_lr_tensor and lr.device == device and lr.numel() == 1 and lr.is_floating_point():
        return math.nan, lr.detach().to(torch.float64).reshape(())
    return float(lr.item()), None


def run_update(kind: str, backend: Backend, batch: TensorBatch, fresh: List[int], fields: Dict[str, Any],
               **common) -> None:
    """`fields`: the optimizer's hyper-parameters (`lr` a number or a one-element tensor);
    `common`: master_weights, grad_transform. `fresh`: batch indices whose state was just
    created (SGD's first-step rule needs them)."""
    config_class = CONFIGS[kind]
    op = getattr(backend, kind)
    lr, lr_tensor = learning_rate(fields["lr"], backend, batch.device)
    fields = dict(fields, lr=lr)
    common = dict(common, lr_tensor=lr_tensor)
    if "first_step" not in config_class.__dataclass_fields__:
        op(batch, config_class(**fields, **common))
    elif not fresh or len(fresh) == len(batch):
        op(batch, config_class(first_step=bool(fresh), **fields, **common))
    else:  # some buffers are new (their params had no grad until now): one call per rule
        fresh_set = set(fresh)
        op(select(batch, fresh), config_class(first_step=True, **fields, **common))
        op(select(batch, [i for i in range(len(batch)) if i not in fresh_set]),
           config_class(first_step=False, **fields, **common))
