"""Adafactor on Triton, host side: the work tables and workspaces of a bucket, and the five
launches of one step (the kernels and what each pass does: _factored_kernel.py).

A step is `torch._foreach_add_(steps, 1)` (the counters, before the kernels read them, as in
the element-wise launcher) then passes A, slice, B, tensor and C, each one launch over the
whole bucket, on the current stream: no host sync, whatever the number of tensors.

What is cached: the device copy of the FactoredBatch's address table, by the identity of its
host table (FactoredTables builds a new one whenever an address changes); and the work
tables with their workspaces, by the bucket's geometry (element counts, rows, columns), so a
step whose grads were re-created reuses them. Workspaces are written before they are read
within a step, on one stream; two buckets of the same geometry on one stream share them, and
each stream has its own (the key holds the current stream), so steps of two optimizers on two
streams never write one workspace at once, and the caching allocator never sees memory
allocated on one stream used on another.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
import triton.language as tl

from ..._factored import COLS, FactoredBatch, FactoredConfig, NUMEL, ROWS
from . import _factored_kernel as kernels


@dataclass(frozen=True)
class FactoredLaunchConfig:
    """rows x cols: the tile a program of passes A, B and C loads at once (cols: the width of
    a column tile of a factored param); item: about how many elements one such program
    covers. Chosen by reasoning, not measured (no GPU was at hand): 8 x 256 tiles (16
    elements per thread over 4 warps, 1 KB rows of float32), 64K elements per item as ATen's
    chunks, so GPT-2-sized tensors give a GPU's SMs thousands of programs while the slice
    kernel adds few partials per column."""

    rows: int = 8
    cols: int = 256
    item: int = 1 << 16
    num_warps: int = 4

    def __post_init__(self):
        for size in (self.rows, self.cols):
            if size < 1 or size & (size - 1):
                raise ValueError(f"invalid factored launch configuration {self}: rows and cols must be powers of two")
        if self.rows * self.cols < 16 or self.item < 1 or self.num_warps < 1:
            raise ValueError(f"invalid factored launch configuration {self}: tiles of at least 16 elements")

    @property
    def block(self) -> int:
        return self.rows * self.cols


FACTORED_LAUNCH_CONFIG = FactoredLaunchConfig()


@dataclass(frozen=True)
class _Plan:
    """The work tables (int64, on the device) and float64 workspaces of one geometry."""

    items: torch.Tensor  # [count, ITEM_FIELDS]
    slices: torch.Tensor  # [slice count, SLICE_FIELDS]
    tensors: torch.Tensor  # [n, TENSOR_FIELDS]
    item_count: int
    slice_count: int
    param_partial: torch.Tensor  # [count]
    update_partial: torch.Tensor  # [count]
    col_partial: torch.Tensor  # column sums of g² per factored item, its tile's width each
    row_partial: torch.Tensor  # row sums of g² per row and column tile
    means: torch.Tensor  # clamped mean of row_var per slice
    coefficient: torch.Tensor  # [n]: the update's step size per tensor


def _plan(numels: List[int], rows: List[int], cols: List[int], config: FactoredLaunchConfig,
          device: torch.device) -> _Plan:
    width_max, block = config.cols, config.block
    items: List[Tuple[int, ...]] = []
    slices: List[Tuple[int, int, int, int]] = []
    tensors: List[Tuple[int, int]] = []
    col_total = row_total = 0
    for column, (numel, R, C) in enumerate(zip(numels, rows, cols)):
        first = len(items)
        if numel and R:  # factored: slices, then column tiles, then blocks of rows
            lead = numel // (R * C)
            tiles = -(-C // width_max)
            rows_per_item = max(1, config.item // min(C, width_max))
            row_blocks = -(-R // rows_per_item)
            row_base = row_total
            row_total += lead * R * tiles
            for s in range(lead):
                slices.append((column, s, len(items), row_blocks))
                for tile in range(tiles):
                    first_col = tile * width_max
                    width = min(width_max, C - first_col)
                    for r in range(0, R, rows_per_item):
                        items.append((column, s, s * R + r, s * R + min(R, r + rows_per_item), first_col, col_total,
                                      row_base, len(slices) - 1))
                        col_total += width
        elif numel:  # a vector (or a 0-dim param): ranges of elements
            span = max(block, config.item // block * block)
            for j in range(0, numel, span):
                items.append((column, 0, j, min(numel, j + span), 0, 0, 0, 0))
        tensors.append((first, len(items) - first))

    def table(rows_, width):
        return torch.tensor(rows_ or [(0,) * width], dtype=torch.int64).reshape(-1, width).to(device)

    def workspace(size):
        return torch.empty(max(size, 1), dtype=torch.float64, device=device)

    return _Plan(table(items, kernels.ITEM_FIELDS), table(slices, kernels.SLICE_FIELDS),
                 table(tensors, kernels.TENSOR_FIELDS), len(items), len(slices), workspace(len(items)),
                 workspace(len(items)), workspace(col_total), workspace(row_total), workspace(len(slices)),
                 workspace(len(numels)))


class _Cache:
    """Small LRU of plans by geometry and of device tables by host table."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self.plans: dict = {}
        self.tables: dict = {}

    @staticmethod
    def _put(store: dict, key, value, capacity: int) -> None:
        store[key] = value
        if len(store) > capacity:
            store.pop(next(iter(store)))

    def get(self, batch: FactoredBatch, config: FactoredLaunchConfig) -> Tuple[torch.Tensor, _Plan]:
        stream = _current_stream(batch.device)
        key = (id(batch.table), batch.device, stream, config)
        hit = self.tables.get(key)
        if hit is not None and hit[0] is batch.table:
            return hit[1], hit[2]
        n = len(batch)
        host = torch.frombuffer(batch.table, dtype=torch.int64).view(-1, n)
        numels, rows, cols = (host[row].tolist() for row in (NUMEL, ROWS, COLS))
        geometry = (tuple(numels), tuple(rows), tuple(cols), batch.device, stream, config)
        plan = self.plans.get(geometry)
        if plan is None:
            plan = _plan(numels, rows, cols, config, batch.device)
            self._put(self.plans, geometry, plan, self.capacity)
        device_table = host.reshape(-1).to(batch.device, non_blocking=True, copy=True)
        # The host table is kept alive with its entry, so its id is not reused while cached.
        self._put(self.tables, key, (batch.table, device_table, plan), 4 * self.capacity)
        return device_table, plan


def _current_stream(device: torch.device):
    """The stream this step's launches go to (None on the CPU, where the interpreter runs them
    in order)."""
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None


_cache = _Cache()

_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
           torch.bfloat16: tl.bfloat16}


def update_factored(batch: FactoredBatch, c: FactoredConfig) -> None:
    """One Adafactor step over every tensor of the batch (step counters included)."""
    lr_tensor = c.lr_tensor
    if lr_tensor is not None and (lr_tensor.dtype != torch.float64 or lr_tensor.numel() != 1
                                  or lr_tensor.device != batch.device):
        raise RuntimeError(f"lr_tensor must be a one-element float64 tensor on {batch.device}")
    if batch.dtype not in _DTYPES:
        raise RuntimeError(f"the Triton Adafactor kernels take {', '.join(map(str, _DTYPES))} params, "
                           f"not {batch.dtype}")
    torch._foreach_add_(batch.steps, 1.0)
    config = FACTORED_LAUNCH_CONFIG
    table, plan = _cache.get(batch, config)
    if not plan.item_count:
        return  # every tensor is empty: only the counters advance
    n = len(batch)
    dtype = _DTYPES[batch.dtype]
    compute = tl.float64 if dtype == tl.float64 else tl.float32
    lr_ptr = table if lr_tensor is None else lr_tensor  # never read without LR_TENSOR
    lr = 0.0 if lr_tensor is not None else float(c.lr)
    sign = -1.0 if c.maximize else 1.0
    common = dict(num_warps=config.num_warps, enable_fp_fusion=False)
    kernels.pass_a_kernel[(plan.item_count,)](
        table, n, plan.items, plan.param_partial, plan.col_partial, plan.row_partial, float(c.beta2_decay),
        DTYPE=dtype, COMPUTE=compute, ROWS=config.rows, COLS=config.cols, **common)
    if plan.slice_count:
        kernels.slice_kernel[(plan.slice_count,)](
            table, n, plan.items, plan.slices, plan.col_partial, plan.row_partial, plan.means, float(c.beta2_decay),
            float(c.eps1), DTYPE=dtype, COMPUTE=compute, ROWS=config.rows, COLS=config.cols, **common)
    kernels.pass_b_kernel[(plan.item_count,)](
        table, n, plan.items, plan.means, plan.update_partial, sign, float(c.eps1), DTYPE=dtype, COMPUTE=compute,
        ROWS=config.rows, COLS=config.cols, **common)
    kernels.tensor_kernel[(n,)](
        table, n, plan.tensors, plan.param_partial, plan.update_partial, plan.coefficient, lr_ptr, lr,
        float(c.eps2), float(c.d), COMPUTE=compute, LR_TENSOR=lr_tensor is not None, BLOCK=config.block, **common)
    kernels.pass_c_kernel[(plan.item_count,)](
        table, n, plan.items, plan.means, plan.coefficient, lr_ptr, lr, float(c.weight_decay), sign, float(c.eps1),
        DTYPE=dtype, COMPUTE=compute, LR_TENSOR=lr_tensor is not None, WEIGHT_DECAY=c.weight_decay != 0,
        ROWS=config.rows, COLS=config.cols, **common)
