"""One C++ pass that tells whether many tensors still have the metadata they had.

A bucket's per-step check reads, for every param and grad, its dtype, byte count and
layout: each read is a Python call of about 50 ns, and a step over 1,000 small params
reads thousands of them. torch's TensorGuards (the check torch.compile runs before every
call of a compiled function) compares, per tensor and in C++, the Python type, dtype,
device, dispatch keys, requires_grad, shape and strides against the tensors it was made
from, for about the cost of one such read.

Only its True is trusted: True means each tensor has the dtype, device, shape and strides
its model had. False may also mean only that the thread-local dispatch state differs
(under autocast or inference_mode, say), so a caller reads the facts one by one then, as
it does wherever this torch has no usable TensorGuards (it is a private API: the guard is
used only after a self-test shows it behaves as described here).
"""
from typing import Callable, List, Optional

import torch

Guard = Callable[[List[torch.Tensor]], bool]

_usable: Optional[bool] = None  # decided by the self-test on first use


def _make(tensors: List[torch.Tensor]):
    from torch._C._dynamo.guards import TensorGuards

    return TensorGuards(*tensors, dynamic_dims_sizes=None, dynamic_dims_strides=None).check


def _passes_self_test() -> bool:
    """Whether the guard says True for the same metadata and False for each change the
    buckets rely on it to see."""
    try:
        base = torch.zeros(2, 4)
        check = _make([base, base.t()])
        ok = check(torch.ones(2, 4), torch.ones(2, 4).t()) is True
        changed = (
            (torch.zeros(2, 4, dtype=torch.float64), base.t()),  # dtype
            (torch.zeros(8), base.t()),  # shape, same element count
            (base, torch.zeros(4, 2)),  # strides, same shape
            (base, torch.zeros(2, 4).to_sparse().t()),  # layout
            (base.to("meta"), base.t()),  # device
        )
        return ok and all(check(*tensors) is False for tensors in changed)
    except Exception:  # any other signature or behaviour: not the guard described above
        return False


def metadata_guard(tensors: List[torch.Tensor]) -> Optional[Guard]:
    """A function of a list of tensors as long as `tensors`: True only if each has the
    dtype, device, shape and strides of its counterpart here. None where this torch has
    no usable guard, or the tensors are not plain strided tensors."""
    global _usable
    if _usable is None:
        _usable = _passes_self_test()
    if not _usable or not tensors:
        return None
    try:
        check = _make(tensors)
    except Exception:  # a tensor the guard cannot describe (a sparse one has no strides)
        return None

    def holds(current: List[torch.Tensor]) -> bool:
        try:
            return check(*current)
        except Exception:  # a tensor that cannot be compared (no strides): not the same
            return False

    return holds
