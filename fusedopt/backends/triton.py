"""Backend 'triton': Adam/AdamW, SGD and RMSprop as Triton kernels, one launch per batch.

Multi-tensor apply through a device-side table. The batch's int64 address table
(fusedopt/_buckets.py; rows numel, param, grad, step, states...) is copied to the device
once per `table_version`. A second int64 table, the work map, gives each program one
chunk of one tensor: `(column, first element)` pairs, CHUNK elements per program. The
kernel loads its pair, then the addresses it needs from the table, casts them to typed
pointers (`tl.load(...).to(tl.pointer_type(dtype))`) and walks its chunk in blocks of
BLOCK elements. So one launch updates any number of tensors, with arguments that do not
depend on their count (Adam and RMSprop add one `torch._foreach_add_` of their step
counters, below).

The math restates csrc/include/fusedopt/{adam,sgd,rmsprop}.h operation by operation (and
so torch.optim's single-tensor order, as reference.py does): 16-bit params compute in
float32 and are rounded once on the store (to nearest even; `_rounded`), float64 params
compute in float64. Divisions and square roots are the IEEE-rounded ones (`div_rn`,
`sqrt_rn`; Triton's float32 defaults are approximate) and the kernels are compiled
without multiply-add contraction (`enable_fp_fusion=False`), so every operation rounds
as written: a compiled kernel rounds as the interpreter that tests it does, and agrees
with torch.optim to a few float32 ulps (torch's own kernels fuse some multiply-adds).
Scalars arrive as float64 and are rounded once to the math type in the kernel, as
`T(double)` does in C++.

What every optimizer does first (config.grad_transform, csrc/include/fusedopt/common.h):
each grad becomes `g / grad_scale * clip_coef * sign` in the math type (a missing factor's
operation is left out, as exact as multiplying by 1), `g / grad_scale * clip_coef` is
stored back into the grad when either factor is given, and a nonzero `*found_inf` skips
the whole step. The three factors are one-element float32 tensors on the device, passed to
the kernel as pointers and read there (`_grad_factors`, `_work_item`), so neither
GradScaler nor max_grad_norm makes a step wait on the host.

Master weights (config.master_weights, 16-bit params): the states are float32 and the
table's last state row holds each param's float32 master copy. The math reads the master
instead of the param, updates it and the states in float32, and stores the master rounded
once into the param (`_load_param`, `_store_param`); the grad stays 16-bit.

Step counters: Adam's bias corrections are computed per tensor in the kernel, in float64
(adam_coefficients), from the tensor's float32 counter read through the table's step
row, so a step needs no device-to-host sync. The counters are incremented by one
`torch._foreach_add_` before the launch, as torch's fused optimizers do: one kernel
cannot both read a counter in every program of a tensor and bump it exactly once
without a grid-wide barrier. With found_inf the increment is `found_inf == 0`, computed on
the device, so a skipped step is not counted either.

Block loop: each program walks the CHUNK // BLOCK blocks of its chunk, a loop with a
compile-time bound; a block wholly inside the tensor is loaded without a mask, with 16-byte
alignment promised to the compiler when every address of the batch is 16-byte aligned (so
they become vector loads), the block holding the tensor's end is masked, and blocks past it
do nothing. (A loop bounded by the run-time count of full blocks is what the interpreter of
triton <= 3.6 cannot run with numpy >= 2.4: it turns the bound into a Python int with
`int()` of a one-element array, which such numpy refuses.)

On CPU tensors the kernels run only under Triton's interpreter, which @triton.jit picks
when this module is imported: TRITON_INTERPRET=1 must be set before `import fusedopt`.
That is how the tests run them; `auto` never picks this backend for CPU tensors.
"""
from __future__ import annotations

import collections
import contextlib
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    raise
except Exception as error:  # a broken install must not break `import fusedopt`
    raise ImportError(f"triton failed to import: {error!r}") from error

from .._buckets import FIRST_STATE_ROW, GRAD_ROW, NUMEL_ROW, PARAM_ROW, STEP_ROW
from .base import AdamConfig, Backend, GradTransform, RMSpropConfig, SGDConfig, TensorBatch


@dataclass(frozen=True)
class LaunchConfig:
    """Block geometry shared by the three kernels: the one place to tune it.

    Chosen for H100-class GPUs by reasoning, not by measurement (autotuning does not run
    in the interpreter, and no GPU was at hand): BLOCK=1024 with 4 warps gives each thread
    8 consecutive elements (two 16-byte vectors of float32) per iteration; 16 blocks per
    program (16,384 elements, a quarter of ATen's 65,536-element chunks) keep the work map
    small (16 bytes per 16K elements) while giving a large tensor thousands of programs to
    spread over the SMs. Re-measure with `python -m fusedopt.bench` and set
    `fusedopt.backends.triton.LAUNCH_CONFIG` to try others.
    """

    block: int = 1024
    blocks_per_program: int = 16
    num_warps: int = 4

    def __post_init__(self):
        if self.block < 16 or self.block & (self.block - 1) or self.blocks_per_program < 1 or self.num_warps < 1:
            raise ValueError(f"invalid Triton launch configuration {self}: block must be a power of two >= 16")

    @property
    def chunk(self) -> int:
        return self.block * self.blocks_per_program


LAUNCH_CONFIG = LaunchConfig()

_TRITON_DTYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}
_LOW_PRECISION = (torch.float16, torch.bfloat16)  # params that may keep an fp32 master copy
_VECTOR_BYTES = tl.constexpr(16)  # alignment that lets full blocks use 16-byte loads and stores

# Table rows as compile-time constants (Triton kernels may only read constexpr globals).
_PARAM_ROW = tl.constexpr(PARAM_ROW)
_GRAD_ROW = tl.constexpr(GRAD_ROW)
_STEP_ROW = tl.constexpr(STEP_ROW)
_NUMEL_ROW = tl.constexpr(NUMEL_ROW)
_STATE_ROW = tl.constexpr(FIRST_STATE_ROW)


# ----------------------------------------------------------------------------- shared pieces
# Conventions. Float hyper-parameters arrive as float64 kernel arguments and are rounded
# once to the math type with `tl.full((), x, T)`, which is C++'s `T(double)` (in a compiled
# kernel it is `x.to(T)`; the interpreter passes Python floats, which have no `.to`).
# Loads convert with `.to(COMPUTE)`, stores with `_rounded(x, DTYPE or STATE)`. Every
# @triton.jit helper call costs the interpreter about a millisecond, so helpers are kept to
# the pieces that carry meaning (and inline into one function in a compiled kernel anyway).
#
# The three kernels share their signature's frame: (table_ptr, work_ptr, n, grad_scale_ptr,
# found_inf_ptr, clip_coef_ptr, lr_ptr, <float64 hyper-parameters, lr first>) and the
# constexprs DTYPE (params and grads), STATE (states: DTYPE, or float32 with master
# weights), COMPUTE, MASTER, GRAD_SCALE, FOUND_INF, CLIP_COEF, LR_TENSOR (which of the four
# pointers are real; with LR_TENSOR the lr argument is NaN and the float64 at lr_ptr is the
# learning rate), <options>, ALIGNED, BLOCK, CHUNK; `_launch` below fills it in.
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
        pointer = tl.multiple_of(pointer, _VECTOR_BYTES)
    return pointer


@triton.jit
def _master_pointer(table_ptr, n, row, column, param_ptr, MASTER: tl.constexpr, ALIGNED: tl.constexpr):
    """With master weights, the float32 master copy in `row` (the table's last state row);
    else the param's own pointer, which `_load_param` and `_store_param` then ignore."""
    if MASTER:
        return _row_pointer(table_ptr, n, row, column, tl.float32, ALIGNED)
    else:
        return param_ptr


@triton.jit
def _load_param(param_ptr, master_ptr, offsets, mask, MASTER: tl.constexpr, COMPUTE: tl.constexpr):
    """The value the math updates (load_param, csrc/cpu/multi_tensor_cpu.h): the float32
    master copy with master weights, else the param itself."""
    if MASTER:
        return tl.load(master_ptr + offsets, mask=mask)
    else:
        return tl.load(param_ptr + offsets, mask=mask).to(COMPUTE)


@triton.jit
def _store_param(param_ptr, master_ptr, offsets, mask, value, MASTER: tl.constexpr, DTYPE: tl.constexpr):
    """store_param: the master copy keeps the float32 value, the param gets it rounded once."""
    if MASTER:
        tl.store(master_ptr + offsets, value, mask=mask)
    tl.store(param_ptr + offsets, _rounded(value, DTYPE), mask=mask)


@triton.jit
def _rounded(x, DTYPE: tl.constexpr):
    """x (in the math type) rounded once to the storage type DTYPE, to nearest even.

    float32 -> bfloat16 by integer arithmetic, as fusedopt::float_to_bf16 (NaN kept
    quiet): the same bits compiled and under Triton's interpreter, whose own conversion
    truncates. The cost is a few integer operations per element of a memory-bound loop.
    """
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        quiet_nan = (bits >> 16) | 0x40
        rounded = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, quiet_nan, rounded)
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)


@triton.jit
def _div(x, y):
    """IEEE-rounded division, as torch's (Triton's float32 `/` may be approximate)."""
    if x.dtype == tl.float32:
        return tl.div_rn(x, y)
    else:
        return x / y


@triton.jit
def _sqrt(x):
    """IEEE-rounded square root, as torch.sqrt (tl.sqrt may be approximate in float32)."""
    if x.dtype == tl.float32:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def _lerp(start, end, weight):
    """torch.lerp's two-sided formula, exact at weight 0 and 1 (fusedopt::lerp)."""
    return tl.where(weight < 0.5, start + weight * (end - start), end - (end - start) * (1.0 - weight))


@triton.jit
def _grad_factors(grad_scale_ptr, clip_coef_ptr, GRAD_SCALE: tl.constexpr, CLIP_COEF: tl.constexpr,
                  COMPUTE: tl.constexpr):
    """grad_factors (csrc/include/fusedopt/common.h): GradScaler's scale (the divisor) and
    max_grad_norm's clip coefficient (the multiplier), read on the device and converted to
    COMPUTE; 1 when absent (and then `_transformed_grad` leaves the operation out)."""
    divisor = tl.full((), 1.0, COMPUTE)
    multiplier = tl.full((), 1.0, COMPUTE)
    if GRAD_SCALE:
        divisor = tl.load(grad_scale_ptr).to(COMPUTE)
    if CLIP_COEF:
        multiplier = tl.load(clip_coef_ptr).to(COMPUTE)
    return divisor, multiplier


@triton.jit
def _transformed_grad(grad_ptr, offsets, mask, param, divisor, multiplier, grad_sign, weight_decay,
                      GRAD_SCALE: tl.constexpr, CLIP_COEF: tl.constexpr, WEIGHT_DECAY: tl.constexpr,
                      DTYPE: tl.constexpr, COMPUTE: tl.constexpr):
    """The gradient the update uses, loaded: unscaled_grad (common.h), `g / scale * clip`,
    stored back into the grad when either factor is given (GradTransform), then times
    grad_sign (-1 with maximize) plus weight_decay * param (L2). A missing factor's
    operation is left out, which is exact: dividing or multiplying by 1 changes nothing."""
    grad = tl.load(grad_ptr + offsets, mask=mask).to(COMPUTE)
    if GRAD_SCALE:
        grad = _div(grad, divisor)
    if CLIP_COEF:
        grad = grad * multiplier
    if GRAD_SCALE:  # only with GradScaler's scale, as the C++ header's writes_grad
        tl.store(grad_ptr + offsets, _rounded(grad, DTYPE), mask=mask)
    grad = grad * grad_sign
    if WEIGHT_DECAY:
        grad = grad + weight_decay * param
    return grad


@triton.jit
def _learning_rate(lr, lr_ptr, LR_TENSOR: tl.constexpr):
    """learning_rate (common.h), as float64: read from the device with LR_TENSOR (the
    configs' lr_tensor, so a captured graph follows a schedule), else the argument."""
    if LR_TENSOR:
        return tl.load(lr_ptr)
    else:
        return tl.full((), lr, tl.float64)


# ----------------------------------------------------------------------------- Adam / AdamW
@triton.jit
def _adam_coefficients(step, lr, beta1, beta2, eps, grad_sign, weight_decay, DECOUPLED: tl.constexpr,
                       OPTIMIZED_UPDATE: tl.constexpr, COMPUTE: tl.constexpr):
    """adam_coefficients (csrc/include/fusedopt/adam.h): the bias corrections of this
    tensor's (already incremented) step in float64, every scalar rounded once to COMPUTE.
    `lr` is float64 (_learning_rate). A skipped first step leaves the counter at 0: its
    coefficients go unused, and counting it as 1 keeps them finite."""
    step = tl.maximum(step, 1.0).to(tl.float64)
    weight_decay = tl.full((), weight_decay, tl.float64)
    if DECOUPLED:  # AdamW: p *= 1 - lr*wd; no L2 term
        l2_decay = 0.0
        param_scale = 1.0 - lr * weight_decay
    else:
        l2_decay = weight_decay
        param_scale = 1.0
    beta1 = tl.full((), beta1, tl.float64)
    beta2 = tl.full((), beta2, tl.float64)
    bias_correction1 = 1.0 - tl.exp2(step * tl.log2(beta1))  # 1 - beta1 ** step
    bias_correction2_sqrt = tl.sqrt(1.0 - tl.exp2(step * tl.log2(beta2)))
    if OPTIMIZED_UPDATE:
        neg_step_size = -lr * bias_correction2_sqrt / bias_correction1
        denom_divisor = 1.0
    else:
        neg_step_size = -lr / bias_correction1
        denom_divisor = bias_correction2_sqrt
    return (tl.full((), grad_sign, COMPUTE), tl.full((), l2_decay, COMPUTE), tl.full((), param_scale, COMPUTE),
            tl.full((), 1.0 - beta1, COMPUTE), tl.full((), beta2, COMPUTE), tl.full((), 1.0 - beta2, COMPUTE),
            tl.full((), eps, COMPUTE), tl.full((), neg_step_size, COMPUTE), tl.full((), denom_divisor, COMPUTE))


@triton.jit
def _adam_block(offsets, mask, param_ptr, master_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr,
                divisor, multiplier, grad_sign, l2_decay, param_scale, one_minus_beta1, beta2, one_minus_beta2, eps,
                neg_step_size, denom_divisor, MASTER: tl.constexpr, GRAD_SCALE: tl.constexpr,
                CLIP_COEF: tl.constexpr, L2: tl.constexpr, AMSGRAD: tl.constexpr, DTYPE: tl.constexpr,
                STATE: tl.constexpr, COMPUTE: tl.constexpr):
    """adam_update (csrc/include/fusedopt/adam.h) on one block of elements."""
    param = _load_param(param_ptr, master_ptr, offsets, mask, MASTER, COMPUTE)
    exp_avg = tl.load(exp_avg_ptr + offsets, mask=mask).to(COMPUTE)
    exp_avg_sq = tl.load(exp_avg_sq_ptr + offsets, mask=mask).to(COMPUTE)
    grad = _transformed_grad(grad_ptr, offsets, mask, param, divisor, multiplier, grad_sign, l2_decay, GRAD_SCALE,
                             CLIP_COEF, L2, DTYPE, COMPUTE)
    param = param * param_scale  # AdamW's decay; 1 for Adam
    exp_avg = _lerp(exp_avg, grad, one_minus_beta1)
    exp_avg_sq = exp_avg_sq * beta2 + one_minus_beta2 * grad * grad
    second_moment = exp_avg_sq
    if AMSGRAD:
        max_exp_avg_sq = tl.load(max_exp_avg_sq_ptr + offsets, mask=mask).to(COMPUTE)
        second_moment = tl.where(max_exp_avg_sq > exp_avg_sq, max_exp_avg_sq, exp_avg_sq)
        tl.store(max_exp_avg_sq_ptr + offsets, _rounded(second_moment, STATE), mask=mask)
    denom = _div(_sqrt(second_moment), denom_divisor) + eps
    param = param + _div(neg_step_size * exp_avg, denom)
    tl.store(exp_avg_ptr + offsets, _rounded(exp_avg, STATE), mask=mask)
    tl.store(exp_avg_sq_ptr + offsets, _rounded(exp_avg_sq, STATE), mask=mask)
    _store_param(param_ptr, master_ptr, offsets, mask, param, MASTER, DTYPE)


@triton.jit
def _adam_kernel(table_ptr, work_ptr, n, grad_scale_ptr, found_inf_ptr, clip_coef_ptr, lr_ptr, lr: tl.float64,
                 beta1: tl.float64, beta2: tl.float64, eps: tl.float64, grad_sign: tl.float64,
                 weight_decay: tl.float64, DTYPE: tl.constexpr, STATE: tl.constexpr, COMPUTE: tl.constexpr,
                 MASTER: tl.constexpr, GRAD_SCALE: tl.constexpr, FOUND_INF: tl.constexpr, CLIP_COEF: tl.constexpr,
                 LR_TENSOR: tl.constexpr, L2: tl.constexpr, DECOUPLED: tl.constexpr, AMSGRAD: tl.constexpr,
                 OPTIMIZED_UPDATE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    column, start, end = _work_item(table_ptr, work_ptr, n, found_inf_ptr, FOUND_INF, BLOCK, CHUNK)
    param_ptr = _row_pointer(table_ptr, n, _PARAM_ROW, column, DTYPE, ALIGNED)
    grad_ptr = _row_pointer(table_ptr, n, _GRAD_ROW, column, DTYPE, ALIGNED)
    # States in table order: exp_avg, exp_avg_sq[, max_exp_avg_sq][, master_param].
    exp_avg_ptr = _row_pointer(table_ptr, n, _STATE_ROW, column, STATE, ALIGNED)
    exp_avg_sq_ptr = _row_pointer(table_ptr, n, _STATE_ROW + 1, column, STATE, ALIGNED)
    if AMSGRAD:
        max_exp_avg_sq_ptr = _row_pointer(table_ptr, n, _STATE_ROW + 2, column, STATE, ALIGNED)
    else:
        max_exp_avg_sq_ptr = exp_avg_sq_ptr  # never touched
    master_ptr = _master_pointer(table_ptr, n, _STATE_ROW + 2 + AMSGRAD, column, param_ptr, MASTER, ALIGNED)
    step = tl.load(_row_pointer(table_ptr, n, _STEP_ROW, column, tl.float32, False))
    coefficients = _adam_coefficients(step, _learning_rate(lr, lr_ptr, LR_TENSOR), beta1, beta2, eps, grad_sign,
                                      weight_decay, DECOUPLED, OPTIMIZED_UPDATE, COMPUTE)
    factors = _grad_factors(grad_scale_ptr, clip_coef_ptr, GRAD_SCALE, CLIP_COEF, COMPUTE)

    for k in range(0, CHUNK // BLOCK):  # see "Block loop" above
        block_start = start + k * BLOCK
        offsets = block_start + tl.arange(0, BLOCK)
        if block_start + BLOCK <= end:
            _adam_block(offsets, None, param_ptr, master_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr,
                        max_exp_avg_sq_ptr, *factors, *coefficients, MASTER, GRAD_SCALE, CLIP_COEF, L2, AMSGRAD, DTYPE,
                        STATE, COMPUTE)
        elif block_start < end:
            _adam_block(offsets, offsets < end, param_ptr, master_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr,
                        max_exp_avg_sq_ptr, *factors, *coefficients, MASTER, GRAD_SCALE, CLIP_COEF, L2, AMSGRAD, DTYPE,
                        STATE, COMPUTE)


# ----------------------------------------------------------------------------- SGD
@triton.jit
def _sgd_coefficients(lr, momentum, dampening, weight_decay, grad_sign, COMPUTE: tl.constexpr):
    """sgd_coefficients (csrc/include/fusedopt/sgd.h): float64 arithmetic (`lr` is float64,
    from _learning_rate), rounded once to COMPUTE."""
    dampening = tl.full((), dampening, tl.float64)
    return (tl.full((), grad_sign, COMPUTE), tl.full((), weight_decay, COMPUTE), tl.full((), momentum, COMPUTE),
            tl.full((), 1.0 - dampening, COMPUTE), tl.full((), -lr, COMPUTE))


@triton.jit
def _sgd_block(offsets, mask, param_ptr, master_ptr, grad_ptr, buffer_ptr, divisor, multiplier, grad_sign,
               weight_decay, momentum, one_minus_dampening, neg_lr, MASTER: tl.constexpr, GRAD_SCALE: tl.constexpr,
               CLIP_COEF: tl.constexpr, WEIGHT_DECAY: tl.constexpr, MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr,
               FIRST_STEP: tl.constexpr, DTYPE: tl.constexpr, STATE: tl.constexpr, COMPUTE: tl.constexpr):
    """sgd_update (csrc/include/fusedopt/sgd.h) on one block of elements."""
    param = _load_param(param_ptr, master_ptr, offsets, mask, MASTER, COMPUTE)
    grad = _transformed_grad(grad_ptr, offsets, mask, param, divisor, multiplier, grad_sign, weight_decay,
                             GRAD_SCALE, CLIP_COEF, WEIGHT_DECAY, DTYPE, COMPUTE)
    if MOMENTUM:
        if FIRST_STEP:  # torch's rule: a new momentum buffer starts as a copy of the gradient
            buffer = grad
        else:
            buffer = tl.load(buffer_ptr + offsets, mask=mask).to(COMPUTE) * momentum + one_minus_dampening * grad
        tl.store(buffer_ptr + offsets, _rounded(buffer, STATE), mask=mask)
        if NESTEROV:
            grad = grad + momentum * buffer
        else:
            grad = buffer
    _store_param(param_ptr, master_ptr, offsets, mask, param + neg_lr * grad, MASTER, DTYPE)


@triton.jit
def _sgd_kernel(table_ptr, work_ptr, n, grad_scale_ptr, found_inf_ptr, clip_coef_ptr, lr_ptr, lr: tl.float64,
                momentum: tl.float64, dampening: tl.float64, weight_decay: tl.float64, grad_sign: tl.float64,
                DTYPE: tl.constexpr, STATE: tl.constexpr, COMPUTE: tl.constexpr, MASTER: tl.constexpr,
                GRAD_SCALE: tl.constexpr, FOUND_INF: tl.constexpr, CLIP_COEF: tl.constexpr,
                LR_TENSOR: tl.constexpr, WEIGHT_DECAY: tl.constexpr, MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr,
                FIRST_STEP: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    column, start, end = _work_item(table_ptr, work_ptr, n, found_inf_ptr, FOUND_INF, BLOCK, CHUNK)
    param_ptr = _row_pointer(table_ptr, n, _PARAM_ROW, column, DTYPE, ALIGNED)
    grad_ptr = _row_pointer(table_ptr, n, _GRAD_ROW, column, DTYPE, ALIGNED)
    # States in table order: [momentum_buffer][, master_param].
    if MOMENTUM:
        buffer_ptr = _row_pointer(table_ptr, n, _STATE_ROW, column, STATE, ALIGNED)
    else:
        buffer_ptr = param_ptr  # no buffer row; never touched
    master_ptr = _master_pointer(table_ptr, n, _STATE_ROW + MOMENTUM, column, param_ptr, MASTER, ALIGNED)
    coefficients = _sgd_coefficients(_learning_rate(lr, lr_ptr, LR_TENSOR), momentum, dampening, weight_decay,
                                     grad_sign, COMPUTE)
    factors = _grad_factors(grad_scale_ptr, clip_coef_ptr, GRAD_SCALE, CLIP_COEF, COMPUTE)

    for k in range(0, CHUNK // BLOCK):  # see "Block loop" above
        block_start = start + k * BLOCK
        offsets = block_start + tl.arange(0, BLOCK)
        if block_start + BLOCK <= end:
            _sgd_block(offsets, None, param_ptr, master_ptr, grad_ptr, buffer_ptr, *factors, *coefficients, MASTER,
                       GRAD_SCALE, CLIP_COEF, WEIGHT_DECAY, MOMENTUM, NESTEROV, FIRST_STEP, DTYPE, STATE, COMPUTE)
        elif block_start < end:
            _sgd_block(offsets, offsets < end, param_ptr, master_ptr, grad_ptr, buffer_ptr, *factors, *coefficients,
                       MASTER, GRAD_SCALE, CLIP_COEF, WEIGHT_DECAY, MOMENTUM, NESTEROV, FIRST_STEP, DTYPE, STATE,
                       COMPUTE)


# ----------------------------------------------------------------------------- RMSprop
@triton.jit
def _rmsprop_coefficients(lr, alpha, eps, weight_decay, momentum, grad_sign, COMPUTE: tl.constexpr):
    """rmsprop_coefficients (csrc/include/fusedopt/rmsprop.h): float64 arithmetic (`lr` is
    float64, from _learning_rate), rounded once to COMPUTE."""
    alpha = tl.full((), alpha, tl.float64)
    return (tl.full((), grad_sign, COMPUTE), tl.full((), weight_decay, COMPUTE), tl.full((), alpha, COMPUTE),
            tl.full((), 1.0 - alpha, COMPUTE), tl.full((), eps, COMPUTE), tl.full((), momentum, COMPUTE),
            tl.full((), -lr, COMPUTE))


@triton.jit
def _rmsprop_block(offsets, mask, param_ptr, master_ptr, grad_ptr, square_avg_ptr, grad_avg_ptr, buffer_ptr,
                   divisor, multiplier, grad_sign, weight_decay, alpha, one_minus_alpha, eps, momentum, neg_lr,
                   MASTER: tl.constexpr, GRAD_SCALE: tl.constexpr, CLIP_COEF: tl.constexpr,
                   WEIGHT_DECAY: tl.constexpr, CENTERED: tl.constexpr, MOMENTUM: tl.constexpr,
                   DTYPE: tl.constexpr, STATE: tl.constexpr, COMPUTE: tl.constexpr):
    """rmsprop_update (csrc/include/fusedopt/rmsprop.h) on one block of elements."""
    param = _load_param(param_ptr, master_ptr, offsets, mask, MASTER, COMPUTE)
    grad = _transformed_grad(grad_ptr, offsets, mask, param, divisor, multiplier, grad_sign, weight_decay,
                             GRAD_SCALE, CLIP_COEF, WEIGHT_DECAY, DTYPE, COMPUTE)
    square_avg = tl.load(square_avg_ptr + offsets, mask=mask).to(COMPUTE) * alpha + one_minus_alpha * grad * grad
    tl.store(square_avg_ptr + offsets, _rounded(square_avg, STATE), mask=mask)
    if CENTERED:
        grad_avg = _lerp(tl.load(grad_avg_ptr + offsets, mask=mask).to(COMPUTE), grad, one_minus_alpha)
        tl.store(grad_avg_ptr + offsets, _rounded(grad_avg, STATE), mask=mask)
        avg = _sqrt(square_avg + -1.0 * grad_avg * grad_avg)
    else:
        avg = _sqrt(square_avg)
    avg = avg + eps
    if MOMENTUM:
        buffer = tl.load(buffer_ptr + offsets, mask=mask).to(COMPUTE) * momentum + _div(grad, avg)
        tl.store(buffer_ptr + offsets, _rounded(buffer, STATE), mask=mask)
        param = param + neg_lr * buffer
    else:
        param = param + _div(neg_lr * grad, avg)
    _store_param(param_ptr, master_ptr, offsets, mask, param, MASTER, DTYPE)


@triton.jit
def _rmsprop_kernel(table_ptr, work_ptr, n, grad_scale_ptr, found_inf_ptr, clip_coef_ptr, lr_ptr, lr: tl.float64,
                    alpha: tl.float64, eps: tl.float64, weight_decay: tl.float64, momentum: tl.float64,
                    grad_sign: tl.float64, DTYPE: tl.constexpr, STATE: tl.constexpr, COMPUTE: tl.constexpr,
                    MASTER: tl.constexpr, GRAD_SCALE: tl.constexpr, FOUND_INF: tl.constexpr,
                    CLIP_COEF: tl.constexpr, LR_TENSOR: tl.constexpr, WEIGHT_DECAY: tl.constexpr, CENTERED: tl.constexpr,
                    MOMENTUM: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    column, start, end = _work_item(table_ptr, work_ptr, n, found_inf_ptr, FOUND_INF, BLOCK, CHUNK)
    param_ptr = _row_pointer(table_ptr, n, _PARAM_ROW, column, DTYPE, ALIGNED)
    grad_ptr = _row_pointer(table_ptr, n, _GRAD_ROW, column, DTYPE, ALIGNED)
    # States in table order: square_avg[, grad_avg][, momentum_buffer][, master_param].
    square_avg_ptr = _row_pointer(table_ptr, n, _STATE_ROW, column, STATE, ALIGNED)
    if CENTERED:
        grad_avg_ptr = _row_pointer(table_ptr, n, _STATE_ROW + 1, column, STATE, ALIGNED)
    else:
        grad_avg_ptr = square_avg_ptr  # never touched
    if MOMENTUM:
        buffer_ptr = _row_pointer(table_ptr, n, _STATE_ROW + 1 + CENTERED, column, STATE, ALIGNED)
    else:
        buffer_ptr = square_avg_ptr  # never touched
    master_ptr = _master_pointer(table_ptr, n, _STATE_ROW + 1 + CENTERED + MOMENTUM, column, param_ptr, MASTER,
                                 ALIGNED)
    coefficients = _rmsprop_coefficients(_learning_rate(lr, lr_ptr, LR_TENSOR), alpha, eps, weight_decay, momentum,
                                         grad_sign, COMPUTE)
    factors = _grad_factors(grad_scale_ptr, clip_coef_ptr, GRAD_SCALE, CLIP_COEF, COMPUTE)

    for k in range(0, CHUNK // BLOCK):  # see "Block loop" above
        block_start = start + k * BLOCK
        offsets = block_start + tl.arange(0, BLOCK)
        if block_start + BLOCK <= end:
            _rmsprop_block(offsets, None, param_ptr, master_ptr, grad_ptr, square_avg_ptr, grad_avg_ptr, buffer_ptr,
                           *factors, *coefficients, MASTER, GRAD_SCALE, CLIP_COEF, WEIGHT_DECAY, CENTERED, MOMENTUM,
                           DTYPE, STATE, COMPUTE)
        elif block_start < end:
            _rmsprop_block(offsets, offsets < end, param_ptr, master_ptr, grad_ptr, square_avg_ptr, grad_avg_ptr,
                           buffer_ptr, *factors, *coefficients, MASTER, GRAD_SCALE, CLIP_COEF, WEIGHT_DECAY, CENTERED,
                           MOMENTUM, DTYPE, STATE, COMPUTE)


# ----------------------------------------------------------------------------- device tables
@dataclass(frozen=True)
class _DeviceTables:
    """What the kernels of one batch read, on the batch's device."""

    table: torch.Tensor  # int64 [rows * n]: the batch's address table
    work: torch.Tensor  # int64 [programs, 2]: (column, first element) of each program's chunk
    programs: int
    aligned: bool  # every address 16-byte aligned: full blocks may use vector loads
    block: int
    chunk: int
    num_warps: int


class _LRU(collections.OrderedDict):
    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def put(self, key, value) -> None:
        self[key] = value
        if len(self) > self.capacity:
            self.popitem(last=False)

    def lookup(self, key):
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value


# Keyed by table_version (unique per table content, process-wide), so an entry is never
# stale; the bound only limits memory. A version changes whenever a grad tensor is
# re-created (zero_grad(set_to_none=True)), so the usual case is one new entry per bucket
# per step, uploaded asynchronously.
_tables: _LRU = _LRU(capacity=64)
# The work map depends only on the element counts and the geometry, which rarely change.
_work_maps: _LRU = _LRU(capacity=64)


def _work_map(numels: torch.Tensor, numels_key: bytes, chunk: int, device: torch.device) -> Tuple[torch.Tensor, int]:
    """`numels_key`: the element counts' bytes, a cheap cache key (torch's `.numpy()` would
    make numpy, which torch does not require, a dependency)."""
    key = (numels_key, chunk, device)
    cached = _work_maps.lookup(key)
    if cached is None:
        chunks = (numels + chunk - 1) // chunk  # zero-size tensors get no program
        programs = int(chunks.sum())
        columns = torch.repeat_interleave(torch.arange(len(numels)), chunks)
        first_program = torch.cumsum(chunks, 0) - chunks
        starts = (torch.arange(programs) - first_program[columns]) * chunk
        work = torch.stack([columns, starts], dim=1).to(device)
        cached = (work, programs)
        _work_maps.put(key, cached)
    return cached


def _device_tables(batch: TensorBatch) -> _DeviceTables:
    config = LAUNCH_CONFIG
    key = (batch.table_version, config)
    cached = _tables.lookup(key)
    if cached is not None:
        return cached
    n = len(batch)
    host = torch.frombuffer(batch.table, dtype=torch.int64).view(-1, n)
    numels = host[NUMEL_ROW]
    addresses = torch.cat([host[PARAM_ROW:GRAD_ROW + 1], host[FIRST_STATE_ROW:]])[:, numels > 0]
    numels_key = batch.table[NUMEL_ROW * n:(NUMEL_ROW + 1) * n].tobytes()
    work, programs = _work_map(numels, numels_key, config.chunk, batch.device)
    tables = _DeviceTables(
        # A pageable-memory copy, staged at once by the driver: no wait on the device.
        table=host.reshape(-1).to(batch.device, non_blocking=True, copy=True),
        work=work,
        programs=programs,
        aligned=bool((addresses % _VECTOR_BYTES.value == 0).all()),
        block=config.block,
        chunk=config.chunk,
        num_warps=config.num_warps,
    )
    _tables.put(key, tables)
    return tables


def _floats(*values) -> Tuple[float, ...]:
    """The float64 kernel arguments (configs may hold ints, e.g. momentum=0)."""
    return tuple(map(float, values))


# ----------------------------------------------------------------------------- launchers
def _launch(kernel, tables: _DeviceTables, batch: TensorBatch, config, scalars: Tuple[float, ...],
            **options) -> None:
    """One launch of `kernel` over the batch: the signature frame the three kernels share
    (see "shared pieces"), with the optimizer's float64 `scalars` and constexpr `options`."""
    transform = config.grad_transform
    factors = (transform.grad_scale, transform.found_inf, transform.clip_coef, config.lr_tensor)
    dtype = _TRITON_DTYPES[batch.dtype]
    master = bool(config.master_weights) and batch.dtype in _LOW_PRECISION  # as dispatch_storage in C++
    kernel[(tables.programs,)](
        tables.table, tables.work, len(batch),
        # An absent factor's pointer is never read (its flag below is off): any device tensor will do.
        *(tables.table if t is None else t for t in factors),
        *_floats(*scalars),
        DTYPE=dtype, STATE=tl.float32 if master else dtype, COMPUTE=tl.float64 if dtype == tl.float64 else tl.float32,
        MASTER=master, GRAD_SCALE=factors[0] is not None, FOUND_INF=factors[1] is not None,
        CLIP_COEF=factors[2] is not None, LR_TENSOR=factors[3] is not None, **options,
        ALIGNED=tables.aligned, BLOCK=tables.block, CHUNK=tables.chunk, num_warps=tables.num_warps,
        enable_fp_fusion=False,
    )


def _launch_adam(tables: _DeviceTables, batch: TensorBatch, c: AdamConfig) -> None:
    decoupled = c.decoupled_weight_decay
    _launch(_adam_kernel, tables, batch, c,
            (c.lr, c.beta1, c.beta2, c.eps, -1.0 if c.maximize else 1.0, c.weight_decay),
            L2=c.weight_decay != 0 and not decoupled, DECOUPLED=decoupled, AMSGRAD=c.amsgrad,
            OPTIMIZED_UPDATE=c.optimized_update)


def _launch_sgd(tables: _DeviceTables, batch: TensorBatch, c: SGDConfig) -> None:
    _launch(_sgd_kernel, tables, batch, c,
            (c.lr, c.momentum, c.dampening, c.weight_decay, -1.0 if c.maximize else 1.0),
            WEIGHT_DECAY=c.weight_decay != 0, MOMENTUM=c.momentum != 0, NESTEROV=c.nesterov,
            FIRST_STEP=c.first_step)


def _launch_rmsprop(tables: _DeviceTables, batch: TensorBatch, c: RMSpropConfig) -> None:
    _launch(_rmsprop_kernel, tables, batch, c,
            (c.lr, c.alpha, c.eps, c.weight_decay, c.momentum, -1.0 if c.maximize else 1.0),
            WEIGHT_DECAY=c.weight_decay != 0, CENTERED=c.centered, MOMENTUM=c.momentum > 0)


def _advance_steps(steps: List[torch.Tensor], transform: GradTransform) -> None:
    """Each step counter +1, before the launch (which reads the new values); +0 when the
    step is skipped (`found_inf != 0`), computed on the device so nothing waits on the host."""
    found_inf = transform.found_inf
    if found_inf is None:
        torch._foreach_add_(steps, 1.0)
    else:  # logical_not: 1.0 where found_inf == 0 (NaN counts as found, as in the kernel); one small kernel
        counted = torch.logical_not(found_inf, out=torch.empty_like(found_inf)).reshape(())
        torch._foreach_add_(steps, counted)


# ----------------------------------------------------------------------------- backend
def _interpreted() -> bool:
    """Whether this module's kernels were built for Triton's interpreter (decided by
    TRITON_INTERPRET when the @triton.jit decorators ran, i.e. at import)."""
    return not isinstance(_adam_kernel, triton.runtime.jit.JITFunction)


class TritonBackend(Backend):
    name = "triton"
    reads_lr_tensor = True

    def unusable_reason(self, device: torch.device) -> Optional[str]:
        interpreted = _interpreted()
        if device.type == "cuda":
            if interpreted:
                return ("TRITON_INTERPRET=1 was set when fusedopt imported triton, and Triton's interpreter cannot "
                        "follow the device addresses of the table; unset TRITON_INTERPRET")
            if not torch.cuda.is_available():
                return "torch.cuda is not available (no GPU, no driver, or a CPU-only torch build)"
            return None
        if device.type == "cpu":
            if interpreted:
                return None
            if os.environ.get("TRITON_INTERPRET") == "1":
                return ("TRITON_INTERPRET=1 was set after fusedopt imported triton; set it before the first "
                        "`import fusedopt` to run the Triton kernels on CPU tensors (slowly, for testing)")
            return ("Triton kernels run on CUDA GPUs, and on CPU tensors only under Triton's interpreter "
                    "(TRITON_INTERPRET=1 before `import fusedopt`, for testing); use backend 'cpu' for CPU tensors")
        return f"Triton kernels run on CUDA GPUs, and these tensors are on {device}"

    def adam(self, batch: TensorBatch, c: AdamConfig) -> None:
        self._run(_launch_adam, batch, c)

    def sgd(self, batch: TensorBatch, c: SGDConfig) -> None:
        self._run(_launch_sgd, batch, c)

    def rmsprop(self, batch: TensorBatch, c: RMSpropConfig) -> None:
        self._run(_launch_rmsprop, batch, c)

    def _run(self, launch: Callable[[_DeviceTables, TensorBatch, object], None], batch: TensorBatch, config) -> None:
        config.grad_transform.check(batch.device)
        lr = config.lr_tensor
        if lr is not None and (lr.dtype != torch.float64 or lr.numel() != 1 or lr.device != batch.device):
            raise RuntimeError(f"lr_tensor must be a one-element float64 tensor on {batch.device}")
        if batch.steps is not None:
            _advance_steps(batch.steps, config.grad_transform)
        # Triton launches on the current device, on its current stream.
        on_device = torch.cuda.device(batch.device) if batch.device.type == "cuda" else contextlib.nullcontext()
        with on_device:
            tables = _device_tables(batch)
            if tables.programs:  # none when every tensor is empty
                launch(tables, batch, config)


__all__ = ["LAUNCH_CONFIG", "LaunchConfig", "TritonBackend"]
