"""Sparse COO grads as rows, and the validated batch a lazy (sparse-row) Adam call updates.

A grad of sparse dims k is coalesced by torch (repeated indices summed, indices sorted:
torch.optim.SparseAdam does the same, since the update is not linear in the grad), then
read as rows: row r is the element r of the param's first k dims flattened, holding
prod(dense dims) contiguous elements of the (contiguous) param. Everything that makes the
kernels' raw addresses safe is checked here before any native code runs: every index in
range, indices strictly increasing (unique rows, so parallel rows never write one
address twice), shapes, dtypes, devices, contiguity, and no tensor written twice.
"""
from __future__ import annotations

import array
import math
from typing import List, Optional, Sequence, Tuple

import torch

from ._buckets import WrittenSpans
from ._layout import (SPARSE_EXP_AVG_ROW, SPARSE_EXP_AVG_SQ_ROW, SPARSE_INDEX_ROW, SPARSE_MAX_EXP_AVG_SQ_ROW,
                      SPARSE_NNZ_ROW, SPARSE_PARAM_ROW, SPARSE_PARAM_ROWS_ROW, SPARSE_ROW_LEN_ROW, SPARSE_STEP_ROW,
                      SPARSE_TABLE_ROWS, SPARSE_VALUES_ROW, STEP_DTYPE, SparseRowBatch)
from ._memory import storage_problem

KERNEL_DTYPES = (torch.float32, torch.float64)  # what the compiled sparse-row kernels (cpu, cuda, triton) update


def kernel_dtype_problem(dtype: torch.dtype) -> Optional[str]:
    """Why the compiled sparse-row kernels cannot update params of `dtype`, or None."""
    if dtype not in KERNEL_DTYPES:
        return "its lazy (sparse-row) Adam kernel updates float32 and float64 params"
    return None


def grad_rows(grad: torch.Tensor, param: torch.Tensor, name: str) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """(row indices, row values, row length) of a sparse COO grad of `param`: indices int64,
    unique and sorted; values (rows present, row length), contiguous, in the param's dtype."""
    if grad.layout != torch.sparse_coo:
        raise RuntimeError(f"{name}: lazy mode needs sparse COO grads, got layout {grad.layout}")
    if grad.dtype != param.dtype:
        raise RuntimeError(f"{name}: a grad has dtype {grad.dtype}, but its param has dtype {param.dtype}")
    if grad.device != param.device:
        raise RuntimeError(f"{name}: a grad is on {grad.device}, but its param is on {param.device}")
    if grad.shape != param.shape:
        raise RuntimeError(f"{name}: a sparse grad has shape {tuple(grad.shape)}, but its param has shape "
                           f"{tuple(param.shape)}")
    sparse_dims = grad.sparse_dim()
    row_shape = tuple(param.shape[:sparse_dims])
    row_length = math.prod(param.shape[sparse_dims:])
    # Indices in range before torch sees them: torch's own coalesce() writes out of bounds
    # on a negative index (a grad built with check_invariants=False).
    raw = grad._indices()
    if raw.numel():
        sizes = torch.tensor(row_shape, dtype=torch.int64, device=raw.device)
        low, high = raw.amin(1), raw.amax(1)
        if not bool((low >= 0).all() & (high < sizes).all()):  # one host read when all is well
            raise IndexError(f"{name}: a sparse grad's indices span {list(zip(low.tolist(), high.tolist()))} per "
                             f"sparse dim, outside the param's shape {row_shape}; every index must lie in [0, size)")
    trusted = not grad.is_coalesced()  # coalesce() will sort and merge; a coalesced flag is only a claim
    coalesced = grad.coalesce()  # sums repeated indices; returns grad itself if flagged coalesced
    indices, values = coalesced._indices(), coalesced._values()
    nnz = indices.shape[1]
    if tuple(values.shape) != (nnz, *param.shape[sparse_dims:]):
        raise RuntimeError(f"{name}: a sparse grad's values have shape {tuple(values.shape)}, expected "
                           f"{(nnz, *param.shape[sparse_dims:])} for {nnz} indices into shape {tuple(param.shape)}")
    # Row number of each index: its position in the param's first sparse_dims dims, flattened.
    if sparse_dims == 1:
        rows = indices[0]
    elif sparse_dims == 0:
        rows = torch.zeros(nnz, dtype=torch.int64, device=indices.device)
    else:
        strides = [math.prod(row_shape[d + 1:]) for d in range(sparse_dims)]
        rows = (indices * torch.tensor(strides, dtype=torch.int64, device=indices.device)[:, None]).sum(0)
    if not trusted and nnz > 1 and not bool((rows[1:] > rows[:-1]).all()):
        raise RuntimeError(f"{name}: a sparse grad marked coalesced has unsorted or repeated indices; build it "
                           "without claiming it is coalesced (torch's coalesce() then sums repeated indices)")
    if row_length == 0:  # a zero-size dense dim: the rows hold nothing to update (torch steps the counter only)
        rows, values = rows[:0], values.reshape(-1)[:0]
        nnz = 0
    return rows.contiguous(), values.reshape(nnz, row_length).contiguous(), row_length


def _checked_state(state: dict, key: str, param: torch.Tensor, name: str) -> torch.Tensor:
    """state[key] as a tensor the kernels can index like the param (contiguous copy where
    only the layout differs, as after a checkpoint saved with another layout)."""
    t = state[key]
    if not isinstance(t, torch.Tensor) or t.dtype != param.dtype or t.device != param.device \
            or t.shape != param.shape or t.layout != torch.strided:
        raise RuntimeError(f"{name}: state '{key}' of a param must be a dense {param.dtype} tensor of shape "
                           f"{tuple(param.shape)} on {param.device}")
    if not t.is_contiguous():
        t = state[key] = t.contiguous()
    problem = storage_problem(t)
    if problem:
        raise RuntimeError(f"{name}: state '{key}' of a param {problem}")
    return t


def checked_step(state: dict, param: torch.Tensor, name: str) -> torch.Tensor:
    """state['step'] as a float32 0-dim tensor beside the param (a checkpoint of
    torch.optim.SparseAdam holds a Python int)."""
    step = state["step"]
    if not (isinstance(step, torch.Tensor) and step.dtype == STEP_DTYPE and step.device == param.device
            and step.dim() == 0):
        if isinstance(step, torch.Tensor) and step.numel() != 1:
            raise RuntimeError(f"{name}: state 'step' of a param must hold one number, got shape {tuple(step.shape)}")
        step = state["step"] = torch.tensor(float(step.item() if isinstance(step, torch.Tensor) else step),
                                            dtype=STEP_DTYPE, device=param.device)
    return step


def sparse_row_batch(params: Sequence[torch.Tensor], states: Sequence[dict], amsgrad: bool,
                     name: str) -> SparseRowBatch:
    """The batch of params (one device and dtype, each with a sparse grad and initialised
    state) for one kernel call, every address in its table checked."""
    first = params[0]
    indices: List[torch.Tensor] = []
    values: List[torch.Tensor] = []
    lengths: List[int] = []
    steps, exp_avgs, exp_avg_sqs, maxes = [], [], [], []
    for p, s in zip(params, states):
        if p.device != first.device or p.dtype != first.dtype:
            raise AssertionError("a sparse-row batch holds one device and dtype")
        if not p.is_contiguous():
            raise RuntimeError(f"{name}: lazy mode updates rows of contiguous params; a param of shape "
                               f"{tuple(p.shape)} has strides {p.stride()} (make it contiguous)")
        problem = storage_problem(p)
        if problem:
            raise RuntimeError(f"{name}: a param of shape {tuple(p.shape)} {problem}")
        rows, vals, length = grad_rows(p.grad, p, name)
        indices.append(rows)
        values.append(vals)
        lengths.append(length)
        steps.append(checked_step(s, p, name))
        exp_avgs.append(_checked_state(s, "exp_avg", p, name))
        exp_avg_sqs.append(_checked_state(s, "exp_avg_sq", p, name))
        if amsgrad:
            maxes.append(_checked_state(s, "max_exp_avg_sq", p, name))
    written = WrittenSpans([*params, *steps, *exp_avgs, *exp_avg_sqs, *maxes], name)
    if written.overlapped_by_tensors([*indices, *values]):
        raise RuntimeError(f"{name}: a sparse grad's indices or values share memory with a param or a state tensor")
    n = len(params)
    table = array.array("q", bytes(8 * SPARSE_TABLE_ROWS * n))

    def fill(row: int, values_of_row: List[int]) -> None:
        table[row * n:(row + 1) * n] = array.array("q", values_of_row)

    fill(SPARSE_NNZ_ROW, [t.numel() for t in indices])
    fill(SPARSE_ROW_LEN_ROW, lengths)
    fill(SPARSE_PARAM_ROWS_ROW, [p.numel() // length if length else 0 for p, length in zip(params, lengths)])
    fill(SPARSE_INDEX_ROW, [t.data_ptr() for t in indices])
    fill(SPARSE_PARAM_ROW, [t.data_ptr() for t in params])
    fill(SPARSE_VALUES_ROW, [t.data_ptr() for t in values])
    fill(SPARSE_STEP_ROW, [t.data_ptr() for t in steps])
    fill(SPARSE_EXP_AVG_ROW, [t.data_ptr() for t in exp_avgs])
    fill(SPARSE_EXP_AVG_SQ_ROW, [t.data_ptr() for t in exp_avg_sqs])
    fill(SPARSE_MAX_EXP_AVG_SQ_ROW, [t.data_ptr() for t in maxes] if amsgrad else [0] * n)
    return SparseRowBatch(list(params), indices, values, steps, exp_avgs, exp_avg_sqs, maxes if amsgrad else None,
                          lengths, first.device, first.dtype, table)


def group_by_device_and_dtype(params: Sequence[torch.Tensor]) -> List[List[int]]:
    """Positions of params sharing device and dtype, in first-appearance order: one call each."""
    groups: dict = {}
    for i, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(i)
    return list(groups.values())


__all__ = ["grad_rows", "checked_step", "sparse_row_batch", "group_by_device_and_dtype"]
