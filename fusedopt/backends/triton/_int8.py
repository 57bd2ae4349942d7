"""8-bit states (state_dtype="int8") in the Triton kernels: fusedopt/_quantize.py's format
with fusedopt/_code_lookup.py's one-load lookup, the operations of
csrc/include/fusedopt/int8_states.h restated for Triton.

The code tables are `_code_lookup.native_tables(device)`, the bytes the C++ kernels read,
viewed as int32 (`code_tables_on`): per code (unsigned, then signed) the 256 float32 values,
then one int32 entry per bucket (the count of boundaries below the bucket, whether one lies
inside it, and that boundary's low 16 bits).

- Dequantize (`dequantized`): `values[code] * absmax`, one float32 multiplication, as
  `_quantize.dequantize`.
- Quantize, one row of the kernel's block per 256-element quantization block:
  `block_absmax` is max |x| over the row's elements in the tensor, taken on the magnitudes'
  float32 bits as int32 (for non-negative floats the integer order is the float order, and
  every NaN is above +inf), so a NaN anywhere makes the absmax NaN, as torch.amax, in the
  interpreter and the compiled kernel alike (a float tl.max need not propagate NaN on a
  GPU); a NaN absmax is stored as the quiet NaN 0x7fc00000, as the C++ kernels store it.
  `codes_of`: q = x / absmax (IEEE division), its bucket (`_code_lookup.bucket`, the same
  formula), the bucket's entry, `count + (inside and b < q)` with b < q decided on the low
  16 bits (b shares q's upper 16); NaN q gets code 0 and an all-zero block (absmax 0) the
  code of 0.0. The bucket formula maps every bit pattern into the table (exponents above
  127 are clamped), so even masked lanes and NaN q read inside it; their codes are then
  replaced or not stored.
"""
from __future__ import annotations

from typing import Dict

import torch
import triton
import triton.language as tl

from ..._code_lookup import BUCKETS_PER_SIGN, CODE_BYTES, MANTISSA_BITS, MIN_EXPONENT, native_tables
from ..._quantize import BLOCK_SIZE, zero_code
from ._math import div

QBLOCK = tl.constexpr(BLOCK_SIZE)  # elements per quantization block (one absmax)
assert CODE_BYTES % 4 == 0
_ROW = tl.constexpr(CODE_BYTES // 4)  # one code's int32 entries in code_tables_on: 256 values, then the buckets
_ENTRIES = tl.constexpr(256)
_BUCKETS_PER_SIGN = tl.constexpr(BUCKETS_PER_SIGN)
_MIN_EXPONENT = tl.constexpr(MIN_EXPONENT)
_MANTISSA_SHIFT = tl.constexpr(23 - MANTISSA_BITS)
_MANTISSA_MASK = tl.constexpr((1 << MANTISSA_BITS) - 1)
_MANTISSA_BITS = tl.constexpr(MANTISSA_BITS)
_ZERO_SIGNED = tl.constexpr(zero_code(True))
_ZERO_UNSIGNED = tl.constexpr(zero_code(False))
_QUIET_NAN = tl.constexpr(0x7FC00000)

_tables_on: Dict[torch.device, torch.Tensor] = {}


def code_tables_on(device: torch.device) -> torch.Tensor:
    """native_tables(device) as int32 (kept for the process's life): the kernels index it in
    4-byte entries."""
    tables = _tables_on.get(device)
    if tables is None:
        tables = _tables_on[device] = native_tables(device).view(torch.int32)
    return tables


@triton.jit
def code_tables(tables_ptr, SIGNED: tl.constexpr):
    """(values, bucket entries) pointers of the signed or unsigned code in code_tables_on."""
    base = tables_ptr.to(tl.pointer_type(tl.int32))
    if SIGNED:
        base = base + _ROW
    return base.to(tl.pointer_type(tl.float32)), base + _ENTRIES


@triton.jit
def dequantized(codes_ptr, offsets, mask, absmax, values_ptr):
    """float32 values of the codes at `offsets`: values[code] * absmax (absmax broadcast to
    the codes' shape); masked lanes read code 0 (a value never stored)."""
    if mask is not None:
        codes = tl.load(codes_ptr + offsets, mask=mask, other=0)
    else:
        codes = tl.load(codes_ptr + offsets)
    return tl.load(values_ptr + codes.to(tl.int32)) * absmax


@triton.jit
def block_absmax(x, mask):
    """max |x| of each row of x ([rows, QBLOCK] float32) over its lanes in `mask` (None: all),
    as float32 [rows, 1]; the quiet NaN if any of them is NaN."""
    magnitude = x.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    if mask is not None:
        magnitude = tl.where(mask, magnitude, 0)
    largest = tl.max(magnitude, axis=1)
    largest = tl.where(largest > 0x7F800000, _QUIET_NAN, largest)
    return largest.to(tl.float32, bitcast=True)[:, None]


@triton.jit
def codes_of(x, absmax, entries_ptr, SIGNED: tl.constexpr):
    """The uint8 codes of float32 x in blocks of scale `absmax` (broadcast to x)."""
    q = div(x, tl.broadcast_to(absmax, x.shape))
    bits = q.to(tl.int32, bitcast=True)
    negative = bits < 0
    exponent = tl.minimum((bits >> 23) & 0xFF, 127)
    mantissa = (bits >> _MANTISSA_SHIFT) & _MANTISSA_MASK
    local = tl.where(exponent < _MIN_EXPONENT, 0, ((exponent - (_MIN_EXPONENT - 1)) << _MANTISSA_BITS) | mantissa)
    entry = tl.load(entries_ptr + (tl.where(negative, _BUCKETS_PER_SIGN, 0) + local))
    low = bits & 0xFFFF
    boundary_low = entry & 0xFFFF
    above = tl.where(negative, boundary_low > low, low > boundary_low).to(tl.int32)
    code = ((entry >> 16) & 0xFF) + ((entry >> 24) & above)
    code = tl.where(q != q, 0, code)
    if SIGNED:
        code = tl.where(absmax == 0.0, _ZERO_SIGNED, code)
    else:
        code = tl.where(absmax == 0.0, _ZERO_UNSIGNED, code)
    return code.to(tl.uint8)
