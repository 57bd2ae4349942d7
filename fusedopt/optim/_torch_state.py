"""A fusedopt checkpoint in torch.optim's layout, so a run can move to torch.optim."""
from __future__ import annotations

import copy
from typing import Any, Dict

import torch

from .._layout import LOW_PRECISION, MASTER_KEY
from .._quantize import CODE_DTYPE, SCALE_SUFFIX, STATE_CODES, dequantized_like, scale_key


def _own_group_keys() -> set:
    """fusedopt's own param-group keys (every optimizer class's `_own_setstate_defaults`)."""
    from ._base import FusedOptimizer

    keys, pending = set(), [FusedOptimizer]
    while pending:
        cls = pending.pop()
        keys.update(cls.__dict__.get("_own_setstate_defaults", {}))
        pending.extend(cls.__subclasses__())
    return keys


def to_torch_state_dict(state_dict: Dict[str, Any]) -> Dict[str, Any]:
    """`state_dict` (a fusedopt optimizer's) as the torch.optim optimizer of the same name
    writes one: state tensors kept in bfloat16 or float16 (state_dtype=torch.bfloat16, or
    16-bit params) become float32, 8-bit states (state_dtype="int8": uint8 codes beside their
    `<key>_absmax` block scales) are dequantized to float32 and their scales dropped, the fp32
    master copy and fusedopt's own param-group keys
    (backend, master_weights, max_grad_norm, clip_grad_value, state_dtype, ...) are left out.
    The input is not modified. Load the result into e.g. torch.optim.AdamW over the same
    params (torch casts states to each param's dtype as it loads)."""
    own = _own_group_keys()
    out = {key: copy.deepcopy(value) for key, value in state_dict.items() if key not in ("state", "param_groups")}
    out["state"] = {}
    for index, entry in state_dict["state"].items():
        if not isinstance(entry, dict):
            out["state"][index] = copy.deepcopy(entry)
            continue
        converted = {}
        for key, value in entry.items():
            if key == MASTER_KEY or (key.endswith(SCALE_SUFFIX) and _quantized(entry, key[:-len(SCALE_SUFFIX)])):
                continue
            if _quantized(entry, key):
                value = dequantized_like(value.detach(), entry[scale_key(key)].detach(), key)
            elif isinstance(value, torch.Tensor):
                value = value.detach().to(torch.float32 if value.dtype in LOW_PRECISION else value.dtype, copy=True)
            else:
                value = copy.deepcopy(value)
            converted[key] = value
        out["state"][index] = converted
    out["param_groups"] = [{key: copy.deepcopy(value) for key, value in group.items() if key not in own}
                           for group in state_dict["param_groups"]]
    return out


def _quantized(entry: dict, key: str) -> bool:
    """entry[key] holds 8-bit codes of a state this format knows, with its block scales beside it."""
    value = entry.get(key)
    return (key in STATE_CODES and isinstance(value, torch.Tensor) and value.dtype == CODE_DTYPE
            and isinstance(entry.get(scale_key(key)), torch.Tensor))
