"""Runs one optimizer's backend op on a batch: the single place a config is built from a
group's fields, shared by the eager step and the torch.library op (fusedopt/_ops.py)."""
from __future__ import annotations

from typing import Any, Dict, List

from .._buckets import select
from ..backends.base import AdamConfig, Backend, RMSpropConfig, SGDConfig, TensorBatch

CONFIGS = {"adam": AdamConfig, "sgd": SGDConfig, "rmsprop": RMSpropConfig}


def run_update(kind: str, backend: Backend, batch: TensorBatch, fresh: List[int], fields: Dict[str, Any],
               **common) -> None:
    """`fields`: the optimizer's hyper-parameters; `common`: master_weights, grad_transform.
    `fresh`: batch indices whose state was just created (SGD's first-step rule needs them)."""
    config_class = CONFIGS[kind]
    op = getattr(backend, kind)
    if "first_step" not in config_class.__dataclass_fields__:
        op(batch, config_class(**fields, **common))
    elif not fresh or len(fresh) == len(batch):
        op(batch, config_class(first_step=bool(fresh), **fields, **common))
    else:  # some buffers are new (their params had no grad until now): one call per rule
        fresh_set = set(fresh)
        op(select(batch, fresh), config_class(first_step=True, **fields, **common))
        op(select(batch, [i for i in range(len(batch)) if i not in fresh_set]),
           config_class(first_step=False, **fields, **common))
