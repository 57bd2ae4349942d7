"""Lazy (sparse-row) Adam on Triton: one launch per batch, one program per present row.

The batch's sparse-row table (fusedopt/_layout.py, SPARSE_* rows) goes to the device with
a work map of (column, position) pairs, one per present row of every tensor. A program
reads its tensor's addresses from the table, its row index, the tensor's (already
advanced) step counter, computes Adam's coefficients with adam.py's `coefficients` (the C++
header's, in float64, rounded once) and walks the row in blocks: the arithmetic of
csrc/include/fusedopt/sparse_rows.h (torch.optim.SparseAdam's order), IEEE division and
square root, no multiply-add contraction.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import triton
import triton.language as tl

from ..._layout import (SPARSE_EXP_AVG_ROW, SPARSE_EXP_AVG_SQ_ROW, SPARSE_INDEX_ROW, SPARSE_MAX_EXP_AVG_SQ_ROW,
                        SPARSE_NNZ_ROW, SPARSE_PARAM_ROW, SPARSE_ROW_LEN_ROW, SPARSE_STEP_ROW, SPARSE_VALUES_ROW,
                        SparseRowBatch, UpdateConfig)
from . import adam
from ._math import div, signed_grad, sqrt

_ROW_LEN = tl.constexpr(SPARSE_ROW_LEN_ROW)
_INDEX = tl.constexpr(SPARSE_INDEX_ROW)
_PARAM = tl.constexpr(SPARSE_PARAM_ROW)
_VALUES = tl.constexpr(SPARSE_VALUES_ROW)
_STEP = tl.constexpr(SPARSE_STEP_ROW)
_EXP_AVG = tl.constexpr(SPARSE_EXP_AVG_ROW)
_EXP_AVG_SQ = tl.constexpr(SPARSE_EXP_AVG_SQ_ROW)
_MAX_EXP_AVG_SQ = tl.constexpr(SPARSE_MAX_EXP_AVG_SQ_ROW)
BLOCK = 128


@triton.jit
def _pointer(table_ptr, n, row, column, DTYPE: tl.constexpr):
    return tl.load(table_ptr + row * n + column).to(tl.pointer_type(DTYPE))


@triton.jit
def _sparse_adam_kernel(table_ptr, work_ptr, n, lr: tl.float64, h0: tl.float64, h1: tl.float64, h2: tl.float64,
                        h3: tl.float64, h4: tl.float64, SLOT: tl.constexpr, OPTIONS: tl.constexpr, DTYPE: tl.constexpr,
                        BLOCK: tl.constexpr):
    """Scalars arrive as float64 (Triton would pass a Python float as float32)."""
    pid = tl.program_id(0).to(tl.int64)
    column = tl.load(work_ptr + 2 * pid)
    position = tl.load(work_ptr + 2 * pid + 1)
    length = tl.load(table_ptr + _ROW_LEN * n + column)
    row = tl.load(_pointer(table_ptr, n, _INDEX, column, tl.int64) + position)
    step = tl.load(_pointer(table_ptr, n, _STEP, column, tl.float32))
    lr = tl.full((), lr, tl.float64)
    k = adam.coefficients(step, lr, (h0, h1, h2, h3, h4), SLOT, OPTIONS, DTYPE)
    grad_sign, l2_decay, param_scale, one_minus_beta1, _, one_minus_beta2, eps, neg_step_size, denom_divisor = k
    start = row * length
    param_ptr = _pointer(table_ptr, n, _PARAM, column, DTYPE) + start
    grad_ptr = _pointer(table_ptr, n, _VALUES, column, DTYPE) + position * length
    exp_avg_ptr = _pointer(table_ptr, n, _EXP_AVG, column, DTYPE) + start
    exp_avg_sq_ptr = _pointer(table_ptr, n, _EXP_AVG_SQ, column, DTYPE) + start
    max_ptr = _pointer(table_ptr, n, _MAX_EXP_AVG_SQ if OPTIONS.amsgrad else _EXP_AVG_SQ, column, DTYPE) + start
    for first in range(0, length, BLOCK):
        offsets = first + tl.arange(0, BLOCK)
        mask = offsets < length
        p = tl.load(param_ptr + offsets, mask=mask)
        g = signed_grad(tl.load(grad_ptr + offsets, mask=mask), p, grad_sign, l2_decay, OPTIONS.l2)
        p = p * param_scale
        m = tl.load(exp_avg_ptr + offsets, mask=mask)
        m = m + (g - m) * one_minus_beta1
        v = tl.load(exp_avg_sq_ptr + offsets, mask=mask)
        v = v + (g * g - v) * one_minus_beta2
        tl.store(exp_avg_ptr + offsets, m, mask=mask)
        tl.store(exp_avg_sq_ptr + offsets, v, mask=mask)
        second_moment = v
        if OPTIONS.amsgrad:
            v_max = tl.load(max_ptr + offsets, mask=mask)
            second_moment = tl.where(v_max > v, v_max, v)
            tl.store(max_ptr + offsets, second_moment, mask=mask)
        denom = div(sqrt(second_moment), denom_divisor) + eps
        tl.store(param_ptr + offsets, p + neg_step_size * div(m, denom), mask=mask)


_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


def sparse_adam_update(batch: SparseRowBatch, hyper: Mapping[str, Any], lr: float) -> None:
    torch._foreach_add_(batch.steps, 1.0)  # before the launch, which reads the new counters
    counts = torch.tensor([t.numel() for t in batch.indices], dtype=torch.int64)
    total = int(counts.sum())
    if total == 0:
        return
    columns = torch.repeat_interleave(torch.arange(len(batch)), counts)
    positions = torch.arange(total) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    work = torch.stack([columns, positions], 1).reshape(-1).to(batch.device)
    table = torch.frombuffer(batch.table, dtype=torch.int64).to(batch.device, copy=True)
    scalars, options = adam.arguments(UpdateConfig(dict(hyper), float(lr)))
    slots = type(scalars)(*range(len(scalars)))
    _sparse_adam_kernel[(total,)](table, work, len(batch), float(lr), *map(float, scalars), SLOT=slots,
                                  OPTIONS=options, DTYPE=_DTYPES[batch.dtype], BLOCK=BLOCK, enable_fp_fusion=False)
