"""The lookup tables the compiled kernels quantize 8-bit states with (state_dtype="int8").

fusedopt/_quantize.py defines a value's code as the number of decision boundaries strictly
below q = x / absmax (a binary search over 255 boundaries: 8 dependent loads per element).
The kernels find the same number with one table load: q's float32 bits pick a bucket, and
the bucket's entry holds the number of boundaries below every float32 in it and the one
boundary that may lie inside it (at most one does, checked here when the tables are built).

A bucket is q's sign, exponent and the top 7 bits of its mantissa (the upper half of q's
bits: 2^-8 relative width, where the closest boundaries of either code are 0.7% apart).
Magnitudes below 2^-26 (exponents below MIN_EXPONENT) fill the first 128 buckets of their
sign, all alike: every boundary is at least 5e-8 from 0. |q| <= 1; a NaN q (code 0 by the specification) is clamped into its
sign's last bucket, which no such q reaches, and whose entry is 0. absmax 0 (every code at 0.0)
is handled by the kernels before any lookup.

Entry (int32): bits 0-15 the low half of the inside boundary's bits, bits 16-23 the count of
boundaries below the bucket, bit 24 whether a boundary lies inside. An inside boundary b has
q's upper half, so b < q compares the low halves: as integers for positive q, reversed for
negative q (a larger magnitude is a smaller number). So

    code = count + (inside and (low(q) > low(b) if q >= 0 else low(b) > low(q)))

One 32-bit table load per element is what AVX2 gathers do, so the CPU loop vectorises.

Both codes' tables travel to the kernels as one uint8 tensor (native_tables), laid out as
csrc/include/fusedopt/int8_states.h reads it: per code (unsigned first, then signed) the 256
float32 values, then the BUCKETS entries.
"""
from __future__ import annotations

import functools
from typing import Dict, Tuple

import torch

from ._quantize import code_boundaries, code_table

MIN_EXPONENT = 101        # float32 biased exponent of 2^-26; below it, one bucket per sign
MANTISSA_BITS = 7         # mantissa bits a bucket keeps
BUCKETS_PER_SIGN = (127 - MIN_EXPONENT + 2) << MANTISSA_BITS  # the tiny bucket's row, then 2^-26 .. 2^0
BUCKETS = 2 * BUCKETS_PER_SIGN
CODE_BYTES = 256 * 4 + 4 * BUCKETS  # one code's values and bucket entries


def bucket(bits: torch.Tensor) -> torch.Tensor:
    """The bucket of each float32 given by its bits (int64 tensor of 0 .. 2^32 - 1), as the
    kernels compute it (csrc/include/fusedopt/int8_states.h's code_bucket): the magnitude's
    upper bits, those of exponents below MIN_EXPONENT - 1 raised to it, relative to it; the
    first 128 buckets of a sign are all tiny (|q| < 2^-26) and alike."""
    upper = bits >> 16
    floor = (MIN_EXPONENT - 1) << MANTISSA_BITS
    local = ((upper & 0x7FFF).clamp(min=floor) - floor).clamp(max=BUCKETS_PER_SIGN - 1)
    return local + (upper >> 15) * BUCKETS_PER_SIGN


def _floats(bits) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)


def _bucket_ends() -> Tuple[torch.Tensor, torch.Tensor]:
    """(lowest, highest) float32 of every bucket, in bucket order."""
    low_mag, high_mag = [], []  # bit patterns of each bucket's smallest and largest magnitude
    tiny_top = (MIN_EXPONENT << 23) - 1
    for local in range(BUCKETS_PER_SIGN):
        if local < (1 << MANTISSA_BITS):  # tiny: exponent MIN_EXPONENT - 1 and below
            low_mag.append(0)
            high_mag.append(tiny_top)
        else:
            exponent = (local >> MANTISSA_BITS) + MIN_EXPONENT - 1
            first = (exponent << 23) | ((local & ((1 << MANTISSA_BITS) - 1)) << (23 - MANTISSA_BITS))
            low_mag.append(first)
            high_mag.append(first | ((1 << (23 - MANTISSA_BITS)) - 1))
    positive_low, positive_high = _floats(low_mag), _floats(high_mag)
    sign = 1 << 31
    negative_low = _floats([sign | b for b in high_mag])   # most negative: the largest magnitude
    negative_high = _floats([sign | b for b in low_mag])
    return torch.cat([positive_low, negative_low]), torch.cat([positive_high, negative_high])


@functools.lru_cache(maxsize=None)
def bucket_entries(signed: bool) -> torch.Tensor:
    """int32 [BUCKETS]: each bucket's entry (module docstring). Raises if a bucket holds more
    than one boundary of the code (the kernels compare with one)."""
    boundaries = code_boundaries(signed)
    lowest, highest = _bucket_ends()
    below_lowest = torch.searchsorted(boundaries, lowest, right=False)
    below_highest = torch.searchsorted(boundaries, highest, right=False)
    inside = below_highest - below_lowest
    if bool((inside > 1).any()):
        raise AssertionError("a bucket holds two boundaries of the 8-bit code; keep more mantissa bits")
    padded = torch.cat([boundaries, boundaries[-1:]])  # any value: read only where inside is 0
    boundary_bits = padded[below_lowest].view(torch.int32).long() & 0xFFFFFFFF
    bucket_bits = torch.cat([lowest, highest]).view(torch.int32).long() & 0xFFFF0000
    if bool(((boundary_bits & 0xFFFF0000) != bucket_bits[:BUCKETS])[inside == 1].any()):
        raise AssertionError("an inside boundary does not share its bucket's upper bits")
    entries = (boundary_bits & 0xFFFF) * inside | below_lowest << 16 | inside << 24
    # each sign's last bucket ([1.99, 2) in magnitude) is where code_bucket clamps a NaN (and
    # Inf) q, which no |q| <= 1 reaches: entry 0 gives NaN code 0 without a test
    entries[BUCKETS_PER_SIGN - 1] = entries[BUCKETS - 1] = 0
    return entries.to(torch.int32)


@functools.lru_cache(maxsize=None)
def _host_tables() -> torch.Tensor:
    parts = []
    for signed in (False, True):
        parts += [code_table(signed).view(torch.uint8), bucket_entries(signed).view(torch.uint8)]
    tables = torch.cat(parts)
    assert tables.numel() == 2 * CODE_BYTES
    return tables


_on_device: Dict[torch.device, torch.Tensor] = {}


def native_tables(device: torch.device) -> torch.Tensor:
    """Both codes' tables as one uint8 tensor on `device` (kept for the process's life)."""
    tables = _on_device.get(device)
    if tables is None:
        tables = _on_device[device] = _host_tables().to(device)
    return tables


def code_of(q: torch.Tensor, signed: bool) -> torch.Tensor:
    """The kernels' lookup, in PyTorch (for tests): codes of finite float32 `q` in [-1, 1]."""
    entries = bucket_entries(signed).long() & 0xFFFFFFFF
    bits = q.contiguous().view(torch.int32).long() & 0xFFFFFFFF
    entry = entries[bucket(bits)]
    low, boundary_low = bits & 0xFFFF, entry & 0xFFFF
    above = torch.where(bits >> 31 == 1, boundary_low > low, low > boundary_low).long()
    return ((entry >> 16) & 0xFF) + ((entry >> 24) & above)
