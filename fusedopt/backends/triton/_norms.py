"""The norm pass of a kind with one (OptimizerSpec.norm_pass: LAMB) on Triton, for
Backend.norms: one program per 65,536-element block of a tensor (fusedopt/reduce.h's blocks)
computes the kind's two per-element terms (`norm_terms`, from the param, the transformed
grad and the states, for the coming step: counter + 1), accumulated in float64 and stored
as the block's pair of partials; a second launch, one program per tensor, adds its partials
in block order. Nothing but the partials and the result is written; no host sync."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _int8, _kernel
from ._kernel import _GRAD_ROW, _NUMEL_ROW, _PARAM_ROW, _STATE_ROW, _STEP_ROW  # the table rows, as constexprs
from ._math import div
from ._reduce import LANES, SUM_BLOCK


@triton.jit
def _norm_blocks_kernel(
        table_ptr, work_ptr, n, partials_ptr, grad_scale_ptr, clip_coef_ptr, tensor_clip_ptr, lr_ptr,
        lr: tl.float64, clip_value: tl.float64,
        h0: tl.float64, h1: tl.float64, h2: tl.float64, h3: tl.float64,
        h4: tl.float64, h5: tl.float64, h6: tl.float64, h7: tl.float64,
        COEFFICIENTS: tl.constexpr, TERMS: tl.constexpr, SLOT: tl.constexpr, OPTIONS: tl.constexpr,
        DTYPE: tl.constexpr, STATE: tl.constexpr, COMPUTE: tl.constexpr, NUM_STATES: tl.constexpr,
        MASTER: tl.constexpr, GRAD_SCALE: tl.constexpr, CLIP_COEF: tl.constexpr, TENSOR_CLIP: tl.constexpr,
        CLIP_VALUE: tl.constexpr, LR_TENSOR: tl.constexpr, LANES: tl.constexpr, CHUNK: tl.constexpr,
        tables_ptr, NUM_SCALARS: tl.constexpr, INT8: tl.constexpr, SIGNED: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    column = tl.load(work_ptr + 2 * pid)
    start = tl.load(work_ptr + 2 * pid + 1)
    end = tl.minimum(start + CHUNK, tl.load(table_ptr + _NUMEL_ROW * n + column))
    param_ptr = _kernel._row_pointer(table_ptr, n, _PARAM_ROW, column, DTYPE, False)
    grad_ptr = _kernel._row_pointer(table_ptr, n, _GRAD_ROW, column, DTYPE, False)
    states = (_kernel._state_pointer(table_ptr, n, 0, column, param_ptr, NUM_STATES, STATE, False),
              _kernel._state_pointer(table_ptr, n, 1, column, param_ptr, NUM_STATES, STATE, False),
              _kernel._state_pointer(table_ptr, n, 2, column, param_ptr, NUM_STATES, STATE, False),
              _kernel._state_pointer(table_ptr, n, 3, column, param_ptr, NUM_STATES, STATE, False))
    if MASTER:
        master_ptr = _kernel._row_pointer(table_ptr, n, _STATE_ROW + NUM_STATES, column, tl.float32, False)
    else:
        master_ptr = param_ptr
    first_scale = _STATE_ROW + NUM_STATES + MASTER + NUM_SCALARS  # 8-bit states' absmax rows
    scales = (_kernel._scale_pointer(table_ptr, n, 0, column, param_ptr, NUM_STATES, first_scale, INT8),
              _kernel._scale_pointer(table_ptr, n, 1, column, param_ptr, NUM_STATES, first_scale, INT8),
              _kernel._scale_pointer(table_ptr, n, 2, column, param_ptr, NUM_STATES, first_scale, INT8),
              _kernel._scale_pointer(table_ptr, n, 3, column, param_ptr, NUM_STATES, first_scale, INT8))
    step = tl.load(_kernel._row_pointer(table_ptr, n, _STEP_ROW, column, tl.float32, False)) + 1.0
    if LR_TENSOR:
        lr = tl.load(lr_ptr)
    else:
        lr = tl.full((), lr, tl.float64)
    coefficients = COEFFICIENTS(step, lr, (h0, h1, h2, h3, h4, h5, h6, h7), SLOT, OPTIONS, COMPUTE)
    divisor, multiplier = _kernel._grad_factors(grad_scale_ptr, clip_coef_ptr, GRAD_SCALE,
                                                CLIP_COEF and not TENSOR_CLIP, COMPUTE)
    if TENSOR_CLIP:
        multiplier = tl.load(tensor_clip_ptr + column).to(COMPUTE)
    bound = tl.full((), clip_value, COMPUTE)
    sum_a = tl.zeros((LANES,), tl.float64)
    sum_b = tl.zeros((LANES,), tl.float64)
    for k in range(0, CHUNK // LANES):
        offsets = start + k * LANES + tl.arange(0, LANES)
        mask = offsets < end
        param = _kernel._load_param(param_ptr, master_ptr, offsets, mask, MASTER, COMPUTE)
        grad = tl.load(grad_ptr + offsets, mask=mask).to(COMPUTE)
        if GRAD_SCALE:
            grad = div(grad, divisor)
        if CLIP_COEF:
            grad = grad * multiplier
        if CLIP_VALUE:
            grad = tl.where(grad > bound, bound, grad)
            grad = tl.where(grad < -bound, -bound, grad)
        rows = offsets // _int8.QBLOCK  # each element's quantization block (8-bit states)
        values = (_kernel._load_state(0, states, scales, tables_ptr, offsets, mask, rows, mask, param, NUM_STATES,
                                      STATE, COMPUTE, INT8, SIGNED),
                  _kernel._load_state(1, states, scales, tables_ptr, offsets, mask, rows, mask, param, NUM_STATES,
                                      STATE, COMPUTE, INT8, SIGNED),
                  _kernel._load_state(2, states, scales, tables_ptr, offsets, mask, rows, mask, param, NUM_STATES,
                                      STATE, COMPUTE, INT8, SIGNED),
                  _kernel._load_state(3, states, scales, tables_ptr, offsets, mask, rows, mask, param, NUM_STATES,
                                      STATE, COMPUTE, INT8, SIGNED))
        a, b = TERMS(param, grad, values, coefficients, OPTIONS, COMPUTE)
        sum_a += tl.where(mask, a, 0.0)
        sum_b += tl.where(mask, b, 0.0)
    tl.store(partials_ptr + 2 * pid, tl.sum(sum_a, axis=0))
    tl.store(partials_ptr + 2 * pid + 1, tl.sum(sum_b, axis=0))


@triton.jit
def _tensor_sums_kernel(partials_ptr, first_ptr, out_ptr):
    i = tl.program_id(0).to(tl.int64)
    b = tl.load(first_ptr + i)
    end = tl.load(first_ptr + i + 1)
    total_a = tl.full((), 0.0, tl.float64)
    total_b = tl.full((), 0.0, tl.float64)
    while b < end:  # in block order
        total_a += tl.load(partials_ptr + 2 * b)
        total_b += tl.load(partials_ptr + 2 * b + 1)
        b += 1
    tl.store(out_ptr + 2 * i, total_a)
    tl.store(out_ptr + 2 * i + 1, total_b)


def norms(module, table: torch.Tensor, batch, config, dtype, master: bool, num_states: int, slots,
          state, code_tables=None, signed: int = 0) -> torch.Tensor:
    """float64 [len(batch), 2]: per tensor the sums of `module.norm_terms`' two terms. `state`:
    the states' storage type, the update's (bfloat16 with bf16 states), so both read the same.
    8-bit states: `code_tables` is _int8.code_tables_on(device) (None otherwise),
    `signed` the update's SIGNED mask; the states are dequantized as the update reads them."""
    device = batch.device
    n = len(batch)
    numels = torch.tensor([p.numel() for p in batch.params], dtype=torch.int64)
    chunks = (numels + SUM_BLOCK - 1) // SUM_BLOCK
    first = torch.zeros(n + 1, dtype=torch.int64)
    torch.cumsum(chunks, 0, out=first[1:])
    programs = int(first[-1])
    columns = torch.repeat_interleave(torch.arange(n), chunks)
    starts = (torch.arange(programs) - first[columns]) * SUM_BLOCK
    work = torch.stack([columns, starts], dim=1).to(device, non_blocking=True)
    partials = torch.empty(max(2 * programs, 2), dtype=torch.float64, device=device)
    out = torch.empty(n, 2, dtype=torch.float64, device=device)
    scalars, options = module.arguments(config)
    hyper = tuple(map(float, scalars)) + (0.0,) * (8 - len(scalars))
    transform = config.grad_transform
    pointers = [table if t is None else t for t in (transform.grad_scale, transform.clip_coef, transform.tensor_clip,
                                                     config.lr_tensor)]
    if programs:
        _norm_blocks_kernel[(programs,)](
            table, work, n, partials, *pointers, float(config.lr), float(transform.clip_value or 0.0), *hyper,
            COEFFICIENTS=module.coefficients, TERMS=module.norm_terms, SLOT=slots(type(scalars)), OPTIONS=options,
            DTYPE=dtype, STATE=state,
            COMPUTE=tl.float64 if dtype == tl.float64 else tl.float32, NUM_STATES=num_states, MASTER=master,
            GRAD_SCALE=transform.grad_scale is not None,
            CLIP_COEF=transform.clip_coef is not None or transform.tensor_clip is not None,
            TENSOR_CLIP=transform.tensor_clip is not None, CLIP_VALUE=transform.clip_value is not None,
            LR_TENSOR=config.lr_tensor is not None, LANES=LANES, CHUNK=SUM_BLOCK,
            tables_ptr=table if code_tables is None else code_tables, NUM_SCALARS=len(batch.scalars),
            INT8=code_tables is not None, SIGNED=signed, enable_fp_fusion=False,
        )
    _tensor_sums_kernel[(n,)](partials, first.to(device, non_blocking=True), out, num_warps=1)
    return out
