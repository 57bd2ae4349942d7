"""Backend 'triton': every optimizer as one Triton kernel launch per batch.

One kernel skeleton (`_kernel.multi_tensor_kernel`) walks the tables, loads and stores,
applies GradScaler's skip, the grad transform and master weights; each optimizer kind
brings only its math, in `fusedopt/backends/triton/<kind>.py`, imported by name on first
use (so a new optimizer adds one file here and edits nothing else). That module defines:

    arguments(config: UpdateConfig) -> (Scalars, Options)
        host side, once per launch: two namedtuples. Scalars: the float hyper-parameters
        the kernel reads at run time (at most MAX_SCALARS), passed as float64 kernel
        arguments, so changing one (a scheduler's momentum) compiles nothing. Options: the
        bools that select code at compile time (amsgrad, nesterov, config.first_step, ...).
    @triton.jit coefficients(step, lr, hyper, SLOT: constexpr, OPTIONS: constexpr,
                             COMPUTE: constexpr) -> tuple
        once per program (one chunk of one tensor): the per-element update's scalars, from
        the tensor's float32 step counter (0 for kinds without one), the float64 learning
        rate and `hyper[SLOT.<name>]` (the Scalars by name, float64), each rounded once to
        the math type COMPUTE, as the C++ header's `<kind>_coefficients`.
    @triton.jit update(param, grad, states, coefficients, OPTIONS: constexpr, COMPUTE: constexpr)
            -> (param, state0, state1, state2, state3)
        one block of elements, the header's `<kind>_update`, on values only: `param` and
        `grad` in COMPUTE (the grad already unscaled and clipped; maximize and weight decay
        are the update's, `_math.signed_grad`); `states` the MAX_STATES state values in
        table order, in COMPUTE (past the kind's own count, stand-ins to pass back
        unchanged); it returns the new param value and the new state values in the same
        order. The skeleton loads and stores: states rounded once to their storage type,
        or requantized (8-bit states, below), so a kind's math knows nothing of storage
        (as ATen's adam_math is apart from its functor's loads and stores).

A kind with scalar states (OptimizerSpec.scalar_states: ASGD's eta and mu, NAdam's
mu_product) also takes them in `coefficients`, as a seventh argument `scalars` (a pair of
float32 values, as the previous step stored them; 0 past its count), and defines

    @triton.jit advance_scalars(step, lr, hyper, scalars, SLOT: constexpr, OPTIONS: constexpr)
        -> the pair of next values (float32), which `scalar_state_kernel` stores.

Scalar states: every program of a tensor reads them (its coefficients need them), so none
of those programs may write them. A second launch on the same stream, one program per
tensor, stores the next values (`_kernel.scalar_state_kernel`): each tensor's scalars
then have exactly one writer, which runs after every reader, as in the CUDA prologue. It
stores nothing when found_inf skips the step. (The step counters are advanced before the
update, see below, so both launches see this step's counter.)

How many state tensors a batch has comes from its table (its rows after the fixed ones,
less the master copy), which the optimizer's `state_keys(hyper)` made; the update knows
from OPTIONS which of them are there.

Multi-tensor apply through a device-side table. The batch's int64 address table
(fusedopt/_layout.py; rows numel, param, grad, step, states...) is copied to the device
once per `table_version`. A second int64 table, the work map, gives each program one
chunk of one tensor: `(column, first element)` pairs, CHUNK elements per program. The
kernel loads its pair, then the addresses it needs from the table, casts them to typed
pointers (`tl.load(...).to(tl.pointer_type(dtype))`) and walks its chunk in blocks of
BLOCK elements. So one launch updates any number of tensors, with arguments that do not
depend on their count (kinds with a step counter add one `torch._foreach_add_`, below).

The math restates csrc/include/fusedopt/<kind>.h operation by operation (and so
torch.optim's single-tensor order, as the reference backend does): 16-bit params compute
in float32 and are rounded once on the store, float64 params compute in float64.
Divisions and square roots are the IEEE-rounded ones and the kernels are compiled without
multiply-add contraction (`enable_fp_fusion=False`), so every operation rounds as written:
a compiled kernel rounds as the interpreter that tests it does, and as the C++ kernels
(see _math.py for the shared pieces, the bias corrections' `step_power` included).
Scalars arrive as float64 and are rounded once to the math type in the kernel, as
`T(double)` does in C++.

What every optimizer does first (config.grad_transform, csrc/include/fusedopt/common.h):
each grad becomes `g / grad_scale * clip_coef` in the math type, clamped to
[-clip_value, clip_value] (a missing factor's operation is left out, as exact as
multiplying by 1), that value is stored back into the grad with GradScaler's scale, and a
nonzero `*found_inf` skips the whole step. The three factors are one-element tensors on
the device (grad_scale and found_inf float32, clip_coef and the per-tensor tensor_clip in the
math type), passed to the kernel as pointers and read there, so neither
GradScaler nor max_grad_norm makes a step wait on the host; clip_value (clip_grad_value)
is a plain float64 argument.

bf16 states (config.bf16_states, state_dtype=torch.bfloat16): STATE is bfloat16, whatever
the param's dtype; loaded into float32 and stored with `_math.rounded` (nearest even).

8-bit states (config.int8_states, state_dtype="int8"; fusedopt/_quantize.py is the format,
the reference backend the statement): INT8 is set, STATE is uint8 (the codes), each state's
float32 block absmax comes through the table's rows after the scalar states
(fusedopt/_layout.py), and SIGNED has bit k set when state k uses the signed code
(config.int8_signed). The code tables are `_code_lookup.native_tables(device)`, the bytes
the C++ kernels read, viewed as int32 (`_int8.code_tables_on`). Each block of the loop then
holds whole 256-element quantization blocks (BLOCK is raised to 256 when the launch
configuration's is smaller; chunks are multiples of BLOCK, so a quantization block never
spans two programs) and is walked as [BLOCK // 256, 256] rows: the states are dequantized
(`values[code] * absmax`), the kind's update runs on float32 values as for any other
storage, and each new state is requantized from its new float32 values: the row's absmax
over the tensor's elements (the quiet NaN if any is NaN, as torch.amax propagates it and
the C++ kernels store it), q = x / absmax, the code by one bucket-entry load
(fusedopt/_code_lookup.py), NaN q -> code 0, an all-zero row -> the code of 0.0
(`_int8.py`, the operations of csrc/include/fusedopt/int8_states.h). The param's update
reads the new float32 state, not its requantized value, as in the reference. A skipped step
(found_inf) stores nothing, codes and absmax included. LAMB's norm pass dequantizes the
same way.

bf16 stochastic rounding (config.round_seed, bf16_stochastic_round=True; bf16 params without
a master copy): the param is stored with `_math.stochastic_bf16`, each program computing its
tensor's rounding key once from the seed (an int64 argument, not specialised on) and its
column; nearest even for everything else.

Master weights (config.master_weights, 16-bit params): the states are float32 and the
table's last state row holds each param's float32 master copy. The math reads the master
instead of the param, updates it and the states in float32, and stores the master rounded
once into the param; the grad stays 16-bit.

Step counters: scalars that depend on a tensor's counter (Adam's bias corrections) are
computed once per program, in float64, from the counter read through the table's step
row, so a step needs no device-to-host sync and tensors whose counters differ each get
their own. (Once per program rather than once per tensor: a program cannot share values
with the other programs of its tensor without a grid-wide barrier; the cost is a few
hundred float64 operations per 16K-element chunk.) The counters are incremented by one
`torch._foreach_add_` before the launch, as torch's fused optimizers do: one kernel
cannot both read a counter in every program of a tensor and bump it exactly once without
a grid-wide barrier. With found_inf the increment is `found_inf == 0`, computed on the
device, so a skipped step is not counted either.

Block loop: each program walks the CHUNK // BLOCK blocks of its chunk, a loop with a
compile-time bound; a block wholly inside the tensor is loaded without a mask, with 16-byte
alignment promised to the compiler when every address of the batch is 16-byte aligned (so
they become vector loads), the block holding the tensor's end is masked, and blocks past it
do nothing. (A loop bounded by the run-time count of full blocks is what the interpreter of
triton <= 3.6 cannot run with numpy >= 2.4: it turns the bound into a Python int with
`int()` of a one-element array, which such numpy refuses; a `while` loop, as in
`_math.step_power`, runs there.)

Triton versions: everything here runs on triton 3.6 (the GPU machine's) and later. The
two features beyond plain scalars are used the way 3.6 supports them: JITFunction
arguments (constexprs by their source's hash) and namedtuple constexprs read by field
(`OPTIONS.amsgrad`, `SLOT.beta1`). Tuple *kernel arguments* are avoided: triton gives a
Python float in a tuple float32, so the scalars travel as eight float64 arguments.

On CPU tensors the kernels run only under Triton's interpreter, which @triton.jit picks
when a module is imported: TRITON_INTERPRET=1 must be set before `import fusedopt`.
That is how the tests run them; `auto` never picks this backend for CPU tensors.
"""
from __future__ import annotations

import collections
import contextlib
import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Dict, List, Optional, Tuple

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    raise
except Exception as error:  # a broken install must not break `import fusedopt`
    raise ImportError(f"triton failed to import: {error!r}") from error

from ..._layout import (FIRST_STATE_ROW, GRAD_ROW, LOW_PRECISION, NUMEL_ROW, PARAM_ROW, GradTransform, TensorBatch,
                        UpdateConfig)
from ..._quantize import BLOCK_SIZE as QBLOCK
from ..._sparse_rows import kernel_dtype_problem
from ..base import Backend
from . import _factored, _int8, _kernel, _norms, _reduce

MAX_SCALARS = 8  # h0..h7 of the kernel
MAX_STATES = 4  # state pointers the kernel hands an update (the master copy not counted)


@dataclass(frozen=True)
class LaunchConfig:
    """Block geometry shared by every optimizer: the one place to tune it.

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


# ----------------------------------------------------------------------------- optimizer kinds
def _interpreted() -> bool:
    """Whether the kernels were built for Triton's interpreter (decided by TRITON_INTERPRET
    when the @triton.jit decorators ran, i.e. at import)."""
    return not isinstance(_kernel.multi_tensor_kernel, triton.runtime.jit.JITFunction)


_KINDS: Dict[str, ModuleType] = {}


def kind_module(kind: str) -> ModuleType:
    """fusedopt.backends.triton.<kind>, imported on first use and checked once."""
    module = _KINDS.get(kind)
    if module is not None:
        return module
    name = f"{__name__}.{kind}"
    if not kind.isidentifier() or kind.startswith("_"):
        raise ValueError(f"invalid optimizer kind {kind!r}")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise
        raise ValueError(f"the Triton backend has no update for optimizer kind {kind!r}: "
                         f"fusedopt/backends/triton/{kind}.py is missing") from None
    missing = [attr for attr in ("arguments", "coefficients", "update") if not hasattr(module, attr)]
    from ...optim._spec import spec as _spec_of  # registered by fusedopt.optim (imported late)
    if _spec_of(kind).scalar_states and not hasattr(module, "advance_scalars"):
        missing.append("advance_scalars")
    if missing:
        raise TypeError(f"{name} must define {', '.join(missing)} (see fusedopt.backends.triton)")
    kernel_type = type(_kernel.multi_tensor_kernel)
    if type(module.update) is not kernel_type or type(module.coefficients) is not kernel_type:
        raise RuntimeError(f"{name} was imported under another TRITON_INTERPRET than {_kernel.__name__}; "
                           "re-import the whole package (its modules all read TRITON_INTERPRET when imported)")
    _KINDS[kind] = module
    return module


_SLOTS: Dict[type, tuple] = {}


def _state_type(config: UpdateConfig, master: bool, dtype):
    """The states' storage type, as dispatch_storage in C++: bfloat16 with bf16_states
    (state_dtype=torch.bfloat16; the master copy stays float32), float32 with master weights
    or float32_states, else the param's."""
    if config.bf16_states:
        return tl.bfloat16
    return tl.float32 if master or config.float32_states else dtype


def _storage(config: UpdateConfig, batch: TensorBatch, master: bool, num_scalars: int, rows: int):
    """(number of state tensors, INT8, SIGNED) of a launch over `batch` whose address table has
    `rows` rows: the state rows are those after the fixed ones, less the master copy, the
    scalar states and, with 8-bit states, one absmax row per state."""
    num_states = rows - FIRST_STATE_ROW - master - num_scalars - len(batch.scales)
    if not config.int8_states:
        return num_states, False, 0
    if len(batch.scales) != num_states or len(config.int8_signed) != num_states:
        raise ValueError(f"8-bit states: {num_states} state rows with {len(batch.scales)} absmax rows and "
                         f"{len(config.int8_signed)} code signs; expected one of each per state")
    return num_states, True, sum(1 << k for k, signed in enumerate(config.int8_signed) if signed)


def _slots(scalars_type: type) -> tuple:
    """The namedtuple of the scalars' positions among h0..h7, by field name: SLOT.beta1."""
    slots = _SLOTS.get(scalars_type)
    if slots is None:
        slots = _SLOTS[scalars_type] = scalars_type(*range(len(scalars_type._fields)))
    return slots


# ----------------------------------------------------------------------------- device tables
@dataclass(frozen=True)
class _DeviceTables:
    """What the kernel of one batch reads, on the batch's device."""

    table: torch.Tensor  # int64 [rows * n]: the batch's address table
    work: torch.Tensor  # int64 [programs, 2]: (column, first element) of each program's chunk
    programs: int
    rows: int  # of the address table
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
# per step, uploaded asynchronously. Both caches also key on the current stream: a table is
# only read by kernels on the stream it was allocated on, so when an evicted entry is freed
# the allocator cannot hand its memory to new work while another stream's kernel still
# reads it (as _factored's workspaces).
_tables: _LRU = _LRU(capacity=64)
# The work map depends only on the element counts and the geometry, which rarely change.
_work_maps: _LRU = _LRU(capacity=64)


def _work_map(numels: torch.Tensor, numels_key: bytes, chunk: int, device: torch.device) -> Tuple[torch.Tensor, int]:
    """`numels_key`: the element counts' bytes, a cheap cache key (torch's `.numpy()` would
    make numpy, which torch does not require, a dependency)."""
    key = (numels_key, chunk, device, _factored._current_stream(device))
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


def _launch_config(batch: TensorBatch) -> LaunchConfig:
    """LAUNCH_CONFIG, with blocks of at least one quantization block (256 elements) for 8-bit
    states, so every block of the loop, and every chunk, holds whole quantization blocks."""
    config = LAUNCH_CONFIG
    if batch.scales and config.block < QBLOCK:
        config = LaunchConfig(block=QBLOCK, blocks_per_program=max(1, config.chunk // QBLOCK),
                              num_warps=config.num_warps)
    return config


def _device_tables(batch: TensorBatch) -> _DeviceTables:
    config = _launch_config(batch)
    key = (batch.table_version, config, _factored._current_stream(batch.device))
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
        rows=host.shape[0],
        aligned=bool((addresses % _kernel.VECTOR_BYTES.value == 0).all()),
        block=config.block,
        chunk=config.chunk,
        num_warps=config.num_warps,
    )
    _tables.put(key, tables)
    return tables


# ----------------------------------------------------------------------------- launch
def _launch(kind: str, tables: _DeviceTables, batch: TensorBatch, config: UpdateConfig) -> None:
    """One launch of the skeleton over the batch with kind's update."""
    module = kind_module(kind)
    scalars, options = module.arguments(config)
    if len(scalars) > MAX_SCALARS:
        raise ValueError(f"{module.__name__}: at most {MAX_SCALARS} run-time scalars, got {len(scalars)}")
    transform = config.grad_transform
    factors = (transform.grad_scale, transform.found_inf, transform.clip_coef, config.lr_tensor)
    dtype = _TRITON_DTYPES[batch.dtype]
    master = bool(config.master_weights) and batch.dtype in LOW_PRECISION  # as dispatch_storage in C++
    num_scalars = len(batch.scalars)
    if num_scalars > 2:
        raise ValueError(f"the Triton kernel hands a kind at most 2 scalar states; {kind!r} has {num_scalars}")
    num_states, int8, signed = _storage(config, batch, master, num_scalars, tables.rows)
    if not 0 <= num_states <= MAX_STATES:
        raise ValueError(f"the Triton kernel hands an update at most {MAX_STATES} state tensors; "
                         f"this batch of {kind!r} has {num_states}")
    hyper = tuple(map(float, scalars)) + (0.0,) * (MAX_SCALARS - len(scalars))
    # bf16_stochastic_round: the call's seed, for bf16 params without a master copy only (as
    # the C++ dispatch), passed as an int64 (seeds are drawn below 2^62)
    stochastic = config.round_seed if batch.dtype == torch.bfloat16 and not master else 0
    if not 0 <= stochastic < 2**63:
        raise RuntimeError(f"round_seed must be an int in [0, 2**63) for the Triton kernel, got {stochastic!r}")
    if tables.programs:  # none when every tensor is empty (their scalar states still advance, below)
        _kernel.multi_tensor_kernel[(tables.programs,)](
            tables.table, tables.work, len(batch),
            # An absent factor's pointer is never read (its flag below is off): any device tensor will do.
            *(tables.table if t is None else t for t in factors),
            float(config.lr), float(transform.clip_value or 0.0), *hyper,
            tables.table if transform.tensor_clip is None else transform.tensor_clip,
            tables.table if config.tensor_scale is None else config.tensor_scale,
            _int8.code_tables_on(batch.device) if int8 else tables.table, int(stochastic),
            TENSOR_CLIP=transform.tensor_clip is not None, TENSOR_SCALE=config.tensor_scale is not None,
            COEFFICIENTS=module.coefficients, UPDATE=module.update, SLOT=_slots(type(scalars)), OPTIONS=options,
            DTYPE=dtype, STATE=tl.uint8 if int8 else _state_type(config, master, dtype),
            COMPUTE=tl.float64 if dtype == tl.float64 else tl.float32,
            NUM_STATES=num_states, MASTER=master, COUNTER=batch.steps is not None, GRAD_SCALE=factors[0] is not None,
            FOUND_INF=factors[1] is not None, CLIP_COEF=factors[2] is not None or transform.tensor_clip is not None,
            CLIP_VALUE=transform.clip_value is not None, LR_TENSOR=factors[3] is not None,
            ALIGNED=tables.aligned, BLOCK=tables.block, CHUNK=tables.chunk, NUM_SCALARS=num_scalars,
            STOCHASTIC=bool(stochastic), INT8=int8, SIGNED=signed, num_warps=tables.num_warps,
            enable_fp_fusion=False,
        )
    if num_scalars:
        _kernel.scalar_state_kernel[(len(batch),)](
            tables.table, len(batch), tables.table if factors[1] is None else factors[1],
            tables.table if factors[3] is None else factors[3], float(config.lr), *hyper,
            ADVANCE=module.advance_scalars, SLOT=_slots(type(scalars)), OPTIONS=options, NUM_STATES=num_states,
            MASTER=master, NUM_SCALARS=num_scalars, FOUND_INF=factors[1] is not None,
            LR_TENSOR=factors[3] is not None, num_warps=1, enable_fp_fusion=False,
        )


def _advance_steps(steps: List[torch.Tensor], transform: GradTransform) -> None:
    """Each step counter +1, before the launch (which reads the new values); +0 when the
    step is skipped (`found_inf != 0`), computed on the device so nothing waits on the host."""
    found_inf = transform.found_inf
    if found_inf is None:
        torch._foreach_add_(steps, 1.0)
    else:  # logical_not: 1.0 where found_inf == 0 (NaN counts as found, as in the kernel); one small kernel
        counted = torch.logical_not(found_inf, out=torch.empty_like(found_inf)).reshape(())
        torch._foreach_add_(steps, counted)


def _check_tensor_scale(config: UpdateConfig, batch: TensorBatch) -> None:
    scale = config.tensor_scale
    if scale is not None and (scale.dtype != torch.float64 or scale.dim() != 1 or scale.numel() != len(batch)
                              or scale.device != batch.device or not scale.is_contiguous()):
        raise RuntimeError(f"tensor_scale must be a contiguous float64 tensor of {len(batch)} values on {batch.device}")


# ----------------------------------------------------------------------------- backend
class TritonBackend(Backend):
    name = "triton"
    reads_lr_tensor = True
    # factored: Adafactor (_factored.py, _factored_kernel.py); int8_states: state_dtype="int8" (_int8.py)
    kernels = ("elementwise", "factored", "int8_states")

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

    def sum_of_squares_per_tensor(self, tensors: List[torch.Tensor]) -> torch.Tensor:
        """Two launches (fusedopt/backends/triton/_reduce.py) for dense contiguous tensors of
        one supported dtype and device; torch's otherwise."""
        if not tensors:
            return super().sum_of_squares_per_tensor(tensors)
        dtype, device = tensors[0].dtype, tensors[0].device
        if dtype not in _TRITON_DTYPES or not all(
                t.dtype == dtype and t.device == device and t.layout == torch.strided and t.is_contiguous()
                for t in tensors):
            return super().sum_of_squares_per_tensor(tensors)
        on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
        with on_device:
            return _reduce.sum_of_squares_per_tensor(tensors, _TRITON_DTYPES[dtype])

    def norms(self, kind: str, batch: TensorBatch, config: UpdateConfig) -> torch.Tensor:
        """The kind's norm pass (fusedopt/backends/triton/_norms.py): two launches, no sync."""
        self.check_state_storage(config, batch.dtype)
        module = kind_module(kind)
        config.grad_transform.check_for(batch.device, batch.dtype, len(batch))
        on_device = torch.cuda.device(batch.device) if batch.device.type == "cuda" else contextlib.nullcontext()
        with on_device:
            tables = _device_tables(batch)
            master = bool(config.master_weights) and batch.dtype in LOW_PRECISION
            num_states, int8, signed = _storage(config, batch, master, len(batch.scalars), tables.rows)
            dtype = _TRITON_DTYPES[batch.dtype]
            return _norms.norms(module, tables.table, batch, config, dtype, master, num_states, _slots,
                                tl.uint8 if int8 else _state_type(config, master, dtype),
                                _int8.code_tables_on(batch.device) if int8 else None, signed)

    def sparse_rows_unsupported(self, dtype: torch.dtype) -> Optional[str]:
        return kernel_dtype_problem(dtype)

    def sparse_adam_update(self, batch, hyper, lr) -> None:
        from ._sparse_adam import sparse_adam_update

        on_device = torch.cuda.device(batch.device) if batch.device.type == "cuda" else contextlib.nullcontext()
        with on_device:
            sparse_adam_update(batch, hyper, lr)

    def update_factored(self, kind: str, batch, config) -> None:
        """Adafactor: five launches over the bucket (fusedopt/backends/triton/_factored.py)."""
        if kind != "adafactor":
            raise ValueError(f"backend 'triton' has no factored kernels for {kind!r}")
        on_device = torch.cuda.device(batch.device) if batch.device.type == "cuda" else contextlib.nullcontext()
        with on_device:
            _factored.update_factored(batch, config)

    def update(self, kind: str, batch: TensorBatch, config: UpdateConfig) -> None:
        self.check_state_storage(config, batch.dtype)
        kind_module(kind)  # an unknown kind fails before anything moves
        config.grad_transform.check_for(batch.device, batch.dtype, len(batch))
        _check_tensor_scale(config, batch)
        lr = config.lr_tensor
        if lr is not None and (lr.dtype != torch.float64 or lr.numel() != 1 or lr.device != batch.device):
            raise RuntimeError(f"lr_tensor must be a one-element float64 tensor on {batch.device}")
        if batch.steps is not None:
            _advance_steps(batch.steps, config.grad_transform)
        # Triton launches on the current device, on its current stream.
        on_device = torch.cuda.device(batch.device) if batch.device.type == "cuda" else contextlib.nullcontext()
        with on_device:
            tables = _device_tables(batch)
            if tables.programs or batch.scalars:  # nothing to do when every tensor is empty, but scalars
                _launch(kind, tables, batch, config)


__all__ = ["LAUNCH_CONFIG", "LaunchConfig", "TritonBackend", "kind_module"]
