"""The one multi-tensor kernel every optimizer runs: table walk, loads and stores (of the
param, grad, master copy and states, in every storage: the param's dtype, float32, bf16, 8-bit
codes), GradScaler's skip, the grad transform, master weights, aligned and masked blocks.
The optimizer's own math arrives as two @triton.jit functions passed as compile-time
arguments (Triton treats a JITFunction argument as a constexpr): COEFFICIENTS, called once
per program, and UPDATE, called on the values of each block of elements (see
fusedopt/backends/triton/__init__.py for what a `<kind>.py` defines).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..._layout import FIRST_STATE_ROW, GRAD_ROW, NUMEL_ROW, PARAM_ROW, STEP_ROW
from . import _int8
from ._math import div, rounded, rounding_key, stochastic_bf16

VECTOR_BYTES = tl.constexpr(16)  # alignment that lets full blocks use 16-byte loads and stores

# Table rows as compile-time constants (Triton kernels may only read constexpr globals).
_PARAM_ROW = tl.constexpr(PARAM_ROW)
_GRAD_ROW = tl.constexpr(GRAD_ROW)
_STEP_ROW = tl.constexpr(STEP_ROW)
_NUMEL_ROW = tl.constexpr(NUMEL_ROW)
_STATE_ROW = tl.constexpr(FIRST_STATE_ROW)


@triton.jit
def _work_item(table_ptr, work_ptr, n, found_inf_ptr, FOUND_INF: tl.constexpr, BLOCK: tl.constexpr,
               CHUNK: tl.constexpr):
    """This program's tensor (its column in the table) and element range [start, end).

    The range is empty when GradScaler found an inf or NaN (`*found_inf != 0`, read here on
    the device: no host sync), so a skipped step loads and stores nothing.
    """
    pid = tl.program_id(0).to(tl.int64)
    column = tl.load(work_ptr + 2 * pid)
    start = tl.multiple_of(tl.load(work_ptr + 2 * pid + 1), BLOCK)  # chunks start on block boundaries
    end = tl.minimum(start + CHUNK, tl.load(table_ptr + _NUMEL_ROW * n + column))
    if FOUND_INF:
        end = tl.where(tl.load(found_inf_ptr) != 0.0, start, end)
    return column, start, end


@triton.jit
def _row_pointer(table_ptr, n, row, column, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """The address in `row` of the table for tensor `column`, as a pointer to DTYPE."""
    pointer = tl.load(table_ptr + row * n + column).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        pointer = tl.multiple_of(pointer, VECTOR_BYTES)
    return pointer


@triton.jit
def _state_pointer(table_ptr, n, k, column, fallback, NUM_STATES: tl.constexpr, STATE: tl.constexpr,
                   ALIGNED: tl.constexpr):
    """The k-th state tensor's pointer, or `fallback` (never dereferenced) past the last one."""
    if k < NUM_STATES:
        return _row_pointer(table_ptr, n, _STATE_ROW + k, column, STATE, ALIGNED)
    else:
        return fallback


@triton.jit
def _scale_pointer(table_ptr, n, k, column, fallback, NUM_STATES: tl.constexpr, first, INT8: tl.constexpr):
    """8-bit states: the float32 block absmax of the k-th state (table row first + k), or
    `fallback` (never dereferenced) past the last state and without INT8."""
    if INT8 and k < NUM_STATES:
        return _row_pointer(table_ptr, n, first + k, column, tl.float32, False)
    else:
        return fallback


@triton.jit
def _load_state(K: tl.constexpr, states, scales, tables_ptr, offsets, mask, rows, row_mask, fallback,
                NUM_STATES: tl.constexpr, STATE: tl.constexpr, COMPUTE: tl.constexpr, INT8: tl.constexpr,
                SIGNED: tl.constexpr):
    """The K-th state's values at `offsets` in COMPUTE, or `fallback` past the last state.
    INT8: dequantized (_int8.dequantized) with the absmax at `rows` (the quantization block of
    each element, shaped to broadcast against offsets; `row_mask` its mask); its code is the
    signed one when bit K of SIGNED is set."""
    value = fallback
    if K < NUM_STATES:
        if INT8:
            values_ptr, _ = _int8.code_tables(tables_ptr, (SIGNED >> K) & 1)
            absmax = tl.load(scales[K] + rows, mask=row_mask)
            value = _int8.dequantized(states[K], offsets, mask, absmax, values_ptr)
        else:
            value = tl.load(states[K] + offsets, mask=mask).to(COMPUTE)
    return value


@triton.jit
def _store_state(K: tl.constexpr, value, states, scales, tables_ptr, offsets, mask, rows, row_mask,
                 NUM_STATES: tl.constexpr, STATE: tl.constexpr, INT8: tl.constexpr, SIGNED: tl.constexpr):
    """Stores the K-th state's new values (nothing past the last state): rounded once to
    STATE, or INT8: quantized, offsets being [rows, QBLOCK] whole quantization blocks (rows:
    their indices, [rows, 1]) whose absmax is taken over the lanes in `mask`."""
    if K < NUM_STATES:
        if INT8:
            _, entries_ptr = _int8.code_tables(tables_ptr, (SIGNED >> K) & 1)
            absmax = _int8.block_absmax(value, mask)
            codes = _int8.codes_of(value, absmax, entries_ptr, (SIGNED >> K) & 1)
            tl.store(states[K] + offsets, codes, mask=mask)
            tl.store(scales[K] + rows, absmax, mask=row_mask)
        else:
            tl.store(states[K] + offsets, rounded(value, STATE), mask=mask)


@triton.jit
def _load_param(param_ptr, master_ptr, offsets, mask, MASTER: tl.constexpr, COMPUTE: tl.constexpr):
    """The value the math updates (load_param, csrc/cpu/multi_tensor_cpu.h): the float32
    master copy with master weights, else the param itself."""
    if MASTER:
        return tl.load(master_ptr + offsets, mask=mask)
    else:
        return tl.load(param_ptr + offsets, mask=mask).to(COMPUTE)


@triton.jit
def _store_param(param_ptr, master_ptr, offsets, mask, value, key, MASTER: tl.constexpr, DTYPE: tl.constexpr,
                 STOCHASTIC: tl.constexpr):
    """store_param: the master copy keeps the float32 value, the param gets it rounded once,
    to nearest even, or with STOCHASTIC (bf16 params without a master copy) stochastically
    with the tensor's rounding `key` (bf16_stochastic_round)."""
    if MASTER:
        tl.store(master_ptr + offsets, value, mask=mask)
    if STOCHASTIC:
        tl.store(param_ptr + offsets, stochastic_bf16(value, key, offsets), mask=mask)
    else:
        tl.store(param_ptr + offsets, rounded(value, DTYPE), mask=mask)


@triton.jit
def _grad_factors(grad_scale_ptr, clip_coef_ptr, GRAD_SCALE: tl.constexpr, CLIP_COEF: tl.constexpr,
                  COMPUTE: tl.constexpr):
    """grad_factors (common.h): GradScaler's scale (the divisor) and max_grad_norm's clip
    coefficient (the multiplier), read on the device and converted to COMPUTE; 1 when
    absent (and then `_unscaled_grad` leaves the operation out)."""
    divisor = tl.full((), 1.0, COMPUTE)
    multiplier = tl.full((), 1.0, COMPUTE)
    if GRAD_SCALE:
        divisor = tl.load(grad_scale_ptr).to(COMPUTE)
    if CLIP_COEF:
        multiplier = tl.load(clip_coef_ptr).to(COMPUTE)
    return divisor, multiplier


@triton.jit
def _unscaled_grad(grad_ptr, offsets, mask, divisor, multiplier, bound, GRAD_SCALE: tl.constexpr,
                   CLIP_COEF: tl.constexpr, CLIP_VALUE: tl.constexpr, DTYPE: tl.constexpr, COMPUTE: tl.constexpr):
    """unscaled_grad (common.h), loaded: `g / scale * clip`, then clamped to [-bound, bound]
    (clip_grad_value, as torch.clamp: a NaN stays NaN), stored back into the grad with
    GradScaler's scale (writes_grad). A missing factor's operation is left out, which is
    exact: dividing or multiplying by 1, or clamping to [-inf, inf], changes nothing."""
    grad = tl.load(grad_ptr + offsets, mask=mask).to(COMPUTE)
    if GRAD_SCALE:
        grad = div(grad, divisor)
    if CLIP_COEF:
        grad = grad * multiplier
    if CLIP_VALUE:
        grad = tl.where(grad > bound, bound, grad)
        grad = tl.where(grad < -bound, -bound, grad)
    if GRAD_SCALE:
        tl.store(grad_ptr + offsets, rounded(grad, DTYPE), mask=mask)
    return grad


@triton.jit
def _block(offsets, mask, rows, row_mask, param_ptr, master_ptr, grad_ptr, states, scales, tables_ptr, coefficients,
           divisor, multiplier, bound, key, UPDATE: tl.constexpr, OPTIONS: tl.constexpr, MASTER: tl.constexpr,
           GRAD_SCALE: tl.constexpr, CLIP_COEF: tl.constexpr, CLIP_VALUE: tl.constexpr, DTYPE: tl.constexpr,
           STATE: tl.constexpr, COMPUTE: tl.constexpr, STOCHASTIC: tl.constexpr, NUM_STATES: tl.constexpr,
           INT8: tl.constexpr, SIGNED: tl.constexpr):
    """One block of elements: load, transform the grad, the optimizer's UPDATE on the values,
    store (states rounded to STATE, or INT8: requantized from their new float32 values)."""
    param = _load_param(param_ptr, master_ptr, offsets, mask, MASTER, COMPUTE)
    grad = _unscaled_grad(grad_ptr, offsets, mask, divisor, multiplier, bound, GRAD_SCALE, CLIP_COEF, CLIP_VALUE,
                          DTYPE, COMPUTE)
    values = (_load_state(0, states, scales, tables_ptr, offsets, mask, rows, row_mask, param, NUM_STATES, STATE,
                          COMPUTE, INT8, SIGNED),
              _load_state(1, states, scales, tables_ptr, offsets, mask, rows, row_mask, param, NUM_STATES, STATE,
                          COMPUTE, INT8, SIGNED),
              _load_state(2, states, scales, tables_ptr, offsets, mask, rows, row_mask, param, NUM_STATES, STATE,
                          COMPUTE, INT8, SIGNED),
              _load_state(3, states, scales, tables_ptr, offsets, mask, rows, row_mask, param, NUM_STATES, STATE,
                          COMPUTE, INT8, SIGNED))
    param, new0, new1, new2, new3 = UPDATE(param, grad, values, coefficients, OPTIONS, COMPUTE)
    _store_state(0, new0, states, scales, tables_ptr, offsets, mask, rows, row_mask, NUM_STATES, STATE, INT8, SIGNED)
    _store_state(1, new1, states, scales, tables_ptr, offsets, mask, rows, row_mask, NUM_STATES, STATE, INT8, SIGNED)
    _store_state(2, new2, states, scales, tables_ptr, offsets, mask, rows, row_mask, NUM_STATES, STATE, INT8, SIGNED)
    _store_state(3, new3, states, scales, tables_ptr, offsets, mask, rows, row_mask, NUM_STATES, STATE, INT8, SIGNED)
    _store_param(param_ptr, master_ptr, offsets, mask, param, key, MASTER, DTYPE, STOCHASTIC)


@triton.jit
def _scalar_states(table_ptr, n, column, NUM_STATES: tl.constexpr, MASTER: tl.constexpr,
                   NUM_SCALARS: tl.constexpr):
    """The tensor's scalar states (float32; rows after the states and the master copy) as
    a pair, 0 past NUM_SCALARS."""
    first = _STATE_ROW + NUM_STATES + MASTER
    first_value = tl.full((), 0.0, tl.float32)
    second_value = tl.full((), 0.0, tl.float32)
    if NUM_SCALARS > 0:
        first_value = tl.load(_row_pointer(table_ptr, n, first, column, tl.float32, False))
    if NUM_SCALARS > 1:
        second_value = tl.load(_row_pointer(table_ptr, n, first + 1, column, tl.float32, False))
    return first_value, second_value


@triton.jit
def scalar_state_kernel(
        table_ptr, n, found_inf_ptr, lr_ptr, lr: tl.float64,
        h0: tl.float64, h1: tl.float64, h2: tl.float64, h3: tl.float64,
        h4: tl.float64, h5: tl.float64, h6: tl.float64, h7: tl.float64,
        ADVANCE: tl.constexpr, SLOT: tl.constexpr, OPTIONS: tl.constexpr, NUM_STATES: tl.constexpr,
        MASTER: tl.constexpr, NUM_SCALARS: tl.constexpr, FOUND_INF: tl.constexpr, LR_TENSOR: tl.constexpr):
    """One program per tensor, after the update kernel on the same stream: stores the
    tensor's next scalar states (ADVANCE, the kind's `advance_scalars`) from the values the
    update kernel read. The one writer of each tensor's scalars; nothing when found_inf."""
    column = tl.program_id(0).to(tl.int64)
    step = tl.load(_row_pointer(table_ptr, n, _STEP_ROW, column, tl.float32, False))
    if LR_TENSOR:
        lr = tl.load(lr_ptr)
    else:
        lr = tl.full((), lr, tl.float64)
    scalars = _scalar_states(table_ptr, n, column, NUM_STATES, MASTER, NUM_SCALARS)
    advanced = ADVANCE(step, lr, (h0, h1, h2, h3, h4, h5, h6, h7), scalars, SLOT, OPTIONS)
    keep = tl.full((), 1, tl.int1)
    if FOUND_INF:
        keep = tl.load(found_inf_ptr) == 0.0
    first = _STATE_ROW + NUM_STATES + MASTER
    tl.store(_row_pointer(table_ptr, n, first, column, tl.float32, False), advanced[0], mask=keep)
    if NUM_SCALARS > 1:
        tl.store(_row_pointer(table_ptr, n, first + 1, column, tl.float32, False), advanced[1], mask=keep)


@triton.jit(do_not_specialize=["seed"])
def multi_tensor_kernel(
        table_ptr, work_ptr, n, grad_scale_ptr, found_inf_ptr, clip_coef_ptr, lr_ptr, lr: tl.float64,
        clip_value: tl.float64,
        h0: tl.float64, h1: tl.float64, h2: tl.float64, h3: tl.float64,
        h4: tl.float64, h5: tl.float64, h6: tl.float64, h7: tl.float64,
        tensor_clip_ptr, tensor_scale_ptr, tables_ptr, seed: tl.int64, TENSOR_CLIP: tl.constexpr,
        TENSOR_SCALE: tl.constexpr,
        COEFFICIENTS: tl.constexpr, UPDATE: tl.constexpr, SLOT: tl.constexpr, OPTIONS: tl.constexpr,
        DTYPE: tl.constexpr, STATE: tl.constexpr, COMPUTE: tl.constexpr, NUM_STATES: tl.constexpr,
        MASTER: tl.constexpr, COUNTER: tl.constexpr, GRAD_SCALE: tl.constexpr, FOUND_INF: tl.constexpr,
        CLIP_COEF: tl.constexpr, CLIP_VALUE: tl.constexpr, LR_TENSOR: tl.constexpr, ALIGNED: tl.constexpr,
        BLOCK: tl.constexpr, CHUNK: tl.constexpr, NUM_SCALARS: tl.constexpr, STOCHASTIC: tl.constexpr,
        INT8: tl.constexpr, SIGNED: tl.constexpr):
    """One program: one chunk of one tensor. h0..h7 are the optimizer's float64 scalars
    (its `arguments`' first namedtuple, padded with zeros; SLOT names their positions);
    clip_value is clip_grad_value's bound (read only with CLIP_VALUE), rounded once to
    COMPUTE as grad_factors does. TENSOR_CLIP: the grad's multiplier is this tensor's
    clip_grad_norm_per_tensor coefficient (float32, tensor_clip_ptr[column]; CLIP_COEF is then
    set). TENSOR_SCALE: the kind's lr is multiplied by this tensor's float64 scale (LAMB's
    trust ratio, tensor_scale_ptr[column]; lr enters LAMB's coefficients only as -lr, so
    -(lr * ratio) rounds as the C++ header's neg_lr * ratio). STOCHASTIC: bf16 params without
    a master copy are stored rounded stochastically (bf16_stochastic_round), the call's `seed`
    (int64 > 0) and the tensor's column giving its rounding key. INT8: the states are 8-bit
    codes (STATE uint8) with their float32 block absmax in the table's rows after the scalar
    states, the code tables at tables_ptr (_int8.code_tables_on), state k's code signed
    where bit k of SIGNED is set; BLOCK is a multiple of the quantization block, so each block
    of the loop holds whole quantization blocks, walked as [BLOCK // QBLOCK, QBLOCK] rows."""
    column, start, end = _work_item(table_ptr, work_ptr, n, found_inf_ptr, FOUND_INF, BLOCK, CHUNK)
    param_ptr = _row_pointer(table_ptr, n, _PARAM_ROW, column, DTYPE, ALIGNED)
    grad_ptr = _row_pointer(table_ptr, n, _GRAD_ROW, column, DTYPE, ALIGNED)
    # The optimizer's states in table order (fewer than four: the rest stand in as the
    # param's pointer, never dereferenced), then the master copy with master weights.
    states = (_state_pointer(table_ptr, n, 0, column, param_ptr, NUM_STATES, STATE, ALIGNED),
              _state_pointer(table_ptr, n, 1, column, param_ptr, NUM_STATES, STATE, ALIGNED),
              _state_pointer(table_ptr, n, 2, column, param_ptr, NUM_STATES, STATE, ALIGNED),
              _state_pointer(table_ptr, n, 3, column, param_ptr, NUM_STATES, STATE, ALIGNED))
    if MASTER:
        master_ptr = _row_pointer(table_ptr, n, _STATE_ROW + NUM_STATES, column, tl.float32, ALIGNED)
    else:
        master_ptr = param_ptr  # never dereferenced
    # 8-bit states: each state's block absmax, in the rows after the scalar states
    first_scale = _STATE_ROW + NUM_STATES + MASTER + NUM_SCALARS
    scales = (_scale_pointer(table_ptr, n, 0, column, param_ptr, NUM_STATES, first_scale, INT8),
              _scale_pointer(table_ptr, n, 1, column, param_ptr, NUM_STATES, first_scale, INT8),
              _scale_pointer(table_ptr, n, 2, column, param_ptr, NUM_STATES, first_scale, INT8),
              _scale_pointer(table_ptr, n, 3, column, param_ptr, NUM_STATES, first_scale, INT8))
    if COUNTER:  # this tensor's counter, already advanced (see "Step counters")
        step = tl.load(_row_pointer(table_ptr, n, _STEP_ROW, column, tl.float32, False))
    else:
        step = tl.full((), 0.0, tl.float32)
    if LR_TENSOR:  # learning_rate (common.h): read on the device, so a captured graph follows a schedule
        lr = tl.load(lr_ptr)
    else:
        lr = tl.full((), lr, tl.float64)
    if TENSOR_SCALE:
        lr = lr * tl.load(tensor_scale_ptr + column)
    if NUM_SCALARS > 0:  # the tensor's scalar states as the previous step left them (read only here)
        scalars = _scalar_states(table_ptr, n, column, NUM_STATES, MASTER, NUM_SCALARS)
        coefficients = COEFFICIENTS(step, lr, (h0, h1, h2, h3, h4, h5, h6, h7), SLOT, OPTIONS, COMPUTE, scalars)
    else:
        coefficients = COEFFICIENTS(step, lr, (h0, h1, h2, h3, h4, h5, h6, h7), SLOT, OPTIONS, COMPUTE)
    divisor, multiplier = _grad_factors(grad_scale_ptr, clip_coef_ptr, GRAD_SCALE, CLIP_COEF and not TENSOR_CLIP,
                                        COMPUTE)
    if TENSOR_CLIP:
        multiplier = tl.load(tensor_clip_ptr + column).to(COMPUTE)
    bound = tl.full((), clip_value, COMPUTE)
    if STOCHASTIC:
        key = rounding_key(seed, column)
    else:
        key = tl.full((), 0, tl.uint32)

    for k in range(0, CHUNK // BLOCK):  # see "Block loop" in __init__
        block_start = start + k * BLOCK
        if INT8:  # the block as rows of whole quantization blocks; rows: their indices, [rows, 1]
            rows = (block_start // _int8.QBLOCK + tl.arange(0, BLOCK // _int8.QBLOCK))[:, None]
            offsets = rows * _int8.QBLOCK + tl.arange(0, _int8.QBLOCK)[None, :]
        else:
            rows = block_start  # unused
            offsets = block_start + tl.arange(0, BLOCK)
        if block_start + BLOCK <= end:
            _block(offsets, None, rows, None, param_ptr, master_ptr, grad_ptr, states, scales, tables_ptr,
                   coefficients, divisor, multiplier, bound, key, UPDATE, OPTIONS, MASTER, GRAD_SCALE, CLIP_COEF,
                   CLIP_VALUE, DTYPE, STATE, COMPUTE, STOCHASTIC, NUM_STATES, INT8, SIGNED)
        elif block_start < end:
            _block(offsets, offsets < end, rows, rows * _int8.QBLOCK < end, param_ptr, master_ptr, grad_ptr, states,
                   scales, tables_ptr, coefficients, divisor, multiplier, bound, key, UPDATE, OPTIONS, MASTER,
                   GRAD_SCALE, CLIP_COEF, CLIP_VALUE, DTYPE, STATE, COMPUTE, STOCHASTIC, NUM_STATES, INT8, SIGNED)
