"""Adafactor's Triton kernels: the passes of csrc/include/fusedopt/factored.h, each one launch
over every tensor of a bucket (the launcher and the work tables: _factored.py).

Work items (one program each in passes A, B and C): for a factored param, a block of rows
of one (R, C) slice within one column tile of BLOCK columns; for a vector, a range of
elements. Each item writes its own partial sums to a float64 workspace slot (the sum of
p², the sum of u², the column sums of g² over its rows, the sum of g² of each of its rows
over its tile), never a shared one, and the next launch adds the slots in a fixed order:
the same bits run to run, no atomics. Per-tensor values (the row means, alpha, the update's
step size) stay on the device, in workspaces the next launches read.

    A      items   sum p²; g² per row (per tile) and per column (per item); vectors'
                   variance = lerp(variance, g², w) in place
    slice  slices  col_var and row_var from the partial sums; the clamped mean of row_var
    B      items   sum u², u = g / sqrt(max(estimate, eps1²))
    tensor tensors alpha = max(eps2, RMS(p)) * rho; coefficient = -alpha / max(1, RMS(u)/d)
    C      items   p = p * (1 - lr*wd) + coefficient * u

A factored item walks its rows in tiles of ROWS x COLS elements (row and column sums are
then one reduction each per tile); a vector item in stretches of ROWS * COLS elements.

Operations follow factored.h's (and so the CPU kernel's) order and rounding: 16-bit params
compute in float32, sums of squares accumulate in float64, each stored moment is rounded to
the param's dtype and read back as stored. The kernels are compiled without multiply-add
contraction (enable_fp_fusion=False). Loops with run-time bounds are `while` loops (the
interpreter of older triton cannot run a `for` over a run-time count with numpy >= 2.4).
The loops call no @triton.jit helper but `_math.rounded` for bfloat16 (each call costs
Triton's interpreter milliseconds; a compiled kernel inlines them either way): IEEE division
and square root are written out as `_math.div`/`sqrt` are (div_rn/sqrt_rn in float32),
lerp as `_math.lerp`, and other dtypes round with `.to` as `rounded` does.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..._factored import COL, COLS, GRAD, MOMENT, NUMEL, PARAM, ROWS, STEP
from ._math import rounded

ITEM_FIELDS = 8  # column, slice (in the tensor), first row/element, end, first column, col base, row base, slice
SLICE_FIELDS = 4  # column, slice (in the tensor), first item, blocks of rows per column tile
TENSOR_FIELDS = 2  # first item, items
_ITEM = tl.constexpr(ITEM_FIELDS)  # the same, as constants the kernels may read
_SLICE = tl.constexpr(SLICE_FIELDS)
_TENSOR = tl.constexpr(TENSOR_FIELDS)

_NUMEL = tl.constexpr(NUMEL)
_PARAM = tl.constexpr(PARAM)
_GRAD = tl.constexpr(GRAD)
_STEP = tl.constexpr(STEP)
_ROWS = tl.constexpr(ROWS)
_COLS = tl.constexpr(COLS)
_MOMENT = tl.constexpr(MOMENT)
_COL = tl.constexpr(COL)


@triton.jit
def _tensor(table_ptr, n, column, beta2_decay, DTYPE: tl.constexpr, COMPUTE: tl.constexpr):
    """The tensor's pointers (param, grad, row_var or variance, col_var), R (0 for a vector),
    C, and the lerp weight 1 - beta2_t = step ** beta2_decay in COMPUTE."""
    param = tl.load(table_ptr + _PARAM * n + column).to(tl.pointer_type(DTYPE))
    grad = tl.load(table_ptr + _GRAD * n + column).to(tl.pointer_type(DTYPE))
    moment = tl.load(table_ptr + _MOMENT * n + column).to(tl.pointer_type(DTYPE))
    col_var = tl.load(table_ptr + _COL * n + column).to(tl.pointer_type(DTYPE))  # 0 for a vector: not read
    R = tl.load(table_ptr + _ROWS * n + column)
    C = tl.load(table_ptr + _COLS * n + column)
    step = tl.load(tl.load(table_ptr + _STEP * n + column).to(tl.pointer_type(tl.float32))).to(tl.float64)
    weight = tl.full((), tl.exp2(beta2_decay * tl.log2(step)), COMPUTE)  # _math.power, inline
    return param, grad, moment, col_var, R, C, weight


@triton.jit
def pass_a_kernel(table_ptr, n, items_ptr, param_partial_ptr, col_partial_ptr, row_partial_ptr,
                  beta2_decay: tl.float64, DTYPE: tl.constexpr, COMPUTE: tl.constexpr, ROWS: tl.constexpr,
                  COLS: tl.constexpr):
    """Sum of p² (item), g² per row (its tile) and per column (its rows); a vector's variance."""
    k = tl.program_id(0).to(tl.int64)
    item = items_ptr + _ITEM * k
    column = tl.load(item)
    begin = tl.load(item + 2)
    end = tl.load(item + 3)
    param, grad, moment, col_var, R, C, weight = _tensor(table_ptr, n, column, beta2_decay, DTYPE, COMPUTE)
    if R > 0:
        param_sum = tl.zeros([ROWS, COLS], tl.float64)
        first_col = tl.load(item + 4)
        col_base = tl.load(item + 5)
        row_base = tl.load(item + 6)
        tiles = (C + COLS - 1) // COLS
        tile = first_col // COLS
        col_lanes = tl.arange(0, COLS)
        cols = first_col + col_lanes
        col_sum = tl.zeros([COLS], tl.float64)
        r = begin
        while r < end:
            rows = r + tl.arange(0, ROWS)
            mask = (rows < end)[:, None] & (cols < C)[None, :]
            offsets = rows[:, None] * C + cols[None, :]
            g = tl.load(grad + offsets, mask=mask, other=0.0).to(COMPUTE).to(tl.float64)
            p = tl.load(param + offsets, mask=mask, other=0.0).to(COMPUTE).to(tl.float64)
            squares = g * g
            col_sum += tl.sum(squares, axis=0)
            param_sum += p * p
            # each row's sum over this tile: the slice kernel adds the tiles, then updates row_var
            tl.store(row_partial_ptr + row_base + rows * tiles + tile, tl.sum(squares, axis=1), mask=rows < end)
            r += ROWS
        tl.store(col_partial_ptr + col_base + col_lanes, col_sum, mask=cols < C)
        tl.store(param_partial_ptr + k, tl.sum(tl.sum(param_sum, axis=1), axis=0))
    else:
        vector_sum = tl.zeros([ROWS * COLS], tl.float64)
        j = begin
        while j < end:
            elements = j + tl.arange(0, ROWS * COLS)
            inside = elements < end
            pv = tl.load(param + elements, mask=inside, other=0.0).to(COMPUTE).to(tl.float64)
            gv = tl.load(grad + elements, mask=inside, other=0.0).to(COMPUTE)  # squared: maximize's sign drops out
            vector_sum += pv * pv
            start = tl.load(moment + elements, mask=inside, other=0.0).to(COMPUTE)
            end_value = gv * gv
            # fusedopt::lerp (torch's two-sided formula)
            variance = tl.where(weight < 0.5, start + weight * (end_value - start),
                                end_value - (end_value - start) * (1.0 - weight))
            if DTYPE == tl.bfloat16:
                variance = rounded(variance, DTYPE)
            tl.store(moment + elements, variance.to(DTYPE), mask=inside)
            j += ROWS * COLS
        tl.store(param_partial_ptr + k, tl.sum(vector_sum, axis=0))


@triton.jit
def slice_kernel(table_ptr, n, items_ptr, slices_ptr, col_partial_ptr, row_partial_ptr, means_ptr,
                 beta2_decay: tl.float64, eps1: tl.float64, DTYPE: tl.constexpr, COMPUTE: tl.constexpr,
                 ROWS: tl.constexpr, COLS: tl.constexpr):
    """One (R, C) slice of a factored param: col_var and row_var lerped towards the column and
    row means of g² (partial sums added in item order), then mean(row_var) as stored, clamped
    to eps1, for passes B and C."""
    index = tl.program_id(0).to(tl.int64)
    entry = slices_ptr + _SLICE * index
    column = tl.load(entry)
    s = tl.load(entry + 1)
    first_item = tl.load(entry + 2)
    row_blocks = tl.load(entry + 3)
    param, grad, row_var, col_var, R, C, weight = _tensor(table_ptr, n, column, beta2_decay, DTYPE, COMPUTE)
    row_base = tl.load(items_ptr + _ITEM * first_item + 6)
    tiles = (C + COLS - 1) // COLS
    # Items of a slice are ordered by column tile, then by block of rows.
    col_lanes = tl.arange(0, COLS)
    j = 0
    while j < tiles:
        cols = j * COLS + col_lanes
        mask = cols < C
        sums = tl.zeros([COLS], tl.float64)
        b = 0
        while b < row_blocks:
            col_base = tl.load(items_ptr + _ITEM * (first_item + j * row_blocks + b) + 5)
            sums += tl.load(col_partial_ptr + col_base + col_lanes, mask=mask, other=0.0)
            b += 1
        if COMPUTE == tl.float32:
            mean = tl.div_rn(sums.to(COMPUTE), R.to(COMPUTE))
        else:
            mean = sums / R.to(tl.float64)
        start = tl.load(col_var + s * C + cols, mask=mask, other=0.0).to(COMPUTE)
        value = tl.where(weight < 0.5, start + weight * (mean - start), mean - (mean - start) * (1.0 - weight))
        if DTYPE == tl.bfloat16:
            value = rounded(value, DTYPE)
        tl.store(col_var + s * C + cols, value.to(DTYPE), mask=mask)
        j += 1
    lanes = tl.arange(0, ROWS * COLS)
    stored_sum = tl.zeros([ROWS * COLS], tl.float64)
    r = 0
    while r < R:
        mask = r + lanes < R
        rows = s * R + r + lanes
        sums = tl.zeros([ROWS * COLS], tl.float64)
        t = 0
        while t < tiles:
            sums += tl.load(row_partial_ptr + row_base + rows * tiles + t, mask=mask, other=0.0)
            t += 1
        if COMPUTE == tl.float32:
            mean = tl.div_rn(sums.to(COMPUTE), C.to(COMPUTE))
        else:
            mean = sums / C.to(tl.float64)
        start = tl.load(row_var + rows, mask=mask, other=0.0).to(COMPUTE)
        stored = tl.where(weight < 0.5, start + weight * (mean - start), mean - (mean - start) * (1.0 - weight))
        if DTYPE == tl.bfloat16:
            stored = rounded(stored, DTYPE)
        stored = stored.to(DTYPE)
        tl.store(row_var + rows, stored, mask=mask)
        stored_sum += tl.where(mask, stored.to(COMPUTE).to(tl.float64), 0.0)
        r += ROWS * COLS
    row_mean = (tl.sum(stored_sum, axis=0) / R.to(tl.float64)).to(COMPUTE)
    low = tl.full((), eps1, COMPUTE)
    tl.store(means_ptr + index, tl.where(row_mean < low, low, row_mean).to(tl.float64))


@triton.jit
def pass_b_kernel(table_ptr, n, items_ptr, means_ptr, update_partial_ptr, grad_sign: tl.float64, eps1: tl.float64,
                  DTYPE: tl.constexpr, COMPUTE: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Sum of u² over the item."""
    k = tl.program_id(0).to(tl.int64)
    update_sum = _update_pass(table_ptr, n, items_ptr, means_ptr, k, grad_sign, eps1, 0.0, 0.0, False, DTYPE,
                              COMPUTE, ROWS, COLS)
    tl.store(update_partial_ptr + k, update_sum)


@triton.jit
def tensor_kernel(table_ptr, n, tensors_ptr, param_partial_ptr, update_partial_ptr, coefficient_ptr, lr_ptr,
                  lr: tl.float64, eps2: tl.float64, d: tl.float64, COMPUTE: tl.constexpr, LR_TENSOR: tl.constexpr,
                  BLOCK: tl.constexpr):
    """One tensor: alpha = max(eps2, RMS(p)) * rho and the update's step size
    -alpha / max(1, RMS(u) / d) (adafactor_alpha, adafactor_coefficient), each norm rounded
    to COMPUTE first, as torch's .norm(2) in the param's dtype; rho = min(lr, 1/sqrt(step))."""
    column = tl.program_id(0).to(tl.int64)
    first = tl.load(tensors_ptr + _TENSOR * column)
    count = tl.load(tensors_ptr + _TENSOR * column + 1)
    if count > 0:
        numel = tl.load(table_ptr + _NUMEL * n + column).to(tl.float64)
        step = tl.load(tl.load(table_ptr + _STEP * n + column).to(tl.pointer_type(tl.float32))).to(tl.float64)
        if LR_TENSOR:
            lr = tl.load(lr_ptr)
        else:
            lr = tl.full((), lr, tl.float64)
        inverse_root = 1.0 / tl.sqrt(step)
        rho = tl.where(lr < inverse_root, lr, inverse_root)
        lanes = tl.arange(0, BLOCK)
        param_sums = tl.zeros([BLOCK], tl.float64)
        update_sums = tl.zeros([BLOCK], tl.float64)
        i = 0
        while i < count:
            mask = i + lanes < count
            param_sums += tl.load(param_partial_ptr + first + i + lanes, mask=mask, other=0.0)
            update_sums += tl.load(update_partial_ptr + first + i + lanes, mask=mask, other=0.0)
            i += BLOCK
        root_numel = tl.sqrt(numel)
        rms = tl.sqrt(tl.sum(param_sums, axis=0)).to(COMPUTE).to(tl.float64) / root_numel
        alpha = tl.where(rms > eps2, rms, eps2) * rho  # Python's max(eps2, rms)
        ratio = tl.sqrt(tl.sum(update_sums, axis=0)).to(COMPUTE).to(tl.float64) / (root_numel * d)
        tl.store(coefficient_ptr + column, -alpha / tl.where(ratio > 1.0, ratio, 1.0))


@triton.jit
def pass_c_kernel(table_ptr, n, items_ptr, means_ptr, coefficient_ptr, lr_ptr, lr: tl.float64,
                  weight_decay: tl.float64, grad_sign: tl.float64, eps1: tl.float64, DTYPE: tl.constexpr,
                  COMPUTE: tl.constexpr, LR_TENSOR: tl.constexpr, WEIGHT_DECAY: tl.constexpr, ROWS: tl.constexpr,
                  COLS: tl.constexpr):
    """p = p * (1 - lr*wd) + coefficient * u over the item."""
    k = tl.program_id(0).to(tl.int64)
    column = tl.load(items_ptr + _ITEM * k)
    if LR_TENSOR:
        lr = tl.load(lr_ptr)
    else:
        lr = tl.full((), lr, tl.float64)
    decay = tl.full((), 1.0, tl.float64)
    if WEIGHT_DECAY:  # torch's p.mul_(1 - lr * wd), skipped when wd is 0
        decay = 1.0 - lr * weight_decay
    coefficient = tl.load(coefficient_ptr + column)
    _update_pass(table_ptr, n, items_ptr, means_ptr, k, grad_sign, eps1, decay, coefficient, True, DTYPE, COMPUTE,
                 ROWS, COLS)


@triton.jit
def _update_pass(table_ptr, n, items_ptr, means_ptr, k, grad_sign, eps1, decay, coefficient, WRITE: tl.constexpr,
                 DTYPE: tl.constexpr, COMPUTE: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Item k's update u = g / sqrt(max(estimate, eps1²)) (factored_estimate, adafactor_update;
    clamp_min keeps a NaN): the sum of u² (pass B), or the new param p * decay + coefficient * u
    written (pass C, WRITE)."""
    item = items_ptr + _ITEM * k
    column = tl.load(item)
    begin = tl.load(item + 2)
    end = tl.load(item + 3)
    param, grad, moment, col_var, R, C, weight = _tensor(table_ptr, n, column, 0.0, DTYPE, COMPUTE)
    sign = tl.full((), grad_sign, COMPUTE)
    eps1_squared = tl.full((), eps1 * eps1, COMPUTE)  # squared in float64, then rounded: T(eps1 * eps1)
    decay_t = tl.full((), decay, COMPUTE)
    coefficient_t = tl.full((), coefficient, COMPUTE)
    if R > 0:
        update_sum = tl.zeros([ROWS, COLS], tl.float64)
        s = tl.load(item + 1)
        cols = tl.load(item + 4) + tl.arange(0, COLS)
        col = tl.load(col_var + s * C + cols, mask=cols < C, other=0.0).to(COMPUTE)
        mean = tl.load(means_ptr + tl.load(item + 7)).to(COMPUTE)
        r = begin
        while r < end:
            rows = r + tl.arange(0, ROWS)
            mask = (rows < end)[:, None] & (cols < C)[None, :]
            offsets = rows[:, None] * C + cols[None, :]
            g = tl.load(grad + offsets, mask=mask, other=0.0).to(COMPUTE) * sign
            row = tl.load(moment + rows, mask=rows < end, other=0.0).to(COMPUTE)
            product = row[:, None] * col[None, :]
            if COMPUTE == tl.float32:
                estimate = tl.div_rn(product, tl.broadcast_to(mean, product.shape))
            else:
                estimate = product / mean
            clamped = tl.where(estimate < eps1_squared, eps1_squared, estimate)
            if COMPUTE == tl.float32:
                u = tl.div_rn(tl.full(clamped.shape, 1.0, COMPUTE), tl.sqrt_rn(clamped)) * g
            else:
                u = (1.0 / tl.sqrt(clamped)) * g
            if WRITE:
                p = tl.load(param + offsets, mask=mask, other=0.0).to(COMPUTE)
                value = p * decay_t + coefficient_t * u
                if DTYPE == tl.bfloat16:
                    value = rounded(value, DTYPE)
                tl.store(param + offsets, value.to(DTYPE), mask=mask)
            else:
                u = tl.where(mask, u, 0.0).to(tl.float64)
                update_sum += u * u
            r += ROWS
        total = tl.sum(tl.sum(update_sum, axis=1), axis=0)
    else:
        vector_sum = tl.zeros([ROWS * COLS], tl.float64)
        j = begin
        while j < end:
            elements = j + tl.arange(0, ROWS * COLS)
            inside = elements < end
            gv = tl.load(grad + elements, mask=inside, other=0.0).to(COMPUTE) * sign
            variance = tl.load(moment + elements, mask=inside, other=0.0).to(COMPUTE)
            bounded = tl.where(variance < eps1_squared, eps1_squared, variance)
            if COMPUTE == tl.float32:
                uv = tl.div_rn(tl.full(bounded.shape, 1.0, COMPUTE), tl.sqrt_rn(bounded)) * gv
            else:
                uv = (1.0 / tl.sqrt(bounded)) * gv
            if WRITE:
                pv = tl.load(param + elements, mask=inside, other=0.0).to(COMPUTE)
                new = pv * decay_t + coefficient_t * uv
                if DTYPE == tl.bfloat16:
                    new = rounded(new, DTYPE)
                tl.store(param + elements, new.to(DTYPE), mask=inside)
            else:
                uv = tl.where(inside, uv, 0.0).to(tl.float64)
                vector_sum += uv * uv
            j += ROWS * COLS
        total = tl.sum(vector_sum, axis=0)
    return total
