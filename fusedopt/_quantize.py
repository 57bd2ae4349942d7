"""Blockwise dynamic 8-bit optimizer states (state_dtype="int8"): the specification.

After Dettmers, Lewis, Shleifer & Zettlemoyer 2022, "8-bit Optimizers via Block-wise
Quantization" (ICLR 2022): each state tensor is cut into blocks of BLOCK_SIZE consecutive
elements (in the param's memory order; the last block may be shorter); a block stores its
absmax (max |x| over the block, float32) and one uint8 code per element, an index into a
256-value table of numbers in [-1, 1] (signed code) or [0, 1] (unsigned code).

- Dequantize: x = table[code] * absmax (one float32 multiplication).
- Quantize (after every update, from the NEW float32 values of the block):
  absmax = max |x| over the block; q = x / absmax (float32 division); code = the number of
  decision boundaries b_i strictly below q, where b_i is the midpoint of table[i] and
  table[i+1] (exact in float64, rounded once to float32). So the code is the table's nearest
  value, a tie (q exactly on a boundary) going to the LOWER index, and a NaN q gets code 0.
  absmax 0 (an all-zero block) gives q = 0/0 = NaN: that case is defined as every code
  pointing at 0.0 (absmax 0 then dequantizes to exactly 0 whatever the codes say).
  A NaN or infinite value makes its block's absmax NaN or inf, so the block dequantizes to
  NaN: a non-finite state poisons its whole block, where in float32 it stays in its element.
  Adam's second moment overflows so from one grad of about 6e20 or more ((1 - beta2) g^2
  past float32's 3.4e38): float32 states then leave that element's update at 0 and every
  other param finite, 8-bit states turn the block's 256 params to NaN from the next step on.
  GradScaler skips a step only when the grad itself is inf or NaN; clip grads (max_grad_norm)
  against it.
  Round to nearest, no stochastic rounding: runs are reproducible.
- Small tensors: a state tensor of fewer than MIN_QUANTIZED_NUMEL elements (bitsandbytes'
  threshold) is not quantized; its states are float32, as bitsandbytes keeps them, for 16-bit
  params without a master copy too (UpdateConfig.float32_states).

The codes (dynamic tree quantization, Dettmers 2016; section 2 of the 2022 paper): a
magnitude is 10^-e times a linear fraction in (0.1, 1]; the bits after the sign bit hold e
as a run of zeros, an indicator 1, then the fraction's bits, so large magnitudes get many
fraction bits and small ones a wide range. Here the fraction of exponent e takes the upper
ends of 2^f equal bins of (0.1, 1] (f fraction bits), so 1.0 itself is a code and a block's
largest element is stored exactly.
- Signed (7 bits after the sign): e = 0..6 with f = 6 - e: 127 magnitudes from 1e-6 to 1,
  each with both signs, 0, and one spare pattern (the "-0"), used for +1e-7. 256 values.
- Unsigned (8 bits, no sign): e = 0..7 with f = 7 - e: 255 magnitudes from 1e-7 to 1, and 0.
Tables are computed in float64 (one exact rational division each), rounded once to float32,
sorted.

Which code a state uses follows from its math (STATE_CODES, keyed by state name, which
means the same thing in every optimizer here): states that may be negative (first moments,
momentum) are signed; non-negative ones (second moments, accumulated squares) unsigned.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Tuple

import torch

BLOCK_SIZE = 256
MIN_QUANTIZED_NUMEL = 4096
CODE_DTYPE = torch.uint8
SCALE_DTYPE = torch.float32
SCALE_SUFFIX = "_absmax"  # state[key + SCALE_SUFFIX]: the float32 absmax of each block of state[key]
INT8 = "int8"  # the state_dtype value

SIGNED, UNSIGNED = "signed", "unsigned"
# Every state tensor that may be stored in 8 bits, by name, with its code.
STATE_CODES: Dict[str, str] = {
    "exp_avg": SIGNED,          # Adam, AdamW, NAdam, RAdam, Adamax, LAMB, Lion: first moment
    "momentum_buffer": SIGNED,  # SGD, RMSprop (momentum > 0)
    "grad_avg": SIGNED,         # RMSprop (centered): mean of the grads
    "exp_avg_sq": UNSIGNED,     # Adam family: second moment, a mean of squares
    "max_exp_avg_sq": UNSIGNED,  # Adam (amsgrad): running max of the second moment
    "square_avg": UNSIGNED,     # RMSprop, Adadelta: mean of squared grads
    "acc_delta": UNSIGNED,      # Adadelta: mean of squared updates
    "sum": UNSIGNED,            # Adagrad: sum of squared grads (initial_accumulator_value >= 0)
    "exp_inf": UNSIGNED,        # Adamax: running max of |grad|
}
# States whose math does not survive 8 bits; their optimizers refuse state_dtype="int8".
REFUSED_STATES: Dict[str, str] = {
    "ax": "ASGD's `ax` is the averaged model itself (the result of training), not a statistic of the grads; "
          "8 bits per weight would lose it",
    "prev": "Rprop reads the sign of `prev` (the previous grad) and zeroes it elementwise, and its `step_size` "
            "is multiplied by etaplus/etaminus every step, so 8-bit rounding compounds",
    "step_size": "Rprop's `step_size` is multiplied by etaplus/etaminus every step, so 8-bit rounding compounds",
    # grad_avg keeps its code above: old checkpoints that hold it in 8 bits still load.
    "grad_avg": "centered RMSprop takes sqrt(square_avg - grad_avg^2) of two separately quantized states, and "
                "their rounding can make it negative (NaN params) where a block mixes large and small grads",
}


def scale_key(key: str) -> str:
    return key + SCALE_SUFFIX


def is_int8(state_dtype) -> bool:
    return isinstance(state_dtype, str) and state_dtype.lower() == INT8


def quantized_numel(numel: int) -> bool:
    """Whether a state tensor of `numel` elements is stored in 8 bits."""
    return numel >= MIN_QUANTIZED_NUMEL


def blocks(numel: int) -> int:
    return -(-numel // BLOCK_SIZE)


def refusal(state_keys) -> Optional[str]:
    """Why states of these names cannot be stored in 8 bits (None: they can)."""
    for key in state_keys:
        if key in REFUSED_STATES:
            return REFUSED_STATES[key]
        if key not in STATE_CODES:
            return f"its state {key!r} has no 8-bit code"
    return None


def _magnitudes(exponents: int, top_fraction_bits: int):
    """(numerator, denominator) of every magnitude 10^-e * (0.1 + 0.9 j / k), k = 2^f, f =
    top_fraction_bits - e, j = 1..k: (k + 9 j) / (10^(e+1) k)."""
    for e in range(exponents):
        k = 2 ** (top_fraction_bits - e)
        for j in range(1, k + 1):
            yield k + 9 * j, 10 ** (e + 1) * k


@functools.lru_cache(maxsize=None)
def _table_list(signed: bool) -> Tuple[float, ...]:
    if signed:
        positive = [n / d for n, d in _magnitudes(7, 6)]  # 127 magnitudes, 1e-6 .. 1
        values = [0.0, 1e-7, *positive, *(-v for v in positive)]
    else:
        values = [0.0, *(n / d for n, d in _magnitudes(8, 7))]  # 255 magnitudes, 1e-7 .. 1
    assert len(values) == 256 and len(set(values)) == 256
    return tuple(values)


@functools.lru_cache(maxsize=None)
def _tables(signed: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    values64 = torch.tensor(_table_list(signed), dtype=torch.float64)
    table = values64.to(torch.float32).sort().values  # rounded once, then sorted
    # boundaries: exact midpoints of the float32 values (float64 holds them exactly), rounded once
    wide = table.double()
    boundaries = ((wide[:-1] + wide[1:]) / 2).to(torch.float32)
    return table.contiguous(), boundaries.contiguous()


def code_table(signed: bool) -> torch.Tensor:
    """The 256 float32 values of the signed ([-1, 1]) or unsigned ([0, 1]) code, sorted (CPU)."""
    return _tables(signed)[0]


def code_boundaries(signed: bool) -> torch.Tensor:
    """The 255 float32 decision boundaries of a code (midpoints of neighbouring values; CPU)."""
    return _tables(signed)[1]


def zero_code(signed: bool) -> int:
    return int((code_table(signed) == 0).nonzero().item())


def is_signed(key: str) -> bool:
    return STATE_CODES[key] == SIGNED


_tables_on: Dict[Tuple[bool, torch.device], Tuple[torch.Tensor, torch.Tensor]] = {}


def _tables_on_device(signed: bool, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    key = (signed, device)
    if key not in _tables_on:
        _tables_on[key] = tuple(t.to(device) for t in _tables(signed))
    return _tables_on[key]


def memory_order(t: torch.Tensor) -> torch.Tensor:
    """A dense tensor's elements as a 1-D view in memory order (blocks follow memory, as the
    kernels walk it; for a contiguous tensor this is t.view(-1))."""
    if t.is_contiguous():
        return t.view(-1)
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


def dequantize(codes: torch.Tensor, absmax: torch.Tensor, signed: bool) -> torch.Tensor:
    """float32 values of a quantized state: table[code] * absmax of its block, as a 1-D
    tensor in memory order."""
    table, _ = _tables_on_device(signed, codes.device)
    flat = memory_order(codes)
    per_element = absmax.repeat_interleave(BLOCK_SIZE)[:flat.numel()]
    return table[flat.long()] * per_element


def quantize(values: torch.Tensor, signed: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(codes, absmax) of float32 `values` (1-D, memory order), as the module docstring
    defines them: codes uint8 [numel], absmax float32 [ceil(numel / BLOCK_SIZE)]."""
    values = values.to(torch.float32).reshape(-1)
    n = values.numel()
    _, boundaries = _tables_on_device(signed, values.device)
    padded = torch.zeros(blocks(n) * BLOCK_SIZE, dtype=torch.float32, device=values.device)
    padded[:n] = values
    # amax propagates NaN; padding zeros change no absmax
    absmax = padded.view(-1, BLOCK_SIZE).abs().amax(dim=1)
    q = values / absmax.repeat_interleave(BLOCK_SIZE)[:n]
    # number of boundaries strictly below q: searchsorted's left side. NaN q (a 0/0 of an
    # all-zero block, or a non-finite block) is handled after.
    codes = torch.searchsorted(boundaries, q.contiguous(), right=False)
    codes = torch.where(q.isnan(), torch.zeros_like(codes), codes)
    zero_blocks = (absmax == 0).repeat_interleave(BLOCK_SIZE)[:n]
    codes = torch.where(zero_blocks, torch.full_like(codes, zero_code(signed)), codes)
    return codes.to(CODE_DTYPE), absmax


def store(values: torch.Tensor, codes: torch.Tensor, absmax: torch.Tensor, signed: bool) -> None:
    """Quantize float32 `values` (any shape, the codes' layout) into `codes` and `absmax` in place."""
    new_codes, new_absmax = quantize(memory_order(values) if values.dim() else values, signed)
    memory_order(codes).copy_(new_codes)
    absmax.copy_(new_absmax)


def quantized_like(values: torch.Tensor, key: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(codes in the layout of `values`, absmax) for state `key` holding `values` (a new tensor
    of codes: used when state is created or converted)."""
    codes = torch.empty_like(values, dtype=CODE_DTYPE, memory_format=torch.preserve_format)
    absmax = torch.empty(blocks(values.numel()), dtype=SCALE_DTYPE, device=values.device)
    store(values.detach().to(torch.float32), codes, absmax, is_signed(key))
    return codes, absmax


def quantized_entry_problem(state: Dict[str, Any]) -> Optional[str]:
    """What is wrong with the 8-bit states in one param's checkpointed state (None: nothing):
    each `<key>_absmax` must sit beside uint8 codes of `<key>`, one float32 scale per block of
    256 codes, and uint8 values of a state that has a code never come without their scales
    (loaded as plain values, the code numbers 0-255 would become the state)."""
    for key, value in state.items():
        if key.endswith(SCALE_SUFFIX):
            base = key[:-len(SCALE_SUFFIX)]
            codes = state.get(base)
            if not (isinstance(codes, torch.Tensor) and codes.dtype == CODE_DTYPE):
                shown = f"a {codes.dtype} tensor" if isinstance(codes, torch.Tensor) else repr(type(codes).__name__)
                return f"has block scales '{key}', but '{base}' is {shown}, not {CODE_DTYPE} codes"
            expected = blocks(codes.numel())
            if not (isinstance(value, torch.Tensor) and value.dtype == SCALE_DTYPE and value.dim() == 1
                    and value.numel() == expected):
                shown = (f"a {value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                         else f"a {type(value).__name__}")
                return (f"has block scales '{key}' that are {shown}; the {codes.numel()} codes of '{base}' need a "
                        f"1-D {SCALE_DTYPE} tensor of {expected}")
        elif (key in STATE_CODES and isinstance(value, torch.Tensor) and value.dtype == CODE_DTYPE
              and scale_key(key) not in state):
            return f"holds {CODE_DTYPE} codes in '{key}' without their block scales '{scale_key(key)}'"
    return None


def dequantized_like(codes: torch.Tensor, absmax: torch.Tensor, key: str) -> torch.Tensor:
    """The float32 values of quantized state `key`, in the codes' shape and layout."""
    out = torch.empty_like(codes, dtype=torch.float32, memory_format=torch.preserve_format)
    memory_order(out).copy_(dequantize(codes, absmax, is_signed(key)))
    return out
