"""Stochastic rounding of float32 results to bfloat16 (bf16_stochastic_round=True): the readable
statement of csrc/include/fusedopt/common.h's float_to_bf16_stochastic and its random bits,
which the cpu, cuda and triton kernels compute bit for bit.

The rule, on the float32 bits x of a param's updated value and a 16-bit random r:

    bf16 = the upper 16 bits of (x + r)      (an integer add on the bits, then truncation)

so the value rounds away from zero, to the next bf16, with probability (its dropped 16 bits)
/ 2^16, else toward zero: the result is one of the two bf16 values around it and its expected
value is the float32 value. A carry into the exponent is the correct rounding up (subnormals
included); a finite value above the largest bf16 (within one bf16 ulp of it) becomes +-Inf
with that probability, as round-to-nearest makes it Inf past half an ulp. +-Inf have zero low
bits and stay Inf; a NaN is not added to but kept, made quiet (as round-to-nearest keeps it).

The random bits are a counter-based hash of (seed, tensor, index): `seed` the 64-bit seed of
the update call (drawn from torch's default CPU generator, fusedopt/optim/_plan.py), `tensor`
the param's position in the call's batch, `index` the element's position in the param's
memory. Only 32-bit wrapping multiplies, xor and shifts, which every engine computes alike;
mix32 is Wellons' "lowbias32" integer finaliser. Here the arithmetic is int64 torch tensors
masked to 32 bits, each multiply split in two so no product leaves int64's range.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32): c's halves keep every product below 2^48."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def rounding_key(seed: int, tensor: int) -> int:
    """The tensor's 32-bit key: mix32(mix32(mix32(tensor) ^ seed_low) ^ seed_high)."""
    value = torch.tensor(tensor & MASK32, dtype=torch.int64)
    value = mix32(mix32(mix32(value) ^ (seed & MASK32)) ^ ((seed >> 32) & MASK32))
    return int(value)


def rounding_bits(key: int, index: torch.Tensor) -> torch.Tensor:
    """The 16 random bits of each element index (int64, >= 0): the upper half of
    mix32(mix32(key ^ index_low) ^ index_high)."""
    return mix32(mix32((index & MASK32) ^ key) ^ (index >> 32)) >> 16


def memory_index(t: torch.Tensor) -> torch.Tensor:
    """Each element's position in t's memory (t dense: its elements fill numel() places), as
    int64 of t's shape: the element index the kernels count, which walk the memory."""
    index = torch.zeros(t.shape, dtype=torch.int64, device=t.device)
    for dim, (size, stride) in enumerate(zip(t.shape, t.stride())):
        shape = [1] * t.dim()
        shape[dim] = size
        index = index + (torch.arange(size, dtype=torch.int64, device=t.device) * stride).view(shape)
    return index


def stochastic_bf16(value: torch.Tensor, seed: int, tensor: int, like: torch.Tensor) -> torch.Tensor:
    """float32 `value` rounded to bfloat16 by the rule above, with the random bits of tensor
    number `tensor` under `seed`, indexed by the memory of `like` (the param it is stored into)."""
    bits = value.contiguous().view(torch.int32).to(torch.int64) & MASK32
    random = rounding_bits(rounding_key(seed, tensor), memory_index(like))
    rounded = (bits + random) >> 16
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = torch.where(is_nan, (bits >> 16) | 0x40, rounded)
    # 16-bit patterns as int16 (two's complement), then reinterpreted as bfloat16
    return (rounded - ((rounded & 0x8000) << 1)).to(torch.int16).view(torch.bfloat16)
