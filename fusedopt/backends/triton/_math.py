"""The per-element pieces every Triton update uses: csrc/include/fusedopt/common.h's
functions restated for Triton, one place for all optimizers.

Triton cannot include the C++ header, so each function here is the header's own operation
sequence, not an approximation of it: the same IEEE operations in the same order give the
same bits (the kernels are compiled without multiply-add contraction).

- `rounded` is fusedopt::float_to_bf16 / float_to_half's round-to-nearest-even. For
  bfloat16 the integer formula of float_to_bf16 itself, because Triton's interpreter
  truncates when it converts float32 to bfloat16; for float16 the hardware conversion
  (cvt.rn.f16.f32; numpy's in the interpreter), which rounds to nearest even as
  float_to_half does.
- `stochastic_bf16` (with `rounding_key`) is fusedopt::float_to_bf16_stochastic and its
  random bits (bf16_stochastic_round): the same uint32 multiplies and shifts as the C++.
- `div` and `sqrt` are the IEEE-rounded operations C++ `/` and std::sqrt are (Triton's
  float32 `/` and tl.sqrt may be approximate).
- `lerp` is fusedopt::lerp (torch's two-sided formula).
- `step_power` is fusedopt::step_power: base ** step by squaring in double-double, so the
  bias corrections are the C++ kernels' bits. The one change: each product's rounding
  error comes from Dekker's exact product (Veltkamp splitting) instead of an fma. Both
  give the exact error of a double product, but triton 3.6's interpreter computes tl.fma
  as a multiply then an add (rounding twice), which would make the tests' bits differ
  from the compiled kernel's; plain multiplies and adds (no contraction) mean the same
  everywhere. The loop is C++'s, once per bit of the counter (a `while`, which the
  interpreters of triton 3.6 and later run with numpy >= 2.4); it squares once more after
  the top bit, a value C++ skips and nothing uses. Where a product underflows (powers
  below ~2^-960) the two error terms may differ, which no bias correction sees: 1 - x is
  then 1 either way.

Conventions: scalars arrive as float64 and are rounded once to the math type with
`tl.full((), x, T)` (C++'s `T(double)`; under the interpreter they are Python floats,
which have no `.to`); loads convert with `.to(COMPUTE)`, stores with `rounded(x, STORAGE)`.
Every @triton.jit call costs the interpreter about a millisecond, so helpers are kept to
the pieces that carry meaning (in a compiled kernel they inline anyway).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def rounded(x, DTYPE: tl.constexpr):
    """x (in the math type) rounded once to the storage type DTYPE, to nearest even."""
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        result = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        quiet_nan = (bits >> 16) | 0x40
        result = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, quiet_nan, result)
        return result.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)


@triton.jit
def _mix32(x):
    """fusedopt::mix32 (Wellons' lowbias32) on uint32: wrapping multiplies, logical shifts."""
    x = x ^ (x >> 16)
    x = x * tl.full((), 0x7FEB352D, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full((), 0x846CA68B, tl.uint32)
    return x ^ (x >> 16)


@triton.jit
def rounding_key(seed, tensor):
    """fusedopt::rounding_key: the uint32 key of table column `tensor` (int64) under the
    call's 64-bit `seed` (int64, >= 0)."""
    seed_low = (seed & 0xFFFFFFFF).to(tl.uint32)
    seed_high = (seed >> 32).to(tl.uint32)
    return _mix32(_mix32(_mix32((tensor & 0xFFFFFFFF).to(tl.uint32)) ^ seed_low) ^ seed_high)


@triton.jit
def stochastic_bf16(x, key, offsets):
    """fusedopt::float_to_bf16_stochastic(x, rounding_bits(key, offsets)): float32 x rounded
    to bfloat16 as `upper 16 bits of (bits + r)`, r the 16 random bits of each element index
    (int64 offsets into the tensor); a NaN kept quiet, as `rounded` keeps it."""
    low = (offsets & 0xFFFFFFFF).to(tl.uint32)
    high = (offsets >> 32).to(tl.uint32)
    random = _mix32(_mix32(key ^ low) ^ high) >> 16
    bits = x.to(tl.uint32, bitcast=True)
    result = (bits + random) >> 16
    quiet_nan = (bits >> 16) | 0x40
    result = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, quiet_nan, result)
    return result.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def div(x, y):
    """IEEE-rounded division, as C++ and torch (Triton's float32 `/` may be approximate)."""
    if x.dtype == tl.float32:
        return tl.div_rn(x, y)
    else:
        return x / y


@triton.jit
def sqrt(x):
    """IEEE-rounded square root, as std::sqrt and torch.sqrt (tl.sqrt may be approximate)."""
    if x.dtype == tl.float32:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def lerp(start, end, weight):
    """fusedopt::lerp: torch's two-sided formula, exact at weight 0 and 1."""
    return tl.where(weight < 0.5, start + weight * (end - start), end - (end - start) * (1.0 - weight))


@triton.jit
def signed_grad(grad, param, grad_sign, weight_decay, WEIGHT_DECAY: tl.constexpr):
    """`g * grad_sign` (-1 with maximize), plus `weight_decay * param` (L2) when WEIGHT_DECAY:
    the headers' `g = g_in * k.grad_sign; g = wd != 0 ? g + wd * p : g`."""
    grad = grad * grad_sign
    if WEIGHT_DECAY:
        grad = grad + weight_decay * param
    return grad


@triton.jit
def _two_product(a_hi, a_lo, b_hi, b_lo):
    """fusedopt::two_product: (a_hi + a_lo) * (b_hi + b_lo) as a double-double."""
    product = a_hi * b_hi
    a_split = 134217729.0 * a_hi  # 2^27 + 1: Veltkamp's split into two 26-bit halves
    a_big = a_split - (a_split - a_hi)
    a_small = a_hi - a_big
    b_split = 134217729.0 * b_hi
    b_big = b_split - (b_split - b_hi)
    b_small = b_hi - b_big
    error = ((a_big * b_big - product) + a_big * b_small + a_small * b_big) + a_small * b_small  # fma's exact error
    error = error + (a_hi * b_lo + a_lo * b_hi)
    hi = product + error
    return hi, error - (hi - product)


@triton.jit
def step_power(base, step):
    """fusedopt::step_power(base, step) in float64: base ** step for a step counter. A
    counter that is not a whole number in [0, 2^32) (never written by fusedopt) takes
    exp2(step * log2(base)), where C++ calls std::pow: they may differ in the last bit."""
    whole = (step >= 0.0) & (step <= 4294967295.0) & (step == tl.floor(step))
    n = tl.where(whole, step, 0.0).to(tl.int64)
    result_hi = tl.full((), 1.0, tl.float64)
    result_lo = tl.full((), 0.0, tl.float64)
    square_hi = base
    square_lo = tl.full((), 0.0, tl.float64)
    while n != 0:  # fusedopt::step_power's loop (a `while`, which every interpreter runs)
        hi, lo = _two_product(result_hi, result_lo, square_hi, square_lo)
        odd = (n & 1) != 0
        result_hi = tl.where(odd, hi, result_hi)
        result_lo = tl.where(odd, lo, result_lo)
        n = n >> 1
        square_hi, square_lo = _two_product(square_hi, square_lo, square_hi, square_lo)
    return tl.where(whole, result_hi + result_lo, tl.exp2(step * tl.log2(base)))


@triton.jit
def power(base, exponent):
    """base ** exponent in float64 for a positive base and any exponent, where C++ calls
    std::pow (ASGD's eta, NAdam's momentum schedule): exp2(exponent * log2(base)), since
    Triton's interpreter has no pow. It may differ from std::pow in the last bits; what
    reads it is rounded to float32, or is a coefficient within float64 tolerances."""
    return tl.exp2(exponent * tl.log2(base))
