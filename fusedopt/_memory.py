"""Facts about a tensor's memory that decide whether a kernel may read it by address: a
leaf module (torch only), so the buckets, the backends and clip_grad_norm_ share it."""
from __future__ import annotations

from typing import Optional

import torch


def is_dense(t: torch.Tensor) -> bool:
    """True when t's elements fill a gap-free block of memory exactly once (any dim order)."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def storage_problem(t: torch.Tensor) -> Optional[str]:
    """Why the memory of dense tensor t does not lie inside its storage as it is now, or
    None. A storage can be resized under a tensor (`untyped_storage().resize_(0)`, as
    FSDP-style code does to free memory): the tensor's shape then promises bytes that are
    gone, and a kernel reading it by address would read freed memory. A negated view
    (torch._neg_view, the .imag of a conjugated complex tensor) holds its values' opposites
    in memory, which a kernel reading it by address would take for the values."""
    if t.is_neg():
        return ("is a negated view (torch._neg_view, or .imag of a conjugated complex tensor), whose memory holds "
                "the opposites of its values; resolve it first (.resolve_neg())")
    if t.numel() == 0:
        return None
    end = (t.storage_offset() + t.numel()) * t.element_size()  # dense: [offset, offset + numel)
    held = t.untyped_storage().nbytes()
    if end > held:
        return (f"reaches byte {end} of its storage, which holds {held} bytes (its storage was resized or "
                "freed in place)")
    return None


def overlaps_itself(t: torch.Tensor) -> bool:
    """True when two elements of t share memory (an expanded view): it cannot be written."""
    reach = 0
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz > 1):
        if stride <= reach:
            return True
        reach += (size - 1) * stride
    return False


def storage_problem_strided(t: torch.Tensor) -> Optional[str]:
    """storage_problem for any strided tensor (a broadcast or sliced grad torch will copy)."""
    if t.numel() == 0:
        return None
    last = t.storage_offset() + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    end = (last + 1) * t.element_size()
    held = t.untyped_storage().nbytes()
    if end > held:
        return (f"reaches byte {end} of its storage, which holds {held} bytes (its storage was resized or "
                "freed in place)")
    return None
