"""Buckets: the params of one param group that share device and dtype, and the cached,
validated address table that lets one native call update all of them.

Everything that makes a raw address safe to hand to C++ is checked here, in Python,
before any kernel runs: dtype and device of every tensor, element counts and layouts
equal to the param's, dense (non-overlapping) memory, no two written tensors sharing
memory. The table is rebuilt only when something it depends on changes (`p.data`
swapped, state replaced or loaded), which the per-step checks below notice at a cost of a
few list comparisons; new grads (a zero_grad(set_to_none=True) loop makes them every step)
rewrite only the grad row, after a check that reads each fact once for all grads.
"""
from __future__ import annotations

import array
import bisect
import collections
import itertools
import operator
import weakref
from itertools import repeat
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from ._layout import (FIRST_STATE_ROW, GRAD_ROW, MASTER_KEY, NUMEL_ROW, PARAM_ROW, STEP_DTYPE, STEP_ROW,
                      SUPPORTED_DTYPES, TensorBatch)
from ._memory import is_dense, storage_problem, storage_problem_strided
from ._metadata_guard import metadata_guard
from ._quantize import SCALE_DTYPE, blocks, dequantized_like, quantized_like, scale_key

# Complex params are updated as torch.optim does: through torch.view_as_real views of the
# param, its grad and its state, so the kernels see pairs of real numbers.
COMPLEX_TO_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def check_param(p: torch.Tensor, optimizer: str) -> None:
    if p.dtype not in SUPPORTED_DTYPES and p.dtype not in COMPLEX_TO_REAL:
        raise RuntimeError(
            f"{optimizer}: params of dtype {p.dtype} are not supported; fusedopt updates float32, "
            "float64, float16, bfloat16, complex64 and complex128 params"
        )
    if p.layout != torch.strided:
        raise RuntimeError(f"{optimizer}: params must be dense (strided) tensors, got layout {p.layout}")
    if not is_dense(p):
        raise RuntimeError(
            f"{optimizer}: a param of shape {tuple(p.shape)} and strides {p.stride()} does not cover its "
            "memory densely (it is a strided view); make it contiguous before passing it to the optimizer"
        )
    problem = storage_problem(p)
    if problem:
        raise RuntimeError(f"{optimizer}: a param of shape {tuple(p.shape)} {problem}")


def check_state_complete(s: Optional[dict], required: Sequence[str], optimizer: str,
                         any_of: Sequence[str] = ()) -> None:
    """A param's state either lacks every key the step needs (new state: created) or has
    them all; one that has trained but lost some (deleted by hand, a checkpoint missing
    one) raises KeyError, as torch.optim does, rather than restart that state at zero under
    the kept step count. (The master copy and 8-bit block scales are not required: they are
    derived from the param and the states when master_weights or state_dtype change.)
    `any_of`: keys of which one suffices (Adafactor's moments: row_var and col_var, or
    variance, by the param's shape)."""
    if not s:
        return
    required = [k for k in required if k not in any_of]
    missing = [k for k in required if k not in s]
    if any_of and not any(k in s for k in any_of):
        missing.append(" or ".join(any_of))
    kept = [k for k in (*required, *any_of) if k in s]
    if missing and kept:
        raise KeyError(f"{optimizer}: the state of a param holds {kept} but not {missing}: it was deleted "
                       "or the checkpoint lacks it. Restore it, or clear the param's state "
                       "(optimizer.state[p] = {}) to start that param afresh")


def split_into_buckets(params: Sequence[torch.Tensor], optimizer: str, strict: bool = False,
                       quantized: Optional[Callable[[torch.Tensor], bool]] = None) -> List["Bucket"]:
    """One bucket per (device, dtype) in first-appearance order; with `quantized` (a group with
    8-bit states), one per (device, dtype, quantized(p)): params whose states are stored in 8
    bits apart from the small ones that keep full-precision states."""
    groups: Dict[tuple, List[torch.Tensor]] = {}
    for p in params:  # checked (check_param) when a step updates them: torch passes over gradless ones
        groups.setdefault((p.device, p.dtype, quantized is not None and quantized(p)), []).append(p)
    return [Bucket(ps, optimizer, strict, quantized=key[2], quantized_rule=quantized) for key, ps in groups.items()]


try:  # FSDP2 (fully_shard) params are DTensors: kernels update their local shards
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed support
    DTensor = ()  # type: ignore[assignment,misc]


def local(t: torch.Tensor) -> torch.Tensor:
    """The tensor whose memory a kernel updates: a DTensor's local shard, else t itself."""
    return t._local_tensor if isinstance(t, DTensor) else t


def kernel_view(t: torch.Tensor) -> torch.Tensor:
    """What a kernel reads and writes for t: its local shard, as real pairs if complex."""
    t = local(t)
    return torch.view_as_real(t) if t.is_complex() and t.layout == torch.strided else t


_versions = itertools.count(1)

# Unbound accessors: map() over them is the cheapest way to read many tensors' metadata.
_data_ptr = torch.Tensor.data_ptr
_stride = torch.Tensor.stride
_is_contiguous = torch.Tensor.is_contiguous
_nbytes = operator.attrgetter("nbytes")
_grad = operator.attrgetter("grad")
_shape = operator.attrgetter("shape")
_dtype = operator.attrgetter("dtype")
_tensor_layout = operator.attrgetter("layout")
_get_device = torch.Tensor.get_device
_is_neg = torch.Tensor.is_neg
_storage_offset = torch.Tensor.storage_offset
_untyped_storage = torch.Tensor.untyped_storage


def _all_of_dtype(tensors: List[torch.Tensor], dtype: torch.dtype) -> bool:
    """Every tensor has this dtype (`p.data = p.data.view(dtype)` keeps address and bytes).
    list.count compares by identity first, in C: the cheapest form of this read (~50 ns a tensor)."""
    return list(map(_dtype, tensors)).count(dtype) == len(tensors)


def _same_layout(tensors: List[torch.Tensor], strides: Optional[List[tuple]]) -> bool:
    """All tensors laid out as recorded: contiguous where `strides` is None (the common
    case, checked without building stride tuples, which also spares the garbage
    collector), else with exactly these strides."""
    if strides is None:
        return all(map(_is_contiguous, tensors))
    return list(map(_stride, tensors)) == strides  # table versions are unique process-wide, so backends may key caches on them


_storage_nbytes = torch.UntypedStorage.nbytes
_storage_ptr = torch.UntypedStorage.data_ptr


def _storage_sizes(tensors) -> List[int]:
    """The bytes each tensor's storage holds."""
    return list(map(_storage_nbytes, map(_untyped_storage, tensors)))


class HeldMemory:
    """The storages a table points into, each with the size (and, for tensors whose own
    address is not rechecked, the address) it had when the table was checked. Holding a
    storage object does not keep its memory: resize_() frees or moves it in place, under
    tensor objects that stay the same. Each step compares these again: one or two cheap
    calls per distinct storage. State that fusedopt creates shares one storage per bucket
    and key (see consolidate), so this costs about one call per param. (Grads are not
    held: see Bucket._grads_unchanged.)"""

    __slots__ = ("storages", "sizes", "addresses", "addressed")

    def __init__(self, tensors, with_addresses: bool):
        storages = list(map(_untyped_storage, tensors))
        sizes = map(_storage_nbytes, storages)
        # One entry per distinct storage, the dict built in C.
        unique = dict(zip(zip(map(_storage_ptr, storages), sizes), storages))
        self.storages = list(unique.values())
        self.sizes = [size for _, size in unique]
        self.addressed = with_addresses
        self.addresses = [address for address, _ in unique] if with_addresses else None

    def unchanged(self) -> bool:
        storages = self.storages
        return (list(map(_storage_nbytes, storages)) == self.sizes
                and (not self.addressed or list(map(_storage_ptr, storages)) == self.addresses))


STATE_ALIGNMENT = 64  # bytes: every consolidated state tensor starts on a 16-byte vector boundary and more


def consolidate(states: List[dict], keys: Sequence[str]) -> None:
    """Move each key's tensors of these states, created a moment ago and so referenced
    nowhere else, into one storage (views in the params' layouts, aligned), so the
    per-step storage check costs one call per key instead of one per param."""
    for key in keys:
        tensors = [s[key] for s in states]
        dtype, device = tensors[0].dtype, tensors[0].device
        if any(t.dtype != dtype or t.device != device for t in tensors):
            continue
        align = max(1, STATE_ALIGNMENT // tensors[0].element_size())
        offsets, total = [], 0
        for t in tensors:
            offsets.append(total)
            total += -(-t.numel() // align) * align
        flat = torch.empty(total, dtype=dtype, device=device)
        for s, t, offset in zip(states, tensors, offsets):
            view = flat.as_strided(t.shape, t.stride(), offset)
            view.copy_(t)
            s[key] = view


def _spans(tensors) -> List[Tuple[int, int]]:
    return [(t.data_ptr(), t.data_ptr() + t.nbytes) for t in tensors if t.numel() > 0]


class WrittenSpans:
    """Byte ranges of the tensors a kernel writes (params, states, steps), sorted, checked
    to be disjoint; answers whether any tensor it only reads (a grad) overlaps them. The
    kernels declare their pointers __restrict: a grad sharing a param's memory
    (`p.grad = p.detach()`) is undefined behaviour that no sanitizer reports.

    Plain lists and bisect, not tensors: the check runs every step grads are new, and a
    torch op parallelised over a thousand entries costs milliseconds on a busy machine."""

    __slots__ = ("starts", "ends_before")

    def __init__(self, written, optimizer: str):
        spans = sorted(_spans(written))
        self.starts = [start for start, _ in spans]
        ends = [end for _, end in spans]
        if any(map(operator.gt, ends[:-1], self.starts[1:])):
            raise RuntimeError(
                f"{optimizer}: params or their state tensors share memory (a param passed twice, or "
                "views of one tensor that overlap); each param must own its memory"
            )
        # ends_before[i]: the end of the span before starts[i] (0: none), so that a bisect
        # result indexes it directly.
        self.ends_before = [0, *ends]

    def overlapped_by_tensors(self, tensors) -> bool:
        """Whether any of these (dense) tensors meets a written span."""
        return self.overlapped_by(list(map(_data_ptr, tensors)), list(map(_nbytes, tensors)))

    def overlapped_by(self, starts: List[int], sizes: List[int]) -> bool:
        """Whether any read span [start, start + size) of nonzero size meets a written one."""
        if not self.starts:
            return False
        if 0 in sizes:  # an empty span meets nothing
            starts = list(itertools.compress(starts, sizes))
            sizes = list(filter(None, sizes))
        read_ends = list(map(operator.add, starts, sizes))
        # Written spans are sorted and disjoint, so their ends are sorted too: the last
        # written span starting before a read span ends is the only one that can overlap it.
        before = map(bisect.bisect_left, repeat(self.starts), read_ends)
        return any(map(operator.gt, map(self.ends_before.__getitem__, before), starts))


def select(batch: TensorBatch, indices: Sequence[int]) -> TensorBatch:
    """A batch of some columns of `batch` (for updates that differ between params)."""
    n, rows = len(batch), len(batch.table) // max(len(batch), 1)
    table = array.array("q", (batch.table[r * n + i] for r in range(rows) for i in indices))
    pick = lambda ts: [ts[i] for i in indices]  # noqa: E731
    return TensorBatch(pick(batch.params), pick(batch.grads), batch.steps and pick(batch.steps),
                       [pick(ts) for ts in batch.states], batch.device, batch.dtype, table, next(_versions),
                       [pick(ts) for ts in batch.scalars], [pick(ts) for ts in batch.scales])


class GradRow(NamedTuple):
    """What one check of a bucket's grads found: the tensors the kernels read (the grads, or
    copies in their params' layouts), their addresses and byte counts, the bytes each one's
    storage holds and where in it each starts."""
    tensors: List[torch.Tensor]
    addresses: List[int]
    nbytes: List[int]
    storage_sizes: List[int]
    offsets: List[int]


class _CountsChanges:
    """Dict mixin: every mutation calls self._changed()."""

    def _changed(self) -> None:
        raise NotImplementedError

    def __setitem__(self, key, value):
        self._changed()
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._changed()
        super().__delitem__(key)

    def pop(self, *args):
        self._changed()
        return super().pop(*args)

    def popitem(self):
        self._changed()
        return super().popitem()

    def clear(self):
        self._changed()
        super().clear()

    def update(self, *args, **kwargs):
        self._changed()
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        self._changed()
        return super().setdefault(key, default)

    def __ior__(self, other):  # `state |= {...}`: dict's C implementation bypasses update()
        self._changed()
        return super().__ior__(other)


class ParamState(_CountsChanges, dict):
    """One param's state dict; its changes count in every StateMap that holds it (one, unless
    it was carried into another optimizer: `new.state[p] = old.state[p]`). The maps are
    referred to weakly, so a dict carried on does not keep an old optimizer's state alive."""

    def __init__(self, owner: "StateMap", *args):
        super().__init__(*args)
        self._owners = [weakref.ref(owner)]

    def _changed(self) -> None:
        for ref in self._owners:
            owner = ref()
            if owner is not None:
                owner.version += 1

    def _counts_in(self, owner: "StateMap") -> None:
        if not any(ref() is owner for ref in self._owners):
            self._owners = [ref for ref in self._owners if ref() is not None] + [weakref.ref(owner)]

    def __reduce__(self):  # pickle/deepcopy as the plain dict torch.optim has
        return (dict, (), None, None, iter(self.items()))


class StateMap(_CountsChanges, collections.defaultdict):
    """optimizer.state, counting every change to it or to any param's state dict.

    While the count is unchanged a bucket knows every state tensor is where it was, and
    skips both looking the params up (a Python-level Tensor.__hash__ each) and comparing
    the state tensors' identities: most of a step's host time for many small tensors. A
    value that is not a ParamState (a plain dict or other mapping stored by hand) is not
    counted: then buckets check identities every step.
    """

    def __init__(self, *args):
        if args and not isinstance(args[0], dict) and (args[0] is None or callable(args[0])):
            args = args[1:]  # defaultdict's copy() and | pass (default_factory, self)
        existing = args[0] if args else ()
        super().__init__(self._new_param_state)
        self.version = 0
        self.all_counted = True
        for key, value in dict(existing).items():
            value = ParamState(self, value) if type(value) is dict else value
            self._admit(value)
            super().__setitem__(key, value)

    def _new_param_state(self) -> ParamState:
        return ParamState(self)

    def _changed(self) -> None:
        self.version += 1

    def _admit(self, value) -> None:
        """Every value stored passes here: a ParamState counts its changes here too from now
        on; anything else turns the count off."""
        if isinstance(value, ParamState):
            value._counts_in(self)
        else:
            self.all_counted = False

    def __setitem__(self, key, value):
        self._admit(value)
        super().__setitem__(key, value)

    # dict's bulk insertions bypass __setitem__
    def update(self, *args, **kwargs):
        items = dict(*args, **kwargs)
        for value in items.values():
            self._admit(value)
        super().update(items)

    def __ior__(self, other):
        items = dict(other)
        for value in items.values():
            self._admit(value)
        return super().__ior__(items)

    def setdefault(self, key, default=None):
        if key not in self:
            self._admit(default)
        return super().setdefault(key, default)

    def __reduce__(self):  # pickle/deepcopy as the plain defaultdict torch.optim has
        return (collections.defaultdict, (dict,), None, None, iter(self.items()))


class _Stale(Exception):
    """Raised inside the fast check when the cached table no longer describes the tensors."""


class Bucket:
    __slots__ = (
        "params", "device", "dtype", "optimizer", "_device_index", "_strides", "_nbytes",
        "_key", "_active", "_param_ptrs", "_grad_offsets", "_grads", "_grad_ptrs", "_steps", "_states",
        "_table", "_version", "_fresh", "_state_map", "_state_map_version", "_strict",
        "_distributed", "_viewed", "param_dtype", "_states_seen", "_memory", "_grad_storage_sizes", "_grads_copied", "_layout", "_written",
        "_scalars", "_shapes", "quantized", "_scales", "quantized_rule", "_param_guard", "_grad_guard",
    )

    def __init__(self, params: List[torch.Tensor], optimizer: str, strict: bool = False, quantized: bool = False,
                 quantized_rule: Optional[Callable[[torch.Tensor], bool]] = None):
        """`strict`: the state dicts are throwaway views (the torch.library op path), so a
        state tensor in the wrong layout is an error rather than replaced by a copy.
        `quantized`: the params' states are stored in 8 bits (uint8 codes and block scales).
        `quantized_rule`: the group's rule for which params get 8-bit states (None: no 8-bit
        states), which a param swapped for one of another size may no longer meet (_rebuild)."""
        self._strict = strict
        self.quantized = quantized
        self.quantized_rule = quantized_rule
        self._distributed = any(isinstance(p, DTensor) for p in params)
        self.params = params
        self.device = params[0].device
        self.param_dtype = params[0].dtype
        self._viewed = self._distributed or self.param_dtype in COMPLEX_TO_REAL  # kernels see kernel_view()s
        self.dtype = COMPLEX_TO_REAL.get(self.param_dtype, self.param_dtype)  # what the kernels update
        self.optimizer = optimizer
        self._device_index = params[0].get_device()
        self._key: Optional[tuple] = None
        self._version = 0
        self._param_guard = self._grad_guard = None  # see _params_unchanged, _grads_like_row
        self._state_map = None

    @property
    def distributed(self) -> bool:
        """The params are DTensors (FSDP2): the kernels update their local shards."""
        return self._distributed

    # ----------------------------------------------------------------- per step
    def batch(
        self,
        state: Dict[torch.Tensor, dict],
        state_keys: Tuple[str, ...],
        has_step: bool,
        init_state: Callable[[torch.Tensor, dict], None],
        state_dtype: Optional[torch.dtype] = None,
        grads: Optional[List[Optional[torch.Tensor]]] = None,
        scalar_keys: Tuple[str, ...] = (),
        scale_keys: Tuple[str, ...] = (),
    ) -> Tuple[Optional[TensorBatch], List[int]]:
        """The batch of params that have grads, and the indices (into the batch) of params
        whose state `init_state` created just now. (None, []) when no param has a grad.
        State tensors must have `state_dtype` (default: the param's dtype), the master copy
        (MASTER_KEY) float32. `grads` defaults
        to the params' .grad. `scalar_keys`: the per-param float32 scalar states (checked
        like the step counter; their rows follow the state rows in the table). `scale_keys`
        (8-bit states): the float32 block-absmax tensor of each state (ceil(numel / 256)
        values, contiguous), rows after the scalar states."""
        params = self.params
        if grads is None:
            grads = list(map(_grad, params))
        if all(map(operator.is_not, grads, repeat(None))):
            active = None
        else:
            active = tuple(i for i, g in enumerate(grads) if g is not None)
            if not active:
                return None, []
            params = [params[i] for i in active]
            grads = [grads[i] for i in active]
        owners = params  # the keys of optimizer.state, which own the state tensors
        if self._viewed:
            params, grads = list(map(kernel_view, params)), list(map(kernel_view, grads))
        key = (active, state_keys, has_step, state_dtype, scalar_keys, scale_keys)
        try:
            if key != self._key:
                raise _Stale
            self._check_unchanged(owners, params, grads, state, state_keys, has_step, (*scalar_keys, *scale_keys))
            self._fresh = []
        except (_Stale, KeyError):
            self._rebuild(key, owners, params, grads, state, state_keys, has_step, init_state,
                          state_dtype or self.dtype, scalar_keys, scale_keys)
        batch = TensorBatch(params, self._grads, self._steps, self._states, self.device, self.dtype,
                            self._table, self._version, self._scalars, self._scales)
        # The batch holds this step's grads; the bucket keeps only their addresses, so that
        # zero_grad(set_to_none=True) frees their memory before the next backward.
        self._grads = None
        return batch, self._fresh

    def _check_unchanged(self, owners, params, grads, state, state_keys, has_step, scalar_keys) -> None:
        """Raise _Stale unless every address, layout and size in the table still holds.

        Params and grads: address, dtype, strides and byte count (`p.data` swapped, `t_()`, a
        grad replaced by a view of other size or dtype). State tensors: identity (a new tensor stored in
        optimizer.state, the supported way to move or replace state); see _rebuild for why
        not their addresses. Every storage the table points into: the address and size it
        had (a storage resized or freed in place under its tensors).
        """
        if (list(map(_data_ptr, params)) != self._param_ptrs or not self._params_unchanged(owners, params)
                or not self._memory[0].unchanged() or not self._memory[1].unchanged()):
            raise _Stale
        if state_keys or has_step or scalar_keys:
            unchanged = (state is self._state_map and state.version == self._state_map_version
                         and state.all_counted)
            if not unchanged:  # something may have been replaced: compare identities
                states = list(map(state.__getitem__, owners))
                for key, cached in zip(state_keys, self._states_seen):
                    if not all(map(operator.is_, map(operator.itemgetter(key), states), cached)):
                        raise _Stale
                if has_step and not all(map(operator.is_, map(operator.itemgetter("step"), states), self._steps)):
                    raise _Stale
                for key, cached in zip(scalar_keys, (*self._scalars, *self._scales)):
                    if not all(map(operator.is_, map(operator.itemgetter(key), states), cached)):
                        raise _Stale
        if not self._grads_unchanged(grads):
            row = self._validated_grads(grads)
            self._check_not_aliased(row)
            self._install_grads(grads, row)
        else:
            self._grads = grads

    def _params_unchanged(self, owners, params) -> bool:
        """The params' dtypes, byte counts and layouts are those the table was built for (their
        addresses are compared apart). One guard call where it holds; else each fact is read,
        and a guard is made again from params that pass (a step under autocast fails the old
        guard but changes nothing the table depends on)."""
        guard = self._param_guard
        if guard is not None and guard(params):
            return True
        if (list(map(_nbytes, params)) != self._nbytes or not _all_of_dtype(owners, self.param_dtype)
                or not _same_layout(params, self._layout) or list(map(_shape, params)) != self._shapes
                or any(map(_is_neg, params))):
            return False  # rebuilt: a reshaped param's state and Adafactor's factored table follow its shape
        if not self._viewed:  # the guard reads the tensors it is given: owners are the params then
            self._param_guard = metadata_guard(params)
        return True

    # ----------------------------------------------------------------- rebuilds
    def _rebuild(self, key, owners, params, grads, state, state_keys, has_step, init_state, state_dtype,
                 scalar_keys=(), scale_keys=()) -> None:
        name = self.optimizer
        for owner, p in zip(owners, params):
            if (owner.device != self.device or owner.dtype != self.param_dtype
                    or (self.quantized_rule is not None and self.quantized_rule(owner) != self.quantized)):
                raise _RegroupNeeded
            check_param(p, name)
            if p.is_meta:  # every meta tensor sits at address 0: say why, not that params overlap
                raise RuntimeError(f"{name}: a param of shape {tuple(p.shape)} is on the meta device, which holds no "
                                   "values to update; materialize the model first (module.to_empty(device=...))")
        n = len(params)
        self._key = None  # stays None if validation below fails
        self._param_guard = self._grad_guard = None  # made again from what passes the checks below
        self._active = params
        self._strides = list(map(_stride, params))
        self._layout = None if all(map(_is_contiguous, params)) else self._strides
        self._nbytes = list(map(_nbytes, params))
        self._shapes = list(map(_shape, params))
        grad_row = self._validated_grads(grads)  # before any state is created: a bad grad changes nothing
        self._written = WrittenSpans(params, name)
        self._check_not_aliased(grad_row)
        if MASTER_KEY not in state_keys:
            # A master copy left from when the group had master_weights (or from a checkpoint)
            # went stale as the param trained without it: it must not come back if they return.
            for owner in owners:
                s = state.get(owner)
                if s and MASTER_KEY in s:
                    del s[MASTER_KEY]
        fresh = []
        states_per_param = []
        for i, owner in enumerate(owners if state_keys or has_step or scalar_keys else ()):  # SGD: no state
            s = state[owner]
            # New state takes the first-step rule (SGD: the momentum buffer starts as the grad);
            # a master copy or block scales added to state that exists (master_weights or
            # state_dtype changed since) are a conversion (init_state converts the rest).
            new = ([k for k in (*state_keys, *scalar_keys) if k not in s and k != MASTER_KEY]
                   or (has_step and "step" not in s))
            if new:
                init_state(owner, s)
                fresh.append(i)
            elif any(k not in s for k in (*state_keys, *scale_keys)):
                init_state(owner, s)
            states_per_param.append(s)
        self._fresh = fresh
        if len(fresh) > 1 and not self._distributed and not self._strict:
            consolidate([states_per_param[i] for i in fresh],
                        (*state_keys, *(("step",) if has_step else ()), *scalar_keys, *scale_keys))
        # The master copy is float32 whatever the states' dtype (bf16 states with master weights).
        self._states_seen = [[self._checked_state(s, k, p, torch.float32 if k == MASTER_KEY else state_dtype)
                              for s, p in zip(states_per_param, params)] for k in state_keys]
        self._states = [list(map(kernel_view, row)) for row in self._states_seen] if self._viewed else self._states_seen
        self._steps = [self._checked_scalar(s, "step", p) for s, p in zip(states_per_param, params)] if has_step else None
        self._scalars = [[self._checked_scalar(s, k, p) for s, p in zip(states_per_param, params)] for k in scalar_keys]
        self._scales = [[self._checked_scale(s, k, p) for s, p in zip(states_per_param, params)] for k in scale_keys]
        self._param_ptrs = [p.data_ptr() for p in params]
        rows = FIRST_STATE_ROW + len(state_keys) + len(scalar_keys) + len(scale_keys)
        self._table = array.array("q", bytes(8 * rows * n))
        self._fill_row(NUMEL_ROW, [p.numel() for p in params])
        self._fill_row(PARAM_ROW, self._param_ptrs)
        if has_step:
            self._fill_row(STEP_ROW, [t.data_ptr() for t in self._steps])
        for r, tensors in enumerate(self._states):
            self._fill_row(FIRST_STATE_ROW + r, [t.data_ptr() for t in tensors])
        for r, tensors in enumerate(self._scalars):  # after the states and the master copy (_layout.py)
            self._fill_row(FIRST_STATE_ROW + len(state_keys) + r, [t.data_ptr() for t in tensors])
        for r, tensors in enumerate(self._scales):  # after the scalar states (_layout.py)
            self._fill_row(FIRST_STATE_ROW + len(state_keys) + len(scalar_keys) + r, [t.data_ptr() for t in tensors])
        # State tensors are checked by identity each step (cheaply, through the StateMap
        # count), not by address: reading 3,000 addresses a step doubled the host time of
        # 1,000 small params. Memory moved behind a state tensor's back (`.data =`, set_())
        # is therefore not noticed, but the kernels can never write freed memory: the
        # table's storages are held here, and each step checks that none was resized.
        state_tensors = [*itertools.chain(*self._states), *(self._steps or ()), *itertools.chain(*self._scalars),
                         *itertools.chain(*self._scales)]
        written = [*params, *state_tensors]
        # Params' own addresses are rechecked each step; state tensors' are not (see above).
        self._memory = (HeldMemory(params, with_addresses=False), HeldMemory(state_tensors, with_addresses=True))
        # Recorded after _checked_state/_checked_step, which may have replaced entries.
        self._state_map, self._state_map_version = (state, state.version) if isinstance(state, StateMap) else (None, 0)
        self._param_guard = None if self._viewed else metadata_guard(params)
        self._written = WrittenSpans(written, name)
        self._check_not_aliased(grad_row)
        self._install_grads(grads, grad_row)
        self._key = key

    def _fill_row(self, row: int, values: List[int]) -> None:
        n = len(self._active)
        self._table[row * n:(row + 1) * n] = array.array("q", values)

    def _checked_state(self, s: dict, key: str, p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """s[key], checked against the (local) param p; returns the entry of s, replaced by a
        copy in the param's layout when only the layout differs."""
        t = owner = s[key]
        if isinstance(t, torch.Tensor):
            t = kernel_view(t)
        problem = None
        if not isinstance(t, torch.Tensor):
            problem = f"is a {type(t).__name__}, not a tensor"
        elif t.dtype != dtype or t.device != p.device:
            problem = f"has dtype {t.dtype} on {t.device}, expected dtype {dtype} on {p.device}"
            if t.device == p.device:
                problem += (" (if the group's state_dtype or master_weights was changed by hand after its state was "
                            "created, convert the state: optimizer.load_state_dict(optimizer.state_dict()))")
        elif t.shape != p.shape:
            problem = f"has shape {tuple(t.shape)}, but the param has shape {tuple(p.shape)}"
        elif t.layout != torch.strided:
            problem = f"has layout {t.layout}"
        if problem is None:
            problem = storage_problem(t)
        if problem:
            raise RuntimeError(f"{self.optimizer}: state '{key}' of a param {problem}")
        if t.stride() != p.stride():
            if self._strict or owner is not t:
                raise RuntimeError(f"{self.optimizer}: state '{key}' is laid out differently from its param")
            if self.quantized and key != MASTER_KEY:
                owner = self._codes_laid_out_like(s, key, t, p)
            else:
                # Same values in the param's memory layout, so one flat index serves all tensors.
                owner = torch.empty_like(p, dtype=dtype).copy_(t)
                if self.param_dtype in COMPLEX_TO_REAL:
                    owner = torch.view_as_complex(owner)
            s[key] = owner
        return owner

    def _codes_laid_out_like(self, s: dict, key: str, codes: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """8-bit codes of state `key` in the layout of param p, with new block scales in s: a
        block is 256 elements in memory order, so codes copied into another layout would sit
        in other blocks than their scales (a checkpoint loaded into channels_last weights, or
        `model.to(memory_format=...)` mid-training). Dequantized in their own memory order,
        requantized in the param's: the state's values change by one rounding, not by blocks."""
        if not is_dense(codes):
            raise RuntimeError(f"{self.optimizer}: state '{key}' holds 8-bit codes that do not cover their memory "
                               "densely; their blocks are undefined")
        scales = self._checked_scale(s, scale_key(key), p)
        values = torch.empty_like(p, dtype=torch.float32).copy_(dequantized_like(codes, scales, key))
        codes, s[scale_key(key)] = quantized_like(values, key)
        return codes

    def _checked_scale(self, s: dict, key: str, p: torch.Tensor) -> torch.Tensor:
        """s[key], the float32 block absmax of an 8-bit state of param p: contiguous, 1-D,
        ceil(p.numel() / 256) values, on p's device."""
        t = s[key]
        expected = (blocks(p.numel()),)
        problem = None
        if not isinstance(t, torch.Tensor):
            problem = f"is a {type(t).__name__}, not a tensor"
        elif t.dtype != SCALE_DTYPE or t.device != p.device:
            problem = f"has dtype {t.dtype} on {t.device}, expected dtype {SCALE_DTYPE} on {p.device}"
        elif tuple(t.shape) != expected or t.layout != torch.strided or not t.is_contiguous():
            problem = (f"has shape {tuple(t.shape)}, expected a contiguous {expected} (one value per block of 256 "
                       f"of the param's {p.numel()} elements)")
        if problem is None:
            problem = storage_problem(t)
        if problem:
            raise RuntimeError(f"{self.optimizer}: state '{key}' of a param {problem}")
        return t

    def _checked_scalar(self, s: dict, key: str, p: torch.Tensor) -> torch.Tensor:
        """s[key], a per-param scalar (the step counter, ASGD's eta): a float32 0-dim tensor on
        the param's device, replaced by one where it is not."""
        value = s[key]
        if not (isinstance(value, torch.Tensor) and value.dtype == STEP_DTYPE and value.device == p.device
                and value.numel() == 1 and value.dim() == 0):
            # Checkpoints keep these as CPU tensors (torch.optim's load casts them to the
            # param's dtype, save the step) or numbers; kernels need a float32 scalar beside
            # the param.
            if self._strict:
                raise RuntimeError(f"{self.optimizer}: state '{key}' must be a float32 scalar on {p.device}; "
                                   "take one eager step (outside torch.compile) after loading a checkpoint")
            if isinstance(value, torch.Tensor) and value.numel() != 1:
                raise RuntimeError(f"{self.optimizer}: state '{key}' of a param must hold one number, "
                                   f"got shape {tuple(value.shape)}")
            number = float(value.item() if isinstance(value, torch.Tensor) else value)
            value = torch.tensor(number, dtype=STEP_DTYPE, device=p.device)
            s[key] = value
        problem = storage_problem(value)
        if problem:
            raise RuntimeError(f"{self.optimizer}: state '{key}' of a param {problem}")
        return value

    def _check_not_aliased(self, row: "GradRow") -> None:
        if self._written.overlapped_by(row.addresses, row.nbytes):
            raise RuntimeError(
                f"{self.optimizer}: a grad shares memory with a param or a state tensor (p.grad = p.detach()?); "
                "the kernels read grads while writing params and state, so give each grad its own memory "
                "(p.grad = p.detach().clone())"
            )

    def _validated_grads(self, grads: List[torch.Tensor]) -> "GradRow":
        """The grads the kernels will read, with their addresses, sizes and storage sizes: these
        grads, once checked, or copies in the param's layout where a grad is laid out
        differently. Raises on a grad that cannot serve.

        Every step of a `zero_grad(set_to_none=True)` loop brings new grad tensors, so the
        common case (every grad laid out like its param) is checked a fact at a time over
        all grads, each fact read once, in C (map): its dtype, device, layout, shape,
        strides, and that its elements lie inside its storage. Anything else goes through
        the per-grad checks, which name the problem."""
        row = self._plain_grad_row(grads)
        if row is not None:
            return row
        used = [self._checked_grad(g, p) for g, p in zip(grads, self._active)]
        return GradRow(used, list(map(_data_ptr, used)), list(map(_nbytes, used)), _storage_sizes(used),
                       list(map(_storage_offset, used)))

    def _plain_grad_row(self, grads: List[torch.Tensor]) -> Optional["GradRow"]:
        """The GradRow of `grads` when each is exactly what its param's row needs, else None."""
        try:
            if not self._grads_like_row(grads):
                return None  # the per-grad checks copy what they can (a negated view) or say what is wrong
            nbytes = self._nbytes  # the params', as shapes and dtype are
            sizes = _storage_sizes(grads)
            offsets = list(map(_storage_offset, grads))
            # Dense and laid out like the param: [offset, offset + nbytes) of the storage.
            ends = map(operator.add, map(operator.mul, offsets, repeat(self.dtype.itemsize)), nbytes)
            if not all(map(operator.le, ends, sizes)):
                return None  # the per-grad check says which (a zero-size grad may still pass)
        except (RuntimeError, NotImplementedError):  # a sparse grad has no strides or storage
            return None
        return GradRow(grads, list(map(_data_ptr, grads)), nbytes, sizes, offsets)

    def _grads_unchanged(self, grads: List[torch.Tensor]) -> bool:
        """Whether these grads lie exactly where the table's grad row points, as the grads
        checked last did: the same addresses, dtype, device, shape and layout, in storages of the
        same size at the same offsets. Then each grad spans the same bytes of a storage of the
        same extent as the checked one, so it is as safe to read; whether it is the same tensor
        object does not matter (a loop that sets grads to None may bring new grads at the same
        addresses). The storage sizes are read through the grads, not through storage objects
        kept from the check: keeping one object per grad from one step to the next is what
        this check must not do (see _install_grads).

        A storage resized in place under a checked grad changes its size (torch checks the
        bounds whenever a tensor is pointed at memory, so only a resize can leave a grad
        outside its storage): same address, offset and size mean the same bounds."""
        if self._grads_copied:  # a copy holds the values of one step: recheck (and recopy)
            return False
        try:
            return (list(map(_data_ptr, grads)) == self._grad_ptrs and self._grads_like_row(grads)
                    and list(map(_storage_offset, grads)) == self._grad_offsets
                    and _storage_sizes(grads) == self._grad_storage_sizes)
        except (RuntimeError, NotImplementedError):  # no address or storage to read (not a dense tensor)
            return False

    def _grads_like_row(self, grads: List[torch.Tensor]) -> bool:
        """Each grad is strided, with its param's row's dtype, device, shape and strides, and
        not a negated view. One guard call, made from earlier grads that passed (a grad
        loop's grads are alike every step); else a fact at a time, and a guard made from
        grads that pass. (Bytes inside the storage are the callers' to check.)"""
        guard = self._grad_guard
        if guard is not None and guard(grads):
            return True
        if (set(map(_tensor_layout, grads)) != {torch.strided} or not _all_of_dtype(grads, self.dtype)
                or set(map(_get_device, grads)) != {self._device_index}
                or list(map(_shape, grads)) != self._shapes or not _same_layout(grads, self._layout)
                or any(map(_is_neg, grads))):
            return False
        self._grad_guard = metadata_guard(grads)
        return True

    def _install_grads(self, grads: List[torch.Tensor], row: "GradRow") -> None:
        """Write the addresses of validated grads into the table."""
        # Nothing kept here refers to a grad: the batch holds them for this step only (see
        # batch()), and keeping one object per grad (a weak reference) from one step to the
        # next made every step of a set-to-None loop promote 1,000 objects in Python's
        # collector, which then ran full collections: 3 ms a step on average for 1,000 params.
        self._grads = row.tensors  # for this step's batch only
        # A copy holds the values of one step: recheck (and recopy) every step.
        self._grads_copied = row.tensors is not grads and any(map(operator.is_not, grads, row.tensors))
        self._grad_ptrs = row.addresses if row.tensors is grads else list(map(_data_ptr, grads))
        self._grad_offsets = row.offsets if row.tensors is grads else list(map(_storage_offset, grads))
        self._grad_storage_sizes = row.storage_sizes
        self._fill_row(GRAD_ROW, row.addresses)
        self._version = next(_versions)

    def _checked_grad(self, g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        name = self.optimizer
        if g.is_sparse:
            raise SparseGradError(f"{name} does not support sparse gradients")
        if g.layout != torch.strided:
            raise RuntimeError(f"{name} does not support sparse gradients")
        if g.is_complex():
            raise RuntimeError(f"{name} does not support complex gradients")
        if g.dtype != p.dtype:
            raise RuntimeError(f"{name}: a grad has dtype {g.dtype}, but its param has dtype {p.dtype}")
        if g.device != p.device:
            raise RuntimeError(f"{name}: a grad is on {g.device}, but its param is on {p.device}")
        if g.shape != p.shape:
            raise RuntimeError(f"{name}: a grad has shape {tuple(g.shape)}, but its param has {tuple(p.shape)}")
        if g.stride() != p.stride() or not is_dense(g) or g.is_neg():
            # A grad laid out differently from its param (a broadcast view, a transposed
            # copy), or a negated view (its memory holds the opposite values): read it through
            # a copy in the param's layout. torch's copy_ reads the grad through its strides
            # and resolves the sign, so this is safe whatever its storage holds.
            problem = storage_problem_strided(g)
            if problem:
                raise RuntimeError(f"{name}: a grad of shape {tuple(g.shape)} {problem}")
            g = torch.empty_like(p).copy_(g)
        else:
            problem = storage_problem(g)
            if problem:
                raise RuntimeError(f"{name}: a grad of shape {tuple(g.shape)} {problem}")
        return g


class SparseGradError(RuntimeError):
    """A sparse (COO) grad reached a dense bucket; raised before anything is written, so an
    optimizer whose torch namesake updates sparse grads (SGD, Adagrad) can hand those params
    to torch's own update and run the bucket without them (FusedOptimizer.step)."""


class _RegroupNeeded(Exception):
    """A param changed device or dtype (p.data swapped): the group must be split anew."""
