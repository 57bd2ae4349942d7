"""A property-based fuzzer (hypothesis) for everything a step can be handed.

Each example draws a param list (0-40 tensors of the four float dtypes, rarely complex or
int; empty, one-element and odd shapes; contiguous, permuted, non-dense and expanded
layouts; views of one storage at odd offsets, some overlapping; duplicates), an optimizer
with valid or invalid options (master weights and max_grad_norm included), and 1-5 steps
with mutations before each (grads of every kind, `p.data` swapped, state deleted,
replaced, grown or loaded from another optimizer's state_dict, zero_grad, and before the
last step, storages shrunk or freed). It runs the example twice, on fusedopt with the
backend under test and on an oracle: torch.optim (or _compare's KingmaBaAdam for
`optimized_update`, with torch's clip_grad_norm_ for `max_grad_norm`) when the params are
float32/float64, else fusedopt's other backend (16-bit params and master weights, where
torch has no optimizer with the same rounding).

Every operation must end in one of:
- the same results as the oracle: params and state, with _compare's tolerances;
- a clear Python exception (see `_check_error`) raised before anything was written.
And whatever happens: no crash (each example runs in a forked child, so a crash is a
reported, shrunk failure rather than the end of pytest), the bytes around every param and
grad unchanged (each is a view into a larger buffer whose other bytes hold a pattern),
grads unchanged. Inputs the kernels cannot handle must raise: a tensor whose storage is
smaller than its span (shrunk or freed with `untyped_storage().resize_`), a grad sharing
memory with a tensor the step writes.

CI runs a fixed (derandomized) set of examples per backend in well under a minute; for a
longer local run, e.g.
    FUSEDOPT_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz.py -q -x -k "not triton"
and FUSEDOPT_FUZZ_SEED=<n> draws another set. `.ci/sanitize` runs this file under ASan
and UBSan, where a kernel touching memory outside its tensors is a report even when the
values come out right. A failure prints the shrunk scenario and its category (the class
of the AssertionError: WrongResult, AcceptedBadInput, Crash, ...).
"""
from __future__ import annotations

import collections
import copy
import json
import os
import random
import select
import signal
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import fusedopt
import torch._dynamo  # noqa: F401  torch.optim's constructors import it: once here, not in every forked child
from _compare import TOLERANCES, Case, close
from fusedopt._buckets import is_dense

EXAMPLES = int(os.environ.get("FUSEDOPT_FUZZ_EXAMPLES", "100"))
TRITON_EXAMPLES = int(os.environ.get("FUSEDOPT_FUZZ_TRITON_EXAMPLES", "4"))
SEED = os.environ.get("FUSEDOPT_FUZZ_SEED")
FORK = os.environ.get("FUSEDOPT_FUZZ_FORK", "1") != "0"
CHILD_TIMEOUT = 120.0  # seconds; a child that takes longer is reported as hung

F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
FLOAT_DTYPES = (F32, F64, BF16, F16)
LOW_PRECISION = (BF16, F16)
# The dtypes of one example's params (and of anything swapped in): float32/float64 alone
# compare against torch.optim; a 16-bit dtype anywhere, against fusedopt's other backend.
POOLS = ((F32,), (F64,), (F32, F64), (BF16,), (F16,), (F32, BF16), FLOAT_DTYPES)
SIZES = (1, 2, 3, 5, 0, 7, 17)
LAYOUTS = ("contiguous", "permuted", "strided", "expanded")

# 16-bit params against fusedopt's other backend: both compute in float32 and round once
# per step, so a param differs only where float32 results an ulp apart round to
# neighbouring 16-bit values, one 16-bit ulp, and that difference feeds at most an ulp
# more into each later step (weight decay, AdamW's scaling): 2 ulps per step, 5 steps at most.
LOW_PRECISION_ULPS = 10
# max_grad_norm's clip coefficient reaches the kernels as a float32 scalar (GradTransform:
# one-element float32 tensors, read on the device without a sync), where torch's
# clip_grad_norm_ scales float64 grads by a float64 coefficient: float64 results then agree
# to the coefficient's float32 rounding, a few float32 ulps relative, not float64's.
CLIPPED_FLOAT64 = dict(rtol=4 * torch.finfo(F32).eps, atol=4 * torch.finfo(F32).eps)


# --------------------------------------------------------------------------- the scenario
@dataclass(frozen=True)
class ParamSpec:
    dtype: torch.dtype
    shape: Tuple[int, ...]
    layout: str  # one of LAYOUTS
    storage: Optional[int]  # params with the same number are views of one storage; None: its own
    pad: int  # elements between the previous tensor's region and this one; negative overlaps it


@dataclass(frozen=True)
class Mutation:
    kind: str
    target: int  # a param, modulo the number of params
    variant: int
    which: int  # a state entry, modulo the number of entries


@dataclass(frozen=True)
class Step:
    mutations: Tuple[Mutation, ...]
    grads: int  # picks a regular grad kind per param (see grad_kinds); 0: all "fresh"
    odd_grads: Tuple[Tuple[int, str], ...]  # (param, kind): irregular grads in their place

    def grad_kinds(self, n: int) -> List[str]:
        """One kind per param: drawn from `grads` rather than by hypothesis one by one,
        which made generating an example slower than running it."""
        rng = random.Random(self.grads)
        kinds = [REGULAR_GRADS[rng.randrange(len(REGULAR_GRADS))] if self.grads else "fresh" for _ in range(n)]
        for i, kind in self.odd_grads:
            kinds[i] = kind
        return kinds


@dataclass(frozen=True)
class Scenario:
    optimizer: str
    options: Tuple[Tuple[str, object], ...]
    pool: Tuple[torch.dtype, ...]
    params: Tuple[ParamSpec, ...]
    order: Tuple[int, ...]  # the list the optimizer gets: indices into params; a repeat is a duplicate
    steps: Tuple[Step, ...]
    breaking: Optional[Mutation]  # applied before the last step: a storage shrunk or freed
    seed: int


# Grad kinds a careful user hands torch.optim, and the others, which fusedopt may refuse.
REGULAR_GRADS = ("fresh", "keep", "none", "contiguous", "expanded", "strided")
ODD_GRADS = ("dtype", "reshaped", "broadcast", "same_strides", "alias_self", "alias_other", "shrunk", "sparse")
MUTATIONS = ("zero_grad", "swap_data", "del_state", "replace_state", "load_state_dict", "grad_t", "grow_state")
BREAKING = ("free_state", "shrink_param_storage", "shrink_grad_storage")

FUSEDOPT_EXTRAS = ("master_weights", "max_grad_norm")


def _rarely(draw, strategy, default, one_in: int = 8):
    """`default`, or once in `one_in` draws a value of `strategy`. (The rare branch is the
    high integer, so hypothesis shrinks towards the default.)"""
    return draw(strategy) if draw(st.integers(0, one_in - 1)) == one_in - 1 else default


# Per optimizer: each option's valid values (the first shrinks best) and values torch.optim
# rejects with ValueError. One example in eight gets one invalid option.
OPTIONS = {
    "Adam": dict(
        lr=((1e-2, 1e-3, 0.1, 0.0), (-1e-3,)),
        betas=(((0.9, 0.999), (0.5, 0.9), (0.0, 0.0)), ((1.0, 0.999), (0.9, -0.1))),
        eps=((1e-8, 1e-3), (-1e-8,)),
        weight_decay=((0.0, 0.1), (-0.1,)),
        amsgrad=((False, True), ()), maximize=((False, True), ()), optimized_update=((False, True), ()),
    ),
    "SGD": dict(
        lr=((5e-2, 0.1, 0.0), (-0.1,)),
        momentum=((0.0, 0.9, 0.5), (-0.9,)),
        dampening=((0.0, 0.5), ()),
        nesterov=((False, True), ()),  # kept only with momentum and no dampening, unless drawn as invalid
        weight_decay=((0.0, 0.1), (-0.1,)),
        maximize=((False, True), ()),
    ),
    "RMSprop": dict(
        lr=((1e-2, 1e-3, 0.0), (-0.1,)),
        # not alpha=0 with centered=True: the variance estimate is then g*g - g*g, pure rounding
        # error, and one ulp of it moves the step by eps's order (test_errors covers alpha=0)
        alpha=((0.99, 0.5, 1.0), (-0.5,)),
        eps=((1e-8, 1e-3), (-1.0,)),
        weight_decay=((0.0, 0.1), (-0.1,)),
        momentum=((0.0, 0.9), (-0.1,)),
        centered=((False, True), ()), maximize=((False, True), ()),
    ),
}
OPTIONS["AdamW"] = OPTIONS["Adam"]


@st.composite
def _options(draw, optimizer: str, pool) -> Tuple[Tuple[str, object], ...]:
    table = OPTIONS[optimizer]
    options = {key: draw(st.sampled_from(valid)) for key, (valid, _) in table.items()}
    if any(d in LOW_PRECISION for d in pool):
        options["master_weights"] = draw(st.sampled_from((False, True)))
    options["max_grad_norm"] = _rarely(draw, st.sampled_from((1.0, 1e-2)), None, one_in=4)
    invalid = {key: bad for key, (_, bad) in table.items() if bad}
    invalid["max_grad_norm"] = (0.0, -1.0)
    if optimizer == "SGD":
        invalid["nesterov"] = (True,)
        if options["nesterov"] and (options["momentum"] == 0 or options["dampening"] != 0):
            options["nesterov"] = False
    key = _rarely(draw, st.sampled_from(sorted(invalid)), None)
    if key is not None:
        options[key] = draw(st.sampled_from(invalid[key]))
        if key == "nesterov":
            options.update(momentum=0.0)
    return tuple(options.items())


@st.composite
def _param_spec(draw, pool, odd: frozenset) -> ParamSpec:
    """`odd`: which irregular features this example's params may have (most have none, so
    that most examples get past their first step)."""
    dtype = draw(st.sampled_from(pool))
    if "dtype" in odd:
        dtype = _rarely(draw, st.sampled_from((torch.complex64, torch.int32)), dtype, one_in=4)
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.sampled_from(SIZES)) for _ in range(ndim))
    if ndim == 1:
        shape = _rarely(draw, st.sampled_from(((33,), (100,), (1000,))), shape)
    layout = draw(st.sampled_from(LAYOUTS[:2]))
    if "layout" in odd:
        layout = _rarely(draw, st.sampled_from(LAYOUTS[2:]), layout, one_in=4)
    storage = draw(st.sampled_from((None, None, None, 0, 1, 2)))
    pad = draw(st.integers(0, 5))
    if "overlap" in odd:
        pad = _rarely(draw, st.just(-1), pad, one_in=4)
    return ParamSpec(dtype, shape, layout, storage, pad)


@st.composite
def _mutation(draw, kinds=MUTATIONS) -> Mutation:
    return Mutation(draw(st.sampled_from(kinds)), draw(st.integers(0, 39)), draw(st.integers(0, 4)),
                    draw(st.integers(0, 3)))


@st.composite
def scenarios(draw, max_params: int = 40) -> Scenario:
    optimizer = draw(st.sampled_from(("Adam", "SGD", "AdamW", "RMSprop")))
    pool = draw(st.sampled_from(POOLS))
    odd = _rarely(draw, st.frozensets(st.sampled_from(("layout", "dtype", "overlap", "duplicates")), min_size=1),
                  frozenset(), one_in=4)
    # mostly a few params (a step over many small ones costs more and finds little more)
    size = _rarely(draw, st.integers(9, max_params), draw(st.integers(1, min(8, max_params))), one_in=4)
    size = _rarely(draw, st.just(0), size, one_in=20)
    params = tuple(draw(st.lists(_param_spec(pool, odd), min_size=size, max_size=size)))
    order = tuple(range(len(params)))
    if params and "duplicates" in odd:
        order += tuple(draw(st.lists(st.integers(0, len(params) - 1), min_size=1, max_size=2)))
    n_steps = draw(st.integers(1, 5))
    steps = []
    for i in range(n_steps):
        mutations = tuple(draw(st.lists(_mutation(), max_size=2 if i else 1)))
        grads = draw(st.integers(0, 2**16))
        odd_grads = ()
        if params:
            odd_grads = tuple(_rarely(draw, st.lists(st.tuples(st.integers(0, len(params) - 1),
                                                               st.sampled_from(ODD_GRADS)), min_size=1, max_size=2),
                                      [], one_in=4))
        steps.append(Step(mutations, grads, odd_grads))
    steps = tuple(steps)
    breaking = _rarely(draw, _mutation(BREAKING), None, one_in=6)
    return Scenario(optimizer, draw(_options(optimizer, pool)), pool, params, order, steps, breaking,
                    draw(st.integers(0, 2**31 - 1)))


# --------------------------------------------------------------------------- failures
class FuzzFailure(AssertionError):
    """A broken property; each category is a subclass, so hypothesis reports (and shrinks)
    every kind of failure it finds separately."""

    category = "failure"


CATEGORIES = {
    "crash": "the example's process died (a signal or a sanitizer report; see its stderr)",
    "hang": "the example did not finish",
    "accepted_bad_input": "a step ran on input it must refuse (or that torch.optim refuses)",
    "wrong_result": "params or state differ from the oracle's",
    "guard_clobbered": "bytes next to a param or grad changed",
    "grad_modified": "a step changed a grad",
    "uninformative_error": "an exception that is neither fusedopt's own check nor torch.optim's error",
    "refused_valid_input": "an exception on input torch.optim handles and fusedopt promises to",
    "wrote_before_raising": "a step raised after writing params or state",
    "error_mismatch": "a different exception from torch.optim's for the same call",
    "backends_disagree": "fusedopt's other backend (the oracle of 16-bit examples) raised where this one ran",
    "harness": "the fuzzer itself failed (a bug in this file)",
}
FAILURES: Dict[str, type] = {
    name: type("".join(part.title() for part in name.split("_")), (FuzzFailure,),
               {"category": name, "__doc__": doc})
    for name, doc in CATEGORIES.items()
}


def fail(category: str, message: str):
    raise FAILURES[category](message)


# --------------------------------------------------------------------------- guarded memory
GUARD = 32  # bytes of pattern before, between and after the tensors of a buffer
PATTERN = 0xA5


def _extent(shape, strides) -> int:
    """Elements from the first to one past the last element a layout addresses."""
    if any(s == 0 for s in shape):
        return 0
    return 1 + sum((size - 1) * stride for size, stride in zip(shape, strides))


def _contiguous_strides(shape) -> Tuple[int, ...]:
    strides, running = [], 1
    for size in reversed(shape):
        strides.append(running)
        running *= max(size, 1)
    return tuple(reversed(strides))


def _layout_strides(shape, layout: str) -> Tuple[int, ...]:
    if layout == "permuted" and len(shape) >= 2:  # dims in reverse memory order, like .t()
        return tuple(reversed(_contiguous_strides(tuple(reversed(shape)))))
    strides = _contiguous_strides(shape)
    if layout == "strided":
        return tuple(2 * s for s in strides)
    if layout == "expanded" and shape:
        return (0,) + strides[1:]
    return strides


def _element_offsets(shape, strides) -> torch.Tensor:
    if _extent(shape, strides) == 0:
        return torch.zeros(0, dtype=torch.int64)
    return torch.as_strided(torch.arange(_extent(shape, strides)), shape, strides).reshape(-1)


def storage_fits(t: torch.Tensor) -> bool:
    """Whether every element of t lies inside its storage's current allocation (safe to read)."""
    if t.layout != torch.strided:
        return True
    extent = _extent(t.shape, t.stride())
    if extent == 0:
        return True
    storage = t.untyped_storage()
    return storage.data_ptr() != 0 and (t.storage_offset() + extent) * t.element_size() <= storage.nbytes()


def byte_span(t: torch.Tensor) -> Tuple[int, int]:
    return t.data_ptr(), t.data_ptr() + _extent(t.shape, t.stride()) * t.element_size()


class Arena:
    """Allocates tensors as views into byte buffers whose every other byte holds PATTERN."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator
        self.buffers: List[Tuple[torch.UntypedStorage, torch.Tensor]] = []  # (storage, guard byte indices)

    def allocate(self, pieces) -> List[torch.Tensor]:
        """pieces: (dtype, shape, strides, pad); returns one tensor per piece, in one storage,
        each at an offset `pad` elements past the previous one's guard, filled with values."""
        starts, cursor = [], GUARD
        for dtype, shape, strides, pad in pieces:
            size = _element_size(dtype)
            start = max(0, cursor + pad * size)
            start = -(-start // size) * size
            starts.append(start)
            cursor = max(cursor, start + _extent(shape, strides) * size + GUARD)
        buffer = torch.full((cursor,), PATTERN, dtype=torch.uint8)
        storage = buffer.untyped_storage()
        owned = torch.zeros(cursor, dtype=torch.bool)
        tensors = []
        for (dtype, shape, strides, _), start in zip(pieces, starts):
            size = _element_size(dtype)
            t = torch.empty(0, dtype=dtype).set_(storage, start // size, shape, strides)
            extent = _extent(shape, strides)
            if extent and extent == t.numel():  # dense: elements fill [start, start + extent) once each
                owned[start:start + extent * size] = True
                torch.empty(0, dtype=dtype).set_(storage, start // size, (extent,), (1,)).copy_(
                    self.values(dtype, (extent,)))
            elif extent:  # gaps (strided) or repeats (expanded): the same values at the elements themselves
                elements = _element_offsets(shape, strides).unique()
                owned[(start + elements[:, None] * size + torch.arange(size)).reshape(-1)] = True
                flat = torch.empty(0, dtype=dtype).set_(storage, start // size, (extent,), (1,))
                flat[elements] = self.values(dtype, (elements.numel(),))
            tensors.append(t)
        self.buffers.append((storage, (~owned).nonzero().flatten()))
        return tensors

    def tensor(self, dtype, shape, strides=None, pad: int = 1) -> torch.Tensor:
        strides = _contiguous_strides(shape) if strides is None else tuple(strides)
        return self.allocate([(dtype, tuple(shape), strides, pad)])[0]

    def values(self, dtype, shape) -> torch.Tensor:
        if dtype.is_complex:
            return torch.randn(shape, generator=self.generator, dtype=dtype)
        if not dtype.is_floating_point:
            return torch.randint(-3, 4, shape, generator=self.generator, dtype=dtype)
        return torch.randn(shape, generator=self.generator, dtype=torch.float64).to(dtype)

    def clobbered(self) -> Optional[str]:
        """Where a guard byte no longer holds the pattern, if anywhere (reads only what each
        storage still holds, so a shrunk storage is checked up to its new size)."""
        for index, (storage, guard) in enumerate(self.buffers):
            now = torch.empty(0, dtype=torch.uint8).set_(storage)
            if guard[-1] >= now.numel():
                guard = guard[guard < now.numel()]
            bad = guard[now[guard] != PATTERN]
            if bad.numel():
                return (f"buffer {index}: guard bytes {bad[:8].tolist()} (of {now.numel()} bytes) changed to "
                        f"{now[bad[:8]].tolist()}")
        return None


def _element_size(dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


# --------------------------------------------------------------------------- oracles
class ClipFirst:
    """torch.nn.utils.clip_grad_norm_ over the optimizer's grads, then its step: what
    max_grad_norm= does. Clips copies and puts the grads back, since fusedopt applies the
    clip coefficient inside the kernel and leaves the grads as they were."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_norm: float):
        self.optimizer, self.max_norm = optimizer, max_norm

    def step(self):
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        saved = [g.data for g in grads]
        for g in grads:
            g.data = g.data.clone()
        try:
            torch.nn.utils.clip_grad_norm_(params, self.max_norm, foreach=False)
            self.optimizer.step()
        finally:
            for g, data in zip(grads, saved):
                g.data = data


# --------------------------------------------------------------------------- one side of an example
class Run:
    """The scenario's tensors realised afresh (the same values on both sides: one generator
    per side, seeded alike, drawn in the same order) and an optimizer over them."""

    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.arena = Arena(torch.Generator().manual_seed(scenario.seed))
        self.params: List[torch.Tensor] = [None] * len(scenario.params)  # type: ignore[list-item]
        groups: Dict[object, List[int]] = {}
        for i, spec in enumerate(scenario.params):
            groups.setdefault(("shared", spec.storage) if spec.storage is not None else ("own", i), []).append(i)
        for indices in groups.values():
            pieces = [(s.dtype, s.shape, _layout_strides(s.shape, s.layout), s.pad)
                      for s in (scenario.params[i] for i in indices)]
            for i, t in zip(indices, self.arena.allocate(pieces)):
                self.params[i] = t.requires_grad_() if t.is_floating_point() or t.is_complex() else t
        self.listed = [self.params[i] for i in scenario.order]
        self.optimizer: Optional[torch.optim.Optimizer] = None  # state, param_groups, load_state_dict
        self.stepper = None  # what .step() is called on (the optimizer, or ClipFirst around it)
        self.kind: Optional[str] = None  # the oracle's: "torch", "kingma_ba", "fusedopt"; None once it is gone
        # Why a refusal would be fair; empty while the input is plainly valid.
        self.irregular: List[str] = [f"param {i}: {s.dtype}, {s.layout}, pad {s.pad}"
                                     for i, s in enumerate(scenario.params)
                                     if s.dtype not in FLOAT_DTYPES or s.layout in LAYOUTS[2:] or s.pad < 0]
        if len(set(scenario.order)) < len(scenario.order):
            self.irregular.append("duplicate params")
        self.broken: List[str] = []  # storage-resizing mutations done

    # ------------------------------------------------------------- grads
    def set_grad(self, i: int, kind: str, step: int) -> None:
        p = self.params[i]
        shape, dtype = tuple(p.shape), p.dtype
        arena = self.arena
        dense_strides = p.stride() if is_dense(p) else None
        if kind == "keep" and p.grad is not None:
            return
        if kind == "none":
            p.grad = None
        elif kind == "contiguous":
            p.grad = arena.tensor(dtype, shape)
        elif kind == "expanded" and shape and shape[0] > 1:
            p.grad = arena.tensor(dtype, (1,) + shape[1:]).expand(shape)
        elif kind == "strided":
            p.grad = arena.tensor(dtype, shape, [2 * s for s in _contiguous_strides(shape)])
        elif kind == "dtype":
            others = [d for d in FLOAT_DTYPES if d != dtype]
            self._install(p, arena.tensor(others[(i + step) % len(others)], shape))
        elif kind == "reshaped" and p.numel() > 0:
            other = tuple(reversed(shape)) if tuple(reversed(shape)) != shape else (1,) + shape
            self._install(p, arena.tensor(dtype, other))
        elif kind == "broadcast" and shape:
            self._install(p, arena.tensor(dtype, shape[1:]))
        elif kind == "same_strides" and p.numel() > 1 and tuple(reversed(shape)) != shape:
            # Another shape with the param's strides (and so its byte count): the layout that
            # passes a check of bytes and strides alone, in a storage only as large as it needs.
            other = tuple(reversed(shape))
            g = arena.tensor(dtype, shape, dense_strides)
            source = arena.tensor(dtype, (_extent(other, p.stride()),))
            p.grad = g
            g.set_(source.untyped_storage(), source.storage_offset(), other, p.stride())
        elif kind == "alias_self":
            p.grad = p.detach()
        elif kind == "alias_other" and any(j != i and q.shape == p.shape and q.dtype == dtype and q is not p
                                           for j, q in enumerate(self.params)):
            j = next(j for j in [*range(i + 1, len(self.params)), *range(i)]
                     if self.params[j].shape == p.shape and self.params[j].dtype == dtype and self.params[j] is not p)
            p.grad = self.params[j].detach()
        elif kind == "shrunk" and p.numel() > 1:  # same address, fewer elements
            p.grad = arena.tensor(dtype, shape)
            p.grad.data = p.grad.data.reshape(-1)[: p.numel() // 2]
        elif kind == "sparse" and dtype.is_floating_point:
            p.grad = arena.tensor(dtype, shape).to_sparse()
        else:  # "fresh", and the kinds above where the param's shape does not allow them
            kind = "fresh"
            p.grad = arena.tensor(dtype, shape, dense_strides)
        if kind in ODD_GRADS:
            self.irregular.append(f"grad {i}: {kind}")

    @staticmethod
    def _install(p: torch.Tensor, g: torch.Tensor) -> None:
        """A grad of another shape or dtype: torch's `.grad` setter refuses one, `.data` does not."""
        p.grad = torch.zeros_like(p)
        p.grad.data = g

    # ------------------------------------------------------------- mutations
    def mutate(self, m: Mutation, donors: Dict[int, dict]) -> None:
        if not self.params:
            return
        i = m.target % len(self.params)
        p = self.params[i]
        opt = self.optimizer
        state = opt.state.get(p)
        if m.kind == "zero_grad":
            opt.zero_grad(set_to_none=m.variant % 2 == 0)
        elif m.kind == "swap_data":
            self._swap_data(i, p, m.variant)
        elif m.kind == "del_state":
            if m.variant == 0:
                opt.state.pop(p, None)
            elif m.variant == 1:
                opt.state.clear()
            elif m.variant == 2:
                opt.state = collections.defaultdict(dict)
            else:
                opt.state[p] = {}
        elif m.kind == "replace_state" and state:
            key = sorted(state)[m.which % len(state)]
            value = state[key]
            if not isinstance(value, torch.Tensor) or not storage_fits(value):
                return
            if m.variant == 1:
                state[key] = value.to(F64 if value.dtype != F64 else F32)
                self.irregular.append(f"state {key!r} of param {i} in another dtype")
            elif m.variant == 2 and value.dim() != 1:
                state[key] = value.reshape(-1)
                self.irregular.append(f"state {key!r} of param {i} reshaped")
            elif m.variant == 3 and value.dim() == 2:
                state[key] = value.t().contiguous().t()  # same values and shape, other strides
            else:
                state[key] = value.clone()
        elif m.kind == "grow_state" and state:
            key = sorted(state)[m.which % len(state)]
            value = state[key]
            if isinstance(value, torch.Tensor) and storage_fits(value):
                # resize_ reallocates: the tensor keeps its values, at another address.
                value.untyped_storage().resize_(value.untyped_storage().nbytes() + 64)
                self.irregular.append(f"state {key!r} of param {i}: storage reallocated by resize_")
        elif m.kind == "grad_t" and p.grad is not None and p.grad.dim() == 2:
            p.grad.t_()
            if p.grad.shape != p.shape:
                self.irregular.append(f"grad {i} transposed in place to another shape")
        elif m.kind == "load_state_dict" and donors.get(m.variant) is not None:
            if m.variant >= 2:
                self.irregular.append(f"loaded a state_dict of donor kind {m.variant}")
            opt.load_state_dict(copy.deepcopy(donors[m.variant]))
        elif m.kind == "free_state" and state:
            key = sorted(state)[m.which % len(state)]
            if isinstance(state[key], torch.Tensor):
                state[key].untyped_storage().resize_(0)  # what FSDP-style code does to free memory
                self._broke(f"state {key!r} of param {i}: storage resized to 0")
        elif m.kind == "shrink_param_storage":
            storage = p.untyped_storage()
            end = (p.storage_offset() + _extent(p.shape, p.stride())) * p.element_size()
            if end > 0:
                storage.resize_(0 if m.variant % 2 else max(0, end - max(p.element_size(), end // 2)))
                self._broke(f"param {i}: storage shrunk to {storage.nbytes()} bytes, its span ends at {end}")
        elif m.kind == "shrink_grad_storage" and p.grad is not None and p.grad.layout == torch.strided:
            storage = p.grad.untyped_storage()
            if storage.nbytes():
                storage.resize_(0 if m.variant % 2 else storage.nbytes() // 2)
                self._broke(f"grad {i}: storage shrunk to {storage.nbytes()} bytes")

    def _broke(self, what: str) -> None:
        self.broken.append(what)
        self.irregular.append(what)

    def _swap_data(self, i: int, p: torch.Tensor, variant: int) -> None:
        shape = tuple(p.shape)
        if variant == 1 and p.dim() >= 2:
            p.data = p.data.permute(*reversed(range(p.dim())))
            if p.shape != shape:
                self.irregular.append(f"param {i} swapped for its transpose")
        elif variant == 2 and p.dtype in self.scenario.pool:
            pool = self.scenario.pool
            dtype = pool[(pool.index(p.dtype) + 1) % len(pool)]
            if dtype != p.dtype:
                self.irregular.append(f"param {i} swapped for a {dtype} tensor")
            p.data = self.arena.tensor(dtype, shape, p.stride() if is_dense(p) else None)
        elif variant == 3 and p.numel() > 0:
            other = tuple(reversed(shape)) if tuple(reversed(shape)) != shape else (p.numel() + 1,)
            p.data = self.arena.tensor(p.dtype, other)
            self.irregular.append(f"param {i} swapped for a tensor of shape {other}")
        else:
            p.data = self.arena.tensor(p.dtype, shape, p.stride() if is_dense(p) else None)

    # ------------------------------------------------------------- what the step may touch
    def active(self) -> List[torch.Tensor]:
        """The params the next step updates (listed, with a grad), each once."""
        seen, out = set(), []
        for p in self.listed:
            if p.grad is not None and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def state_tensors(self, p) -> List[torch.Tensor]:
        return [v for v in self.optimizer.state.get(p, {}).values() if isinstance(v, torch.Tensor)]

    def must_refuse(self) -> List[str]:
        """What fusedopt documents it refuses, in the next step's input: params that are not
        dense float tensors, grads of another dtype or shape or sparse, a tensor that does
        not fit in its storage, written tensors sharing memory, a grad sharing memory with
        a written tensor. Each is an exception before anything runs, never a kernel call."""
        reasons = []
        active = self.active()
        written = [t for p in active for t in (p, *self.state_tensors(p)) if t.layout == torch.strided]
        for p in active:
            i = _index(self.params, p)
            g = p.grad
            if p.dtype not in FLOAT_DTYPES or not is_dense(p):
                reasons.append(f"param {i} is not a dense float tensor")
            if g.layout != torch.strided or g.dtype != p.dtype or g.shape != p.shape:
                reasons.append(f"the grad of param {i} is {g.layout} {g.dtype} {tuple(g.shape)}, "
                               f"the param {p.dtype} {tuple(p.shape)}")
            tensors = [("param", p), ("grad", g)] + [(f"state {k!r}", v) for k, v in
                                                      self.optimizer.state.get(p, {}).items()
                                                      if isinstance(v, torch.Tensor)]
            for name, t in tensors:
                if not storage_fits(t):
                    reasons.append(f"{name} of param {i} does not fit in its storage")
        by_storage: Dict[int, List[Tuple[int, int]]] = collections.defaultdict(list)
        for t in written:
            if t.numel() and storage_fits(t):
                by_storage[t.untyped_storage().data_ptr()].append(byte_span(t))
        for spans in by_storage.values():
            spans.sort()
            if any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])):
                reasons.append("tensors the step writes share memory")
                break
        for p in active:
            g = p.grad
            if g.layout == torch.strided and g.numel() and storage_fits(g):
                start, end = byte_span(g)
                if any(a < end and start < b for a, b in by_storage.get(g.untyped_storage().data_ptr(), ())):
                    reasons.append(f"the grad of param {_index(self.params, p)} shares memory with a tensor "
                                   "the step writes")
        return reasons

    def snapshot(self) -> Dict[Tuple[int, str], torch.Tensor]:
        """A copy of every readable param, grad and state tensor, before a step."""
        out = {}
        for i, p in enumerate(self.params):
            entries = [("param", p), ("grad", p.grad)]
            if self.optimizer is not None:
                entries += [(f"state {k!r}", v) for k, v in self.optimizer.state.get(p, {}).items()]
            for name, t in entries:
                if isinstance(t, torch.Tensor) and t.layout == torch.strided and storage_fits(t):
                    out[(i, name)] = t.detach().clone()
        return out


def _unchanged(before: torch.Tensor, after: torch.Tensor) -> bool:
    """Bit for bit the same; a state entry that fusedopt converted (a float64 step counter
    made float32) counts as unchanged when its values are."""
    if before.dtype == after.dtype and before.shape == after.shape:
        return torch.equal(_bits(before), _bits(after))
    return before.numel() == after.numel() and torch.equal(before.double().reshape(-1).nan_to_num(7.5),
                                                           after.double().reshape(-1).nan_to_num(7.5))


def _index(params, p) -> int:
    return next(i for i, q in enumerate(params) if q is p)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype).copy_(t.detach()).reshape(-1).view(torch.uint8)


# --------------------------------------------------------------------------- checks
# torch.optim.Optimizer.load_state_dict's own errors (fusedopt inherits them).
TORCH_LOAD_ERRORS = ("loaded state dict has a different number of parameter groups",
                     "loaded state dict contains a parameter group that doesn't match the size")


def _check_error(error: BaseException, optimizer: str, oracle_error: Optional[BaseException], what: str) -> None:
    """An exception must say what is wrong: fusedopt's own checks name the optimizer (or
    fusedopt); anything else must be the exception torch.optim raised for the same call."""
    message = str(error)
    own = message.startswith((f"{optimizer}:", f"{optimizer} ", "fusedopt", "Invalid ", *TORCH_LOAD_ERRORS))
    if isinstance(error, (RuntimeError, ValueError, TypeError)) and own and len(message) > 20:
        return
    if oracle_error is not None and type(error) is type(oracle_error):
        return
    fail("uninformative_error", f"{what}: {type(error).__name__}: {message}"
         + (f" (the oracle raised {type(oracle_error).__name__}: {oracle_error})" if oracle_error else
            " (the oracle did not raise)"))


def _same_values(actual: torch.Tensor, expected: torch.Tensor, what: str, clipped: bool = False) -> None:
    if (actual.dtype, actual.shape) != (expected.dtype, expected.shape):
        fail("wrong_result", f"{what}: {actual.dtype} {tuple(actual.shape)}, the oracle's "
                             f"{expected.dtype} {tuple(expected.shape)}")
    actual, expected = actual.detach(), expected.detach()
    if torch.equal(actual, expected):
        return
    nan = expected.isnan()
    if not torch.equal(actual.isnan(), nan):
        fail("wrong_result", f"{what}: NaN at other elements than the oracle's")
    actual, expected = actual.masked_fill(nan, 0), expected.masked_fill(nan, 0)
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    try:
        if expected.dtype == F64 and clipped:
            tol = CLIPPED_FLOAT64
            torch.testing.assert_close(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale,
                                       msg=lambda m: f"{what}: {m}")
        elif expected.dtype in TOLERANCES:
            close(actual, expected, expected.dtype, what)
        else:
            tol = LOW_PRECISION_ULPS * torch.finfo(expected.dtype).eps
            torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale,
                                       msg=lambda m: f"{what}: {m}")
    except AssertionError as error:
        fail("wrong_result", str(error))


def _compare(fused: Run, oracle: Run, where: str, clipped: bool) -> None:
    for i, (p, q) in enumerate(zip(fused.params, oracle.params)):
        if not storage_fits(p) or not storage_fits(q):
            continue
        what = f"after {where}: param {i}"
        if p.stride() != q.stride():
            fail("wrong_result", f"{what}: strides {p.stride()}, the oracle's {q.stride()}")
        _same_values(p, q, what, clipped)
        actual, expected = fused.optimizer.state.get(p, {}), oracle.optimizer.state.get(q, {})
        if set(actual) != set(expected):
            fail("wrong_result", f"{what}: state keys {sorted(actual)}, the oracle's {sorted(expected)}")
        for key, value in expected.items():
            mine = actual[key]
            if not isinstance(value, torch.Tensor) or not storage_fits(value) or not storage_fits(mine):
                continue
            if key == "step":
                if float(mine) != float(value):
                    fail("wrong_result", f"{what}: state 'step' {float(mine)}, the oracle's {float(value)}")
            else:
                _same_values(mine, value, f"{what}: state {key!r}", clipped)


# --------------------------------------------------------------------------- one example
def _torch_kwargs(scenario: Scenario) -> dict:
    return {k: v for k, v in scenario.options if k not in FUSEDOPT_EXTRAS and k != "optimized_update"}


def _other_backend(backend: str) -> str:
    return "cpu" if backend != "cpu" else "reference"


def _donors(scenario: Scenario, run: Run, step: int) -> Dict[int, dict]:
    """State dicts of other optimizers, one per donor kind (Mutation.variant): 0 torch.optim's
    namesake with the same options, 1 the same with its state-changing flag flipped, 2 one
    param fewer (torch's ValueError), 3 other shapes, 4 another optimizer class."""
    if not run.listed or not any(m.kind == "load_state_dict" for m in scenario.steps[step].mutations):
        return {}
    generator = torch.Generator().manual_seed(scenario.seed + 7919 * (step + 1))
    name, kwargs = scenario.optimizer, _torch_kwargs(scenario)
    flipped = dict(kwargs)
    flag = {"Adam": "amsgrad", "AdamW": "amsgrad", "RMSprop": "centered"}.get(name)
    if flag:
        flipped[flag] = not flipped[flag]
    else:
        flipped.update(momentum=0.0 if flipped["momentum"] else 0.9, nesterov=False)
    other = {"Adam": "RMSprop", "AdamW": "SGD", "SGD": "Adam", "RMSprop": "AdamW"}[name]
    shapes = [tuple(p.shape) for p in run.listed]
    reshaped = [tuple(reversed(s)) if tuple(reversed(s)) != s else s + (2,) for s in shapes]
    plans = {0: (name, kwargs, shapes), 1: (name, flipped, shapes), 2: (name, kwargs, shapes[:-1]),
             3: (name, kwargs, reshaped), 4: (other, {"lr": 1e-2}, shapes)}
    out = {}
    for variant, (cls, options, donor_shapes) in plans.items():
        dtypes = [p.dtype if p.dtype.is_floating_point else F32 for p in run.listed]
        params = [torch.randn(s, generator=generator, dtype=F64).to(d).requires_grad_()
                  for s, d in zip(donor_shapes, dtypes)]
        if not params:
            out[variant] = None
            continue
        donor = getattr(torch.optim, cls)(params, foreach=False, **options)
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator, dtype=F64).to(p.dtype)
        donor.step()
        out[variant] = donor.state_dict()
    return out


def _construct(scenario: Scenario, backend: str, fused: Run, oracle: Run) -> Optional[str]:
    """Builds both optimizers (None), or says why the example ends at construction, after
    checking that fusedopt raised torch.optim's ValueError word for word."""
    name, options = scenario.optimizer, dict(scenario.options)
    torch_error = fused_error = None
    try:
        getattr(torch.optim, name)(oracle.listed, foreach=False, **_torch_kwargs(scenario))
    except (ValueError, TypeError, RuntimeError) as error:
        torch_error = error
    try:
        fused.optimizer = getattr(fusedopt, name)(fused.listed, backend=backend, **options)
    except Exception as error:  # noqa: BLE001 -- judged below
        fused_error = error
    # fusedopt checks its own options before torch's checks: either error is right
    own_option = isinstance(fused_error, ValueError) and str(fused_error).startswith("Invalid max_grad_norm") \
        and not (options["max_grad_norm"] or 0) > 0
    if torch_error is not None and not own_option and (
            fused_error is None or type(fused_error) is not type(torch_error) or str(fused_error) != str(torch_error)):
        fail("error_mismatch", f"construction: torch.optim raised {type(torch_error).__name__}: {torch_error}; "
                               f"fusedopt {'did not raise' if fused_error is None else repr(fused_error)}")
    if fused_error is not None:
        if torch_error is None and not own_option:
            fail("refused_valid_input", f"construction: {type(fused_error).__name__}: {fused_error}")
        return f"construction raised {type(fused_error).__name__}"
    fused.stepper = fused.optimizer
    if set(scenario.pool) <= {F32, F64}:
        case = Case(name, tuple((k, v) for k, v in scenario.options if k not in FUSEDOPT_EXTRAS))
        oracle.optimizer = case.expected(oracle.listed)
        oracle.kind = "kingma_ba" if case.optimized_update else "torch"
        max_norm = options.get("max_grad_norm")
        oracle.stepper = ClipFirst(oracle.optimizer, max_norm) if max_norm is not None else oracle.optimizer
    else:
        oracle.optimizer = getattr(fusedopt, name)(oracle.listed, backend=_other_backend(backend), **options)
        oracle.stepper = oracle.optimizer
        oracle.kind = "fusedopt"
    return None


def _on_both(fused: Run, oracle: Run, action: Callable[[Run], None], name: str, what: str) -> bool:
    """Does `action` to both sides (to fusedopt's alone once the oracle is gone); False when
    it raised (and the example ends), after checking that both raised and said why."""
    errors = []
    for run in (fused, oracle) if oracle.kind else (fused,):
        try:
            action(run)
            errors.append(None)
        except Exception as error:  # noqa: BLE001 -- judged below
            errors.append(error)
    if oracle.kind and (errors[0] is None) != (errors[1] is None):
        fail("error_mismatch", f"{what}: fusedopt {errors[0]!r}, the oracle {errors[1]!r}")
    if errors[0] is not None:
        _check_error(errors[0], name, errors[1] if oracle.kind else None, what)
        return False
    return True


def _step(fused: Run, oracle: Run, name: str, where: str, clipped: bool) -> bool:
    """One step on both sides and every check of it; False when fusedopt (rightly) raised."""
    refuse = fused.must_refuse()
    before = fused.snapshot()
    grads_before = {i: _bits(p.grad) for i, p in enumerate(fused.params)
                    if p.grad is not None and p.grad.layout == torch.strided and storage_fits(p.grad)}
    fused_error = oracle_error = None
    try:
        fused.stepper.step()
    except Exception as error:  # noqa: BLE001 -- judged below
        fused_error = error
    clobbered = fused.arena.clobbered()
    if clobbered:
        fail("guard_clobbered", f"{where} ({'raised' if fused_error else 'ran'}): {clobbered}")
    oracle_ran = bool(oracle.kind) and not any("does not fit" in r for r in refuse)
    if oracle_ran:
        try:
            oracle.stepper.step()
        except Exception as error:  # noqa: BLE001 -- judged below
            oracle_error = error

    if fused_error is not None:
        _check_error(fused_error, name, oracle_error, where)
        if oracle_error is None and not fused.irregular and oracle_ran:
            fail("refused_valid_input", f"{where}: {type(fused_error).__name__}: {fused_error}")
        after = fused.snapshot()
        changed = [key for key, value in before.items() if key in after and not _unchanged(value, after[key])]
        if changed:
            fail("wrote_before_raising", f"{where} raised {type(fused_error).__name__}: {fused_error}; "
                                         f"but first changed {changed[:6]}")
        return False
    if refuse:
        fail("accepted_bad_input", f"{where} ran although {'; '.join(refuse)}")
    if oracle_error is not None:
        fail("backends_disagree" if oracle.kind == "fusedopt" else "accepted_bad_input",
             f"{where} ran; the oracle ({oracle.kind}) raised {type(oracle_error).__name__}: {oracle_error}")
    for i, bits in grads_before.items():
        g = fused.params[i].grad
        if g is not None and storage_fits(g) and not torch.equal(_bits(g), bits):
            fail("grad_modified", f"{where} changed the grad of param {i}")
    if oracle_ran:
        _compare(fused, oracle, where, clipped)
    return True


def run_example(scenario: Scenario, backend: str) -> str:
    """Runs one scenario on fusedopt[backend] and on its oracle; raises FuzzFailure, else
    says how far the example got."""
    name = scenario.optimizer
    fused, oracle = Run(scenario), Run(scenario)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate params, deprecated options: not the question here
        ended = _construct(scenario, backend, fused, oracle)
        if ended:
            return ended
        clipped = dict(scenario.options).get("max_grad_norm") is not None
        for index, step in enumerate(scenario.steps):
            where = f"step {index + 1}"
            donors = _donors(scenario, fused, index)
            last = index == len(scenario.steps) - 1
            for m in step.mutations + ((scenario.breaking,) if last and scenario.breaking else ()):
                if m.kind in BREAKING:
                    oracle.kind = None  # torch.optim itself corrupts the heap on these: never hand them to it
                if not _on_both(fused, oracle, lambda run: run.mutate(m, donors), name, f"{where}, {m}"):
                    return f"{m.kind} raised at {where}"
                if m.kind == "load_state_dict" and (m.variant == 4 or oracle.kind == "kingma_ba"):
                    oracle.kind = None  # the oracle cannot step with another optimizer's hyper-parameters
            for i, kind in enumerate(step.grad_kinds(len(scenario.params))):
                if not _on_both(fused, oracle, lambda run: run.set_grad(i, kind, index), name,
                                f"{where}, grad {i} {kind}"):
                    return f"setting a grad raised at {where}"
            if not _step(fused, oracle, name, where, clipped):
                return f"refused at {where}"
        return f"ran {len(scenario.steps)} steps" + ("" if oracle.kind else " (oracle gone)")


# --------------------------------------------------------------------------- isolation
def _outcome(fn: Callable[[], str]) -> Tuple[Optional[str], str]:
    """(None, what fn returned), or (category, message) of its failure."""
    try:
        return None, fn()
    except FuzzFailure as failure:
        return failure.category, str(failure)
    except BaseException:  # noqa: BLE001 -- reported as a failure of the fuzzer itself
        return "harness", traceback.format_exc()


def in_child(fn: Callable[[], str], timeout: float = CHILD_TIMEOUT) -> Tuple[Optional[str], str]:
    """_outcome(fn) in a forked child, so that a crash is a reported failure ("crash": a
    signal, or a sanitizer's report) rather than the end of pytest, and every example
    starts from the same clean process. (A fork costs ~0.1 s here, most of an example's
    time: FUSEDOPT_FUZZ_FORK=0 runs examples in-process, for long runs of code that passes.)"""
    if not FORK:
        return _outcome(fn)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            data = json.dumps(_outcome(fn)).encode()
            while data:
                data = data[os.write(write_end, data):]
        finally:
            os._exit(0)
    os.close(write_end)
    chunks, deadline = [], time.monotonic() + timeout
    with os.fdopen(read_end, "rb") as pipe:
        while True:
            ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "hang", f"no answer after {timeout:.0f} s"
            chunk = os.read(pipe.fileno(), 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "crash", f"killed by signal {os.WTERMSIG(status)} ({signal.Signals(os.WTERMSIG(status)).name})"
    if os.WEXITSTATUS(status) != 0 or not chunks:
        return "crash", f"exit status {os.WEXITSTATUS(status)}"
    category, message = json.loads(b"".join(chunks))
    return category, message


# --------------------------------------------------------------------------- the tests
def _settings(examples: int):
    return settings(
        max_examples=examples, derandomize=SEED is None, database=None, deadline=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink), print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                               HealthCheck.function_scoped_fixture],
    )


def _fuzz(scenario: Scenario, backend: str) -> None:
    category, message = in_child(lambda: run_example(scenario, backend))
    if category is not None:
        raise FAILURES.get(category, FuzzFailure)(f"[{category}] {message}")


def _seeded(test):
    return hypothesis_seed(int(SEED))(test) if SEED is not None else test


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@_seeded
@_settings(EXAMPLES)
@given(scenario=scenarios())
def test_fuzz(backend, scenario):
    _fuzz(scenario, backend)


@pytest.mark.triton
@_seeded
@_settings(TRITON_EXAMPLES)
@given(scenario=scenarios(max_params=4))
def test_fuzz_triton(scenario):
    """A handful of small examples on the Triton kernels (Triton's interpreter is slow)."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("the fuzzer's tensors are CPU tensors")
    _fuzz(scenario, "triton")
