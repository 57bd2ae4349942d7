"""Guarded memory for the fuzzer: tensors allocated as views into byte buffers whose other
bytes hold a pattern, so that a write outside a tensor (past its end, into a gap) shows;
and what can be read safely of a tensor whose storage may have been shrunk or freed."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

GUARD = 32  # bytes of pattern before, between and after the tensors of a buffer
PATTERN = 0xA5


def span_elements(shape, strides) -> int:
    """Elements from the first to one past the last element a layout addresses."""
    if any(s == 0 for s in shape):
        return 0
    return 1 + sum((size - 1) * stride for size, stride in zip(shape, strides))


def contiguous_strides(shape) -> Tuple[int, ...]:
    strides, running = [], 1
    for size in reversed(shape):
        strides.append(running)
        running *= max(size, 1)
    return tuple(reversed(strides))


def layout_strides(shape, layout: str) -> Tuple[int, ...]:
    if layout == "permuted" and len(shape) >= 2:  # dims in reverse memory order, like .t()
        return tuple(reversed(contiguous_strides(tuple(reversed(shape)))))
    strides = contiguous_strides(shape)
    if layout == "strided":
        return tuple(2 * s for s in strides)
    if layout == "expanded" and shape:
        return (0,) + strides[1:]
    return strides


def element_offsets(shape, strides) -> torch.Tensor:
    if span_elements(shape, strides) == 0:
        return torch.zeros(0, dtype=torch.int64)
    return torch.as_strided(torch.arange(span_elements(shape, strides)), shape, strides).reshape(-1)


def storage_fits(t: torch.Tensor) -> bool:
    """Whether every element of t lies inside its storage's current allocation (safe to read)."""
    if t.layout != torch.strided:
        return True
    extent = span_elements(t.shape, t.stride())
    if extent == 0:
        return True
    storage = t.untyped_storage()
    return storage.data_ptr() != 0 and (t.storage_offset() + extent) * t.element_size() <= storage.nbytes()


def byte_span(t: torch.Tensor) -> Tuple[int, int]:
    return t.data_ptr(), t.data_ptr() + span_elements(t.shape, t.stride()) * t.element_size()


class Arena:
    """Allocates tensors as views into byte buffers whose every other byte holds PATTERN."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator
        self.buffers: List[Tuple[torch.UntypedStorage, torch.Tensor]] = []  # (storage, guard byte indices)

    def allocate(self, pieces) -> List[torch.Tensor]:
        """pieces: (dtype, shape, strides, pad); returns one tensor per piece, in one storage,
        each at an offset `pad` elements past the previous one's guard, filled with values."""
        starts, cursor = [], GUARD
        for dtype, shape, strides, pad in pieces:
            size = element_size(dtype)
            start = max(0, cursor + pad * size)
            start = -(-start // size) * size
            starts.append(start)
            cursor = max(cursor, start + span_elements(shape, strides) * size + GUARD)
        buffer = torch.full((cursor,), PATTERN, dtype=torch.uint8)
        storage = buffer.untyped_storage()
        owned = torch.zeros(cursor, dtype=torch.bool)
        tensors = []
        for (dtype, shape, strides, _), start in zip(pieces, starts):
            size = element_size(dtype)
            t = torch.empty(0, dtype=dtype).set_(storage, start // size, shape, strides)
            extent = span_elements(shape, strides)
            if extent and extent == t.numel():  # dense: elements fill [start, start + extent) once each
                owned[start:start + extent * size] = True
                torch.empty(0, dtype=dtype).set_(storage, start // size, (extent,), (1,)).copy_(
                    self.values(dtype, (extent,)))
            elif extent:  # gaps (strided) or repeats (expanded): the same values at the elements themselves
                elements = element_offsets(shape, strides).unique()
                owned[(start + elements[:, None] * size + torch.arange(size)).reshape(-1)] = True
                flat = torch.empty(0, dtype=dtype).set_(storage, start // size, (extent,), (1,))
                flat[elements] = self.values(dtype, (elements.numel(),))
            tensors.append(t)
        self.buffers.append((storage, (~owned).nonzero().flatten()))
        return tensors

    def tensor(self, dtype, shape, strides=None, pad: int = 1) -> torch.Tensor:
        strides = contiguous_strides(shape) if strides is None else tuple(strides)
        return self.allocate([(dtype, tuple(shape), strides, pad)])[0]

    def values(self, dtype, shape) -> torch.Tensor:
        if dtype.is_complex:
            return torch.randn(shape, generator=self.generator, dtype=dtype)
        if not dtype.is_floating_point:
            return torch.randint(-3, 4, shape, generator=self.generator, dtype=dtype)
        return torch.randn(shape, generator=self.generator, dtype=torch.float64).to(dtype)

    def clobbered(self) -> Optional[str]:
        """Where a guard byte no longer holds the pattern, if anywhere (reads only what each
        storage still holds, so a shrunk storage is checked up to its new size)."""
        for index, (storage, guard) in enumerate(self.buffers):
            now = torch.empty(0, dtype=torch.uint8).set_(storage)
            if guard[-1] >= now.numel():
                guard = guard[guard < now.numel()]
            bad = guard[now[guard] != PATTERN]
            if bad.numel():
                return (f"buffer {index}: guard bytes {bad[:8].tolist()} (of {now.numel()} bytes) changed to "
                        f"{now[bad[:8]].tolist()}")
        return None


def element_size(dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()
