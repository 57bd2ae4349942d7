"""Per-tensor sums of squares on Triton (Backend.sum_of_squares_per_tensor): one program per
65,536-element block of a tensor (fusedopt/reduce.h's blocks) accumulates the squares in
float64 and stores its partial; a second launch, one program per tensor, adds its partials in
block order. Deterministic (a fixed reduction per block, a fixed order over blocks) and with
no host sync; the partials equal the CPU/CUDA kernels' to float64 rounding, not bit for bit
(the order inside a block is tl.sum's)."""
from __future__ import annotations

import os
from typing import List

import torch
import triton
import triton.language as tl

SUM_BLOCK = 65536  # kSumBlock of csrc/include/fusedopt/reduce.h
# Under Triton's interpreter one whole block per iteration (numpy is fast on long vectors, slow
# on loop iterations); on a GPU 1,024 lanes, 64 iterations a block.
LANES = SUM_BLOCK if os.environ.get("TRITON_INTERPRET") == "1" else 1024


@triton.jit
def _block_sums_kernel(table_ptr, work_ptr, n, partials_ptr, DTYPE: tl.constexpr, LANES: tl.constexpr,
                       CHUNK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    column = tl.load(work_ptr + 2 * pid)
    start = tl.load(work_ptr + 2 * pid + 1)
    end = tl.minimum(start + CHUNK, tl.load(table_ptr + column))
    x_ptr = tl.load(table_ptr + n + column).to(tl.pointer_type(DTYPE))
    acc = tl.zeros((LANES,), tl.float64)
    for k in range(0, CHUNK // LANES):
        offsets = start + k * LANES + tl.arange(0, LANES)
        x = tl.load(x_ptr + offsets, mask=offsets < end, other=0.0).to(tl.float64)
        acc += x * x
    tl.store(partials_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def _tensor_sums_kernel(partials_ptr, first_ptr, out_ptr):
    i = tl.program_id(0).to(tl.int64)
    b = tl.load(first_ptr + i)
    end = tl.load(first_ptr + i + 1)
    total = tl.full((), 0.0, tl.float64)
    while b < end:  # in block order, as the CPU and CUDA kernels
        total += tl.load(partials_ptr + b)
        b += 1
    tl.store(out_ptr + i, total)


def sum_of_squares_per_tensor(tensors: List[torch.Tensor], dtype) -> torch.Tensor:
    """`tensors`: dense, contiguous, of one dtype (Triton's `dtype`) on one device, checked by the caller."""
    device = tensors[0].device
    numels = torch.tensor([t.numel() for t in tensors], dtype=torch.int64)
    chunks = (numels + SUM_BLOCK - 1) // SUM_BLOCK
    first = torch.zeros(len(tensors) + 1, dtype=torch.int64)
    torch.cumsum(chunks, 0, out=first[1:])
    programs = int(first[-1])
    columns = torch.repeat_interleave(torch.arange(len(tensors)), chunks)
    starts = (torch.arange(programs) - first[columns]) * SUM_BLOCK
    table = torch.cat([numels, torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)])
    table = table.to(device, non_blocking=True)
    work = torch.stack([columns, starts], dim=1).to(device, non_blocking=True)
    partials = torch.empty(max(programs, 1), dtype=torch.float64, device=device)
    out = torch.empty(len(tensors), dtype=torch.float64, device=device)
    if programs:
        _block_sums_kernel[(programs,)](table, work, len(tensors), partials, DTYPE=dtype, LANES=LANES, CHUNK=SUM_BLOCK)
    _tensor_sums_kernel[(len(tensors),)](partials, first.to(device, non_blocking=True), out, num_warps=1)
    return out
