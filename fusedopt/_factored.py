"""The "factored" kernel shape (Adafactor, fusedopt/optim/adafactor.py): what Python and the
kernels agree on, and the checks that make its addresses safe.

Adafactor's second moment is not laid out like the param: a param of shape (..., R, C)
keeps `row_var` (..., R, 1) and `col_var` (..., 1, C), and a vector (or a 0-dim param)
keeps `variance` of its own shape. Its step needs, per tensor, the RMS of the param, the
row and column means of g² and the RMS of the update, so no element-wise loop can do it.
Every backend runs it in passes over the whole bucket (one native call, or one launch per
pass, per bucket; never one per tensor), keeping the per-tensor values where the tensors
are, so no step waits on the host.

The address table (int64, [FACTORED_ROWS, n], one column per tensor, host memory), read
by csrc/cpu/factored_cpu.cpp and the Triton launcher:

    NUMEL   element count of the param
    PARAM   param            (the param's dtype)
    GRAD    grad             (laid out like the param: contiguous)
    STEP    float32 step counter
    ROWS    R = shape[-2] for a factored param (dim >= 2), 0 for a vector
    COLS    C = shape[-1] for a factored param, the numel for a vector
    MOMENT  row_var (lead*R elements) or variance (numel elements)
    COL     col_var (lead*C elements), 0 for a vector

with lead = numel / (R*C), the product of the leading dimensions.
"""
from __future__ import annotations

import array
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ._buckets import HeldMemory, WrittenSpans
from ._layout import TensorBatch
from ._memory import storage_problem

FACTORED = "factored"  # OptimizerSpec.kernel of Adafactor
MOMENT_KEYS = ("row_var", "col_var", "variance")  # the state a param's shape calls for: the first two, or the last
NUMEL, PARAM, GRAD, STEP, ROWS, COLS, MOMENT, COL = range(8)
FACTORED_ROWS = 8


def is_factored(p: torch.Tensor) -> bool:
    """torch.optim.Adafactor factors the second moment of params with more than one dimension."""
    return p.dim() > 1


def moment_shapes(p: torch.Tensor) -> Tuple[Tuple[int, ...], Optional[Tuple[int, ...]]]:
    """(shape of row_var or variance, shape of col_var or None), as torch.optim.Adafactor makes them."""
    if not is_factored(p):
        return tuple(p.shape), None
    rows, cols = list(p.shape), list(p.shape)
    rows[-1] = 1
    cols[-2] = 1
    return tuple(rows), tuple(cols)


def new_moments(p: torch.Tensor, state: dict) -> None:
    """Zero second moments in the param's dtype and device (torch's new_zeros / zeros_like)."""
    first, second = moment_shapes(p)
    if second is None:
        state.setdefault("variance", torch.zeros(first, dtype=p.dtype, device=p.device))
    else:
        state.setdefault("row_var", torch.zeros(first, dtype=p.dtype, device=p.device))
        state.setdefault("col_var", torch.zeros(second, dtype=p.dtype, device=p.device))


@dataclass(frozen=True)
class FactoredConfig:
    """One call's scalars. lr: a float, NaN when `lr_tensor` (a 0-dim float64 tensor on the
    params' device, for backends that read it: Backend.reads_lr_tensor) carries it.
    eps1 is resolved: torch's None is the params' dtype's machine epsilon."""

    lr: float
    lr_tensor: Optional[torch.Tensor]
    beta2_decay: float
    eps1: float
    eps2: float
    d: float
    weight_decay: float
    maximize: bool


class FactoredBatch:
    """The tensors of one bucket one backend call updates: params with grads (one device,
    one dtype, contiguous), their float32 step counters, `moments` (row_var or variance)
    and `col_moments` (col_var, None for a vector), `shapes` (lead, R, C) per tensor (R = 0
    for a vector, whose C is its numel), and the address table described above."""

    __slots__ = ("params", "grads", "steps", "moments", "col_moments", "shapes", "device", "dtype", "table",
                 "table_version")

    def __init__(self, params, grads, steps, moments, col_moments, shapes, device, dtype, table, table_version):
        self.params: List[torch.Tensor] = params
        self.grads: List[torch.Tensor] = grads
        self.steps: List[torch.Tensor] = steps
        self.moments: List[torch.Tensor] = moments
        self.col_moments: List[Optional[torch.Tensor]] = col_moments
        self.shapes: List[Tuple[int, int, int]] = shapes
        self.device = device
        self.dtype = dtype
        self.table = table
        self.table_version = table_version

    def __len__(self) -> int:
        return len(self.params)

    def table_address(self) -> int:
        return self.table.buffer_info()[0]


def tensor_shape(p: torch.Tensor) -> Tuple[int, int, int]:
    """(lead, R, C) of a param: R = 0 marks a vector (or 0-dim param), whose C is its numel."""
    if not is_factored(p):
        return 1, 0, p.numel()
    rows, cols = p.shape[-2], p.shape[-1]
    lead = math.prod(p.shape[:-2])
    return lead, rows, cols


class FactoredTables:
    """Builds a bucket's FactoredBatch and keeps it while nothing it depends on changed: the
    element batch (its table version changes with any param, grad or step tensor), the
    state dicts (StateMap's count changes with any entry stored), and the memory of the
    moments it points to (checked each step, as the buckets check their state's: a storage
    resized in place under a moment must not be written)."""

    def __init__(self, optimizer_name: str):
        self.name = optimizer_name
        self._key = None
        self._batch: Optional[FactoredBatch] = None
        self._memory: Optional[HeldMemory] = None  # the moments' storages, held: see batch()
        # One tuple per distinct shape, reused by every build: a loop that sets grads to None
        # rebuilds these tables each step, and new tuples kept from one step to the next made
        # Python's collector run full collections (see Bucket._install_grads).
        self._shapes: Dict[Tuple[int, int, int], Tuple[int, int, int]] = {}

    def batch(self, batch: TensorBatch, owners: Sequence[torch.Tensor], state) -> FactoredBatch:
        counted = getattr(state, "all_counted", False)
        key = (batch.table_version, id(state), getattr(state, "version", None)) if counted else None
        # The moments' storages are held (their memory cannot be freed under the table) and
        # their sizes and addresses compared: resize_() frees or moves memory under tensor
        # objects that stay the same, which no key above sees.
        if key is None or key != self._key or not self._memory.unchanged():
            self._key = None
            built = self._build(batch, owners, state)
            # _build may store contiguous copies in the state: record the count after it.
            self._key = (batch.table_version, id(state), getattr(state, "version", None)) if counted else None
            # Kept without its grads: zero_grad(set_to_none=True) must free them (the element
            # batch's table version says when the grads' addresses change).
            built.grads = None
            self._batch = built
        cached = self._batch
        return FactoredBatch(cached.params, batch.grads, cached.steps, cached.moments, cached.col_moments,
                             cached.shapes, cached.device, cached.dtype, cached.table, cached.table_version)

    def _build(self, batch: TensorBatch, owners: Sequence[torch.Tensor], state) -> FactoredBatch:
        moments, col_moments, shapes = [], [], []
        for owner, p in zip(owners, batch.params):
            if not p.is_contiguous():
                raise RuntimeError(f"{self.name}: params must be contiguous (the row and column means follow the "
                                   f"last two dimensions); a param of shape {tuple(p.shape)} has strides "
                                   f"{p.stride()}: make it contiguous before passing it to the optimizer")
            s = state[owner]
            first, second = moment_shapes(p)
            if second is None:
                moments.append(self._checked(s, "variance", p, first))
                col_moments.append(None)
            else:
                moments.append(self._checked(s, "row_var", p, first))
                col_moments.append(self._checked(s, "col_var", p, second))
            shape = tensor_shape(p)
            shapes.append(self._shapes.setdefault(shape, shape))
        held = [*moments, *(c for c in col_moments if c is not None)]
        self._memory = HeldMemory(held, with_addresses=True)
        written = [*batch.params, *batch.steps, *held]
        spans = WrittenSpans(written, self.name)
        if spans.overlapped_by_tensors(batch.grads):
            raise RuntimeError(f"{self.name}: a grad shares memory with a param or a state tensor "
                               "(p.grad = p.detach()?); give each grad its own memory (p.grad = p.detach().clone())")
        n = len(batch)
        columns = [
            [p.numel() for p in batch.params],
            [p.data_ptr() for p in batch.params],
            [g.data_ptr() for g in batch.grads],
            [t.data_ptr() for t in batch.steps],
            [r for _, r, _ in shapes],
            [c for _, _, c in shapes],
            [m.data_ptr() for m in moments],
            [0 if c is None else c.data_ptr() for c in col_moments],
        ]
        table = array.array("q", bytes(8 * FACTORED_ROWS * n))
        for row, values in enumerate(columns):
            table[row * n:(row + 1) * n] = array.array("q", values)
        return FactoredBatch(batch.params, batch.grads, batch.steps, moments, col_moments, shapes, batch.device,
                             batch.dtype, table, batch.table_version)

    def _checked(self, s: dict, key: str, p: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
        """s[key], a second moment of `shape` in the param's dtype and device, contiguous (a
        contiguous copy replaces one laid out otherwise)."""
        if key not in s:
            other = "row_var/col_var" if key == "variance" else "variance"
            raise RuntimeError(f"{self.name}: the state of a param of shape {tuple(p.shape)} has no '{key}'"
                               f"{' (it has ' + other + ': was the param reshaped?)' if other.split('/')[0] in s else ''}")
        t = s[key]
        problem = None
        if not isinstance(t, torch.Tensor):
            problem = f"is a {type(t).__name__}, not a tensor"
        elif t.dtype != p.dtype or t.device != p.device:
            problem = f"has dtype {t.dtype} on {t.device}, expected {p.dtype} on {p.device}"
        elif tuple(t.shape) != shape:
            problem = f"has shape {tuple(t.shape)}, expected {shape} for a param of shape {tuple(p.shape)}"
        elif t.layout != torch.strided:
            problem = f"has layout {t.layout}"
        if problem is None and not t.is_contiguous():
            t = t.contiguous()
            s[key] = t
        if problem is None:
            problem = storage_problem(t)
        if problem:
            raise RuntimeError(f"{self.name}: state '{key}' of a param {problem}")
        return t
