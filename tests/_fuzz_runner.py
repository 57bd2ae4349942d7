"""Runs one fuzzer example (tests/_fuzz_scenarios.py) twice, on fusedopt with the backend
under test and on an oracle, and judges every operation; a broken property raises a
FuzzFailure of its category. See tests/test_fuzz.py for the rules."""
from __future__ import annotations

import collections
import copy
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch

import fusedopt
from _compare import TOLERANCES, Case, close
from _fuzz_memory import Arena, byte_span, contiguous_strides, layout_strides, span_elements, storage_fits
from _fuzz_scenarios import (BREAKING, F32, F64, FLOAT_DTYPES, FUSEDOPT_EXTRAS, LAYOUTS, ODD_GRADS,
                             Mutation, Scenario)
from fusedopt._buckets import is_dense

# 16-bit params against fusedopt's other backend: both compute in float32 and round once
# per step, so a param differs only where float32 results an ulp apart round to
# neighbouring 16-bit values, one 16-bit ulp, and that difference feeds at most an ulp
# more into each later step (weight decay, AdamW's scaling): 2 ulps per step, 5 steps at most.
LOW_PRECISION_ULPS = 10



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
            pieces = [(s.dtype, s.shape, layout_strides(s.shape, s.layout), s.pad)
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
            p.grad = arena.tensor(dtype, shape, [2 * s for s in contiguous_strides(shape)])
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
            source = arena.tensor(dtype, (span_elements(other, p.stride()),))
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
            end = (p.storage_offset() + span_elements(p.shape, p.stride())) * p.element_size()
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
            # complex params are supported (updated through view_as_real, as torch.optim does)
            if (p.dtype not in FLOAT_DTYPES and not p.is_complex()) or not is_dense(p):
                reasons.append(f"param {i} is not a dense float or complex tensor")
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


def _same_values(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
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
        if expected.dtype in TOLERANCES:  # float64 clipped by max_grad_norm too: its coefficient is float64
            close(actual, expected, expected.dtype, what)
        else:
            tol = LOW_PRECISION_ULPS * torch.finfo(expected.dtype).eps
            torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale,
                                       msg=lambda m: f"{what}: {m}")
    except AssertionError as error:
        fail("wrong_result", str(error))


def _compare(fused: Run, oracle: Run, where: str) -> None:
    for i, (p, q) in enumerate(zip(fused.params, oracle.params)):
        if not storage_fits(p) or not storage_fits(q):
            continue
        what = f"after {where}: param {i}"
        if p.stride() != q.stride():
            fail("wrong_result", f"{what}: strides {p.stride()}, the oracle's {q.stride()}")
        _same_values(p, q, what)
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
                _same_values(mine, value, f"{what}: state {key!r}")


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
    # A param listed twice: torch warns and updates it twice; fusedopt refuses the group.
    own_option = own_option or (isinstance(fused_error, ValueError) and "same parameter twice" in str(fused_error)
                                and len(set(scenario.order)) < len(scenario.order))
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


def _step(fused: Run, oracle: Run, name: str, where: str) -> bool:
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
        _compare(fused, oracle, where)
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
        for index, step in enumerate(scenario.steps):
            where = f"step {index + 1}"
            donors = _donors(scenario, fused, index)
            last = index == len(scenario.steps) - 1
            for m in step.mutations + ((scenario.breaking,) if last and scenario.breaking else ()):
                if m.kind in BREAKING:
                    oracle.kind = None  # torch.optim itself corrupts the heap on these: never hand them to it
                if m.kind == "load_state_dict" and (m.variant == 4 or oracle.kind == "kingma_ba"):
                    # The oracle cannot step with another optimizer's hyper-parameters (and
                    # fusedopt refuses such a state_dict with a ValueError where torch loads it).
                    oracle.kind = None
                if m.kind == "replace_state" and m.variant == 1 and oracle.kind in ("torch", "kingma_ba"):
                    # torch.optim computes in a replaced state's own dtype (float64 promotes the
                    # update); fusedopt computes in the param's math type or refuses it.
                    oracle.kind = None
                if not _on_both(fused, oracle, lambda run: run.mutate(m, donors), name, f"{where}, {m}"):
                    return f"{m.kind} raised at {where}"
                if m.kind == "load_state_dict" and oracle.kind == "torch" and donors.get(m.variant) is not None:
                    # A torch.optim checkpoint has no max_grad_norm: the loaded group takes its
                    # default (None), as torch's __setstate__ defaults its own missing flags.
                    oracle.stepper = oracle.optimizer
            for i, kind in enumerate(step.grad_kinds(len(scenario.params))):
                if not _on_both(fused, oracle, lambda run: run.set_grad(i, kind, index), name,
                                f"{where}, grad {i} {kind}"):
                    return f"setting a grad raised at {where}"
            if not _step(fused, oracle, name, where):
                return f"refused at {where}"
        return f"ran {len(scenario.steps)} steps" + ("" if oracle.kind else " (oracle gone)")
