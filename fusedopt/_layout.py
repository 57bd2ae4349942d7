"""What Python and the kernels agree on, in one leaf module (imports only torch): the rows
of the address table and the dtype codes (csrc/include/fusedopt/tensor_table.h and
common.h), the batch of tensors one backend call updates, the gradient transform every
optimizer applies first, and the config of one update call.

Every backend and the bucket code import these from here; nothing here imports fusedopt.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import torch

# Rows of the address table; must match csrc/include/fusedopt/tensor_table.h. After the
# state rows (FIRST_STATE_ROW + k), the master copy (with master weights), then one row per
# scalar state (OptimizerSpec.scalar_states, in order): float32 0-dim tensors that only the
# per-tensor coefficient code reads and writes; then, for a batch with 8-bit states
# (state_dtype="int8", fusedopt/_quantize.py), one row per state tensor: its float32 block absmax.
NUMEL_ROW, PARAM_ROW, GRAD_ROW, STEP_ROW, FIRST_STATE_ROW = range(5)

# Dtype codes; must match enum class DType in csrc/include/fusedopt/common.h.
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
SUPPORTED_DTYPES = tuple(DTYPE_CODES)
LOW_PRECISION = (torch.float16, torch.bfloat16)
STEP_DTYPE = torch.float32
MASTER_KEY = "master_param"  # the fp32 master copy of a 16-bit param: the last state row


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute an update of params of `dtype` in (a complex param's is
    its real pairs'): float64 for float64, float32 for every other (16-bit math is float32)."""
    return torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


CLIP_EPSILON = 1e-6  # torch's clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1


@dataclass(frozen=True)
class GradTransform:
    """What happens to every gradient before the optimizer's math, in this order (mirrors
    struct GradTransform in csrc/include/fusedopt/common.h). The first three are None or a
    one-element tensor on the params' device (float32, clip_coef in the math type: see
    check), read by the kernel itself, so no step waits on the host:

    grad_scale: torch.amp.GradScaler's scale; grads are divided by it.
    found_inf:  nonzero skips the whole step (params, state and step counters unchanged).
    clip_coef:  max_grad_norm's clip coefficient; grads are multiplied by it (the norm is
                that of the unclamped, unscaled grads).
    clip_value: clip_grad_value, a plain number (None: no clamp); each grad element is then
                clamped to [-clip_value, clip_value] in the math type.

    So the grad an optimizer sees is torch's after `scaler.unscale_(opt)`,
    `clip_grad_norm_(params, max_grad_norm)` and `clip_grad_value_(params, clip_value)`;
    maximize and weight decay come after, in the optimizer's own math.

    With a scale every backend also writes the grad it used (`clamp(grad / grad_scale *
    clip_coef)`, before maximize and weight decay) back into the grad, so p.grad after
    `scaler.step(optimizer)` is what torch's fused optimizers leave there (grad / scale).
    A skipped step writes nothing (torch's fused optimizers return before touching the
    grads). max_grad_norm or clip_value alone leave the grads as they are.
    """

    grad_scale: Optional[torch.Tensor] = None
    found_inf: Optional[torch.Tensor] = None
    clip_coef: Optional[torch.Tensor] = None
    clip_value: Optional[float] = None
    # clip_grad_norm_per_tensor: a tensor [len(batch)] on the params' device, each tensor's own
    # clip coefficient times clip_coef's (then the grad's multiplier in its place), in the
    # math type as clip_coef; made per batch by fusedopt/optim/_plan.py's run_update.
    tensor_clip: Optional[torch.Tensor] = None

    def check(self, device: torch.device, dtype: torch.dtype) -> None:
        """Kernels read each through a raw pointer beside the params of kernel dtype `dtype`:
        grad_scale and found_inf as one float32 (GradScaler's), clip_coef and tensor_clip in the
        update's math type (math_dtype: float64 grads are scaled in float64, as torch's
        clip_grad_norm_ scales them). Anything else is refused before a launch (the optimizers
        pass such tensors; the torch.library op passes what it is given). clip_value must be a
        finite number > 0."""
        check_clip_value(self.clip_value)
        for name, expected in (("grad_scale", torch.float32), ("found_inf", torch.float32),
                               ("clip_coef", math_dtype(dtype))):
            t = getattr(self, name)
            if t is not None and (t.dtype != expected or t.numel() != 1 or t.device != device):
                raise RuntimeError(f"{name} must be a one-element {_dtype_name(expected)} tensor on {device}, "
                                   f"got {tuple(t.shape)} {t.dtype} on {t.device}")
        t, expected = self.tensor_clip, math_dtype(dtype)
        if t is not None and (t.dtype != expected or t.dim() != 1 or t.device != device or not t.is_contiguous()):
            raise RuntimeError(f"tensor_clip must be a contiguous 1-D {_dtype_name(expected)} tensor on {device}, "
                               f"got {tuple(t.shape)} {t.dtype} on {t.device}")

    def check_for(self, device: torch.device, dtype: torch.dtype, tensors: int) -> None:
        """check(device, dtype), and one tensor_clip value per tensor of the call."""
        self.check(device, dtype)
        if self.tensor_clip is not None and self.tensor_clip.numel() != tensors:
            raise RuntimeError(f"tensor_clip has {self.tensor_clip.numel()} values for {tensors} tensors")

    def addresses(self, device: torch.device, dtype: torch.dtype) -> Tuple[int, int, int]:
        """The three addresses for native code (0 for none), checked."""
        self.check(device, dtype)
        return tuple(0 if t is None else t.data_ptr() for t in (self.grad_scale, self.found_inf, self.clip_coef))

    def for_dtype(self, dtype: torch.dtype) -> "GradTransform":
        """This transform with its clip coefficients in the math type of params of `dtype` (the
        torch.library op is given one coefficient for buckets of every dtype)."""
        wanted = math_dtype(dtype)
        converted = {name: t.to(wanted) for name in ("clip_coef", "tensor_clip")
                     if (t := getattr(self, name)) is not None and t.dtype != wanted}
        return dataclasses.replace(self, **converted) if converted else self

    def writes_grad(self) -> bool:
        """Whether the step stores the transformed grad back (see the class docstring)."""
        return self.grad_scale is not None

    def skips_step(self) -> bool:
        """Host-side check, for backends that may synchronise (the reference)."""
        return self.found_inf is not None and bool(self.found_inf.item() != 0)


NO_GRAD_TRANSFORM = GradTransform()


def _check_clip_limit(name: str, value) -> None:
    """A clipping option: None (off), or a finite number > 0 (a bool is not a number here)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not value > 0:
        raise ValueError(f"Invalid {name}: {value!r} (None or a finite number > 0)")


def check_max_grad_norm(value) -> None:
    _check_clip_limit("max_grad_norm", value)


def check_clip_norm_per_tensor(value) -> None:
    _check_clip_limit("clip_grad_norm_per_tensor", value)


def check_clip_value(value) -> None:
    _check_clip_limit("clip_grad_value", value)


def check_clip_options(group: Mapping[str, Any]) -> None:
    """A param group's three clip options (max_grad_norm, clip_grad_value,
    clip_grad_norm_per_tensor), each None or a finite number above 0."""
    check_max_grad_norm(group.get("max_grad_norm"))
    check_clip_value(group.get("clip_grad_value"))
    check_clip_norm_per_tensor(group.get("clip_grad_norm_per_tensor"))


@dataclass(frozen=True)
class UpdateConfig:
    """One backend call's inputs besides the tensors: `Backend.update(kind, batch, config)`.

    hyper: the optimizer's own hyper-parameters **by name** (its OptimizerSpec's
        `hyperparameters`: floats and bools; `lr` is not among them). Native code receives
        them as named fields of a struct generated from the math header's list, so a
        missing, unknown or misspelled name is an error, never a silent reordering.
    lr: the learning rate as a float; NaN when `lr_tensor` carries it. LR_TENSOR: a
        learning rate given as a tensor (torch accepts one; schedulers write it in place)
        reaches backends that read it from memory (`Backend.reads_lr_tensor`) as a 0-dim
        float64 tensor on the params' device, read by the kernel, so a step captured in a
        CUDA graph follows the tensor at each replay and nothing waits on the host.
    first_step: every state tensor of the batch was created for this step (SGD's
        first-step rule: a new momentum buffer starts as a copy of the gradient).
    master_weights: 16-bit params whose states are float32 and whose last state row is
        the fp32 master copy the math updates (then rounded once into the param).
    bf16_states: the state tensors (not the master copy, step counters or scalar states) are
        stored as bfloat16 (state_dtype=torch.bfloat16): read into float32, updated in
        float32 and rounded once to bf16, to nearest even, in the same pass.
    float32_states: 16-bit params without a master copy whose state tensors are float32 (the
        tensors under 4,096 elements of a state_dtype="int8" group, which keep float32 states
        as bitsandbytes' do, so a bf16 second moment does not stall nor an fp16 one underflow).
    int8_states: the state tensors (not the master copy) are uint8 codes of the blockwise
        dynamic 8-bit format (state_dtype="int8", fusedopt/_quantize.py), with their block
        scales in `TensorBatch.scales`: dequantized, updated in float32, requantized.
    int8_signed: with int8_states, per state row (the master copy excepted) whether its code is
        the signed one (True) or the unsigned one (_quantize.STATE_CODES).
    round_seed: bf16_stochastic_round's seed for this call (0: round to nearest even): a
        bfloat16 param without a master copy is stored rounded stochastically, `upper 16
        bits of (float32 bits + r)` with r 16 random bits hashed from (round_seed, the
        tensor's index in the batch, the element's index in its memory); NaN kept quiet,
        Inf kept (fusedopt/backends/reference/_rounding.py, csrc/include/fusedopt/common.h).
    """

    hyper: Mapping[str, Any]
    lr: float
    lr_tensor: Optional[torch.Tensor] = None
    first_step: bool = False
    master_weights: bool = False
    grad_transform: GradTransform = NO_GRAD_TRANSFORM
    # Kinds with a per-tensor scale (LAMB's trust ratio, OptimizerSpec.norm_pass): a float64
    # tensor [len(batch)] on the params' device, from the backend's norm pass (run_update).
    tensor_scale: Optional[torch.Tensor] = None
    bf16_states: bool = False
    float32_states: bool = False
    int8_states: bool = False
    int8_signed: Tuple[bool, ...] = ()
    round_seed: int = 0

    def __getattr__(self, name: str) -> Any:
        """`config.beta1` reads the hyper-parameter of that name (the reference and Triton
        updates read them this way)."""
        hyper = self.__dict__.get("hyper")
        if hyper is not None and name in hyper:
            return hyper[name]
        raise AttributeError(f"UpdateConfig has no field or hyper-parameter {name!r}")


class TensorBatch:
    """The tensors one backend call updates: params with grads of one device and dtype.

    `states[k]` lists the k-th state tensor of every param in the optimizer's order (its
    OptimizerSpec's `state_keys`, then MASTER_KEY with master weights). `steps` are the
    float32 step counters (None for optimizers without one); a backend increments each
    exactly once per call (unless GradScaler's found_inf skips the step).

    `scalars[j]` lists the j-th scalar state (OptimizerSpec.scalar_states: ASGD's eta and mu,
    NAdam's mu_product) of every param: float32 0-dim tensors, advanced with the step
    counters (and, like them, left alone when found_inf skips the step).

    `scales[k]` (8-bit states only, else empty) lists the float32 block absmax tensors of the
    k-th state (`states[k]` then holds uint8 codes): ceil(numel / 256) values per param.

    `table` is the int64 address table of csrc/include/fusedopt/tensor_table.h (rows:
    numel, param, grad, step, states..., master copy, scalar states...), already validated; `table_version` changes
    whenever any address in it changes, so backends may cache what they derive from it.
    """

    __slots__ = ("params", "grads", "steps", "states", "device", "dtype", "table", "table_version", "scalars", "scales")

    def __init__(
        self,
        params: List[torch.Tensor],
        grads: List[torch.Tensor],
        steps: Optional[List[torch.Tensor]],
        states: Sequence[List[torch.Tensor]],
        device: torch.device,
        dtype: torch.dtype,
        table,
        table_version: int,
        scalars: Sequence[List[torch.Tensor]] = (),
        scales: Sequence[List[torch.Tensor]] = (),
    ):
        self.params = params
        self.grads = grads
        self.steps = steps
        self.states = states
        self.device = device
        self.dtype = dtype
        self.table = table  # array.array('q'), rows * len(params)
        self.table_version = table_version
        self.scalars = scalars
        self.scales = scales

    def __len__(self) -> int:
        return len(self.params)

    def table_address(self) -> int:
        return self.table.buffer_info()[0]


# Rows of the sparse-row table (lazy Adam, fusedopt/_sparse_rows.py); must match
# csrc/include/fusedopt/sparse_rows.h. One column per param: how many rows its grad has
# (unique, sorted, in range: checked in Python), the elements per row, the param's row
# count (the kernels check every index against it once more), then addresses: the int64 row
# indices, the param, the grad's row values (present rows x row length, contiguous), the
# float32 step counter, exp_avg, exp_avg_sq, and max_exp_avg_sq (0 without amsgrad).
(SPARSE_NNZ_ROW, SPARSE_ROW_LEN_ROW, SPARSE_PARAM_ROWS_ROW, SPARSE_INDEX_ROW, SPARSE_PARAM_ROW, SPARSE_VALUES_ROW,
 SPARSE_STEP_ROW, SPARSE_EXP_AVG_ROW, SPARSE_EXP_AVG_SQ_ROW, SPARSE_MAX_EXP_AVG_SQ_ROW, SPARSE_TABLE_ROWS) = range(11)


class SparseRowBatch:
    """The tensors one lazy (sparse-row) Adam call updates: params of one device and dtype
    with sparse COO grads, each grad given as its unique row indices (`indices[i]`, int64,
    sorted) and the matching rows of values (`values[i]`, shape (rows present, row length),
    contiguous); a row is one element of the param's flattened sparse dims, so an
    nn.Embedding grad's rows are embedding rows. Only those rows of the param and of its
    `exp_avgs`/`exp_avg_sqs` (and `max_exp_avg_sqs` with amsgrad, else None) change; every
    step counter advances once, even for a grad with no rows (as torch.optim.SparseAdam).
    `table` (array('q'), SPARSE_TABLE_ROWS x len) holds the validated addresses."""

    __slots__ = ("params", "indices", "values", "steps", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "row_lengths",
                 "device", "dtype", "table")

    def __init__(self, params, indices, values, steps, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, row_lengths,
                 device, dtype, table):
        self.params = params
        self.indices = indices
        self.values = values
        self.steps = steps
        self.exp_avgs = exp_avgs
        self.exp_avg_sqs = exp_avg_sqs
        self.max_exp_avg_sqs = max_exp_avg_sqs
        self.row_lengths = row_lengths
        self.device = device
        self.dtype = dtype
        self.table = table

    def __len__(self) -> int:
        return len(self.params)

    def table_address(self) -> int:
        return self.table.buffer_info()[0]
