"""Shared helpers of the test suite: the option grid, the tolerance tables, the runners
and the comparisons every test file uses.

Correctness is always "same as torch.optim, step by step", with tolerances justified by
dtype (TOLERANCES for float32/float64, LOW_PRECISION for the 16-bit types), and, for
Adam's `optimized_update=True` form which torch does not have, the same against
`KingmaBaAdam`, an implementation of Kingma & Ba's form written here.

Backends are not named in this file: every helper takes the backend name, and the list
of backends the suite runs lives in conftest.py.
"""
from __future__ import annotations

import inspect
import itertools
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import fusedopt
from optimizer_specs import (GRAD_OPTION_ROWS, GRAD_OPTIONS, ROWS, KingmaBaAdam, SpecRow,  # noqa: F401
                             with_grad_options)
from optimizer_specs import row as spec_row

# --------------------------------------------------------------------------- data
# A multi-tensor param list: empty, one element, odd, 4097 (not a multiple of any
# vector width or chunk), and a 2-D shape.
SHAPES: Tuple[Tuple[int, ...], ...] = ((0,), (1,), (17,), (4097,), (7, 13))
STEPS = 20

DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
DTYPE_IDS = {torch.float64: "f64", torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}

# torch.optim's per-param scalar states besides `step` (ASGD's eta and mu, NAdam's
# mu_product): float32 0-dim tensors whatever the params' dtype.
SCALAR_STATE_KEYS = frozenset(key for spec in fusedopt.optim._spec.registered().values()
                              for key in spec.scalar_state_keys())

# --------------------------------------------------------------------------- tolerances
# float64: the CPU kernels contract a*b+c into fused multiply-adds where torch rounds
# twice, so results differ from torch's by a few ulp per step; over 20 steps that stays
# far below 1e-12 relative. float32: the same few ulp, ~1e-7 relative per step.
# `atol` is per unit of the tensor's largest magnitude (see `close`): a state tensor such
# as RMSprop's momentum buffer reaches ~100 and cancels to small values, where a few ulp
# of the large terms are far more than 1e-6.
TOLERANCES: Dict[torch.dtype, Dict[str, float]] = {
    torch.float64: dict(rtol=1e-12, atol=1e-14),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
}

# 16-bit params: fusedopt, like torch's fused CPU kernels, computes in float32 and rounds
# once per step. Its error against a float64 run must be at most `factor` times
# torch.optim's own error in the same dtype, plus `slack` (a quarter of an ulp at 1.0, so
# one element rounded the other way where torch's error is tiny cannot fail the test) --
# flash-attention's rule. torch's error: fused=True where torch has it (float32 math,
# rounded once, as fusedopt), else RoundedOpmath.
LOW_PRECISION: Dict[torch.dtype, Dict[str, float]] = {
    torch.bfloat16: dict(factor=2.0, slack=2.0**-9),
    torch.float16: dict(factor=2.0, slack=2.0**-12),
}

# Two backends against each other in a 16-bit dtype (the same float32 math, rounded once):
# a value within a float32 ulp of a rounding boundary may round the other way, one ulp of
# the dtype at the params' scale (~1).
ONE_ULP: Dict[torch.dtype, Dict[str, float]] = {
    dtype: dict(rtol=torch.finfo(dtype).eps, atol=torch.finfo(dtype).eps) for dtype in (torch.bfloat16, torch.float16)
}

# On a GPU, against a float64 truth: error allowed on top of twice the reference backend's,
# per unit of the tensor's largest value (about two units in the last place at 1.0), and
# the float64 tolerance of long runs (atol per unit of the tensor's largest value).
SLACK = {torch.float32: 2.0**-22, torch.float16: 2.0**-9, torch.bfloat16: 2.0**-6}
FLOAT64_LONG_RUN = dict(rtol=1e-10, atol=1e-12)

# --------------------------------------------------------------------------- the option grid
# Every optimizer's row (lr, option grid, representative options, what it must equal)
# lives in optimizer_specs.py; the cases below are built from the rows.
LR = {r.name: r.lr for r in ROWS}


@dataclass(frozen=True)
class Case:
    """One optimizer with one set of options (lr included)."""

    optimizer: str
    options: Tuple[Tuple[str, object], ...] = ()

    @property
    def row(self) -> SpecRow:
        return spec_row(self.optimizer)

    @property
    def kwargs(self) -> dict:
        return {"lr": LR[self.optimizer], **dict(self.options)}

    @property
    def optimized_update(self) -> bool:
        return bool(dict(self.options).get("optimized_update", False))

    @property
    def id(self) -> str:
        parts = [self.optimizer]
        for key, value in self.options:
            if value is True:
                parts.append(key)
            elif value is not False:
                parts.append(f"{key}={value}")
        return "-".join(parts)

    def __str__(self) -> str:
        return self.id

    def fused(self, params, backend: str, **extra) -> torch.optim.Optimizer:
        """The fusedopt optimizer of this case."""
        return getattr(fusedopt, self.optimizer)(params, backend=backend, **{**self.kwargs, **extra})

    def expected(self, params, fused_torch: bool = False) -> torch.optim.Optimizer:
        """What the fusedopt optimizer must compute: the row's expected optimizer, or
        torch.optim's namesake (single-tensor path, or fused=True where asked and torch has
        it; an emulated fused run where torch has none, see RoundedOpmath), with the
        gradient options done around it (optimizer_specs.WithGradOptions)."""
        kwargs, row = self.kwargs, self.row
        if fused_torch and not any(kwargs.get(key) for key in row.fusedopt_only):
            kwargs = {k: v for k, v in kwargs.items() if k not in row.fusedopt_only}
            if row.torch_fused:
                def fused(ps, **options):
                    return getattr(torch.optim, self.optimizer)(ps, fused=True, **options)
                return with_grad_options(fused, list(params), kwargs, _default_weight_decay(row))
            # the gradient options on the float32 copies, as a fused kernel would do them
            return RoundedOpmath(params, lambda ps: _expected_optimizer(row, ps, kwargs))
        return _expected_optimizer(row, params, kwargs)

    def torch_default_form(self) -> "Case":
        """The same case without fusedopt-only options (torch's bias-correction form); the
        gradient options stay (the expected optimizer does them around torch.optim's)."""
        return Case(self.optimizer, tuple((k, v) for k, v in self.options if k not in self.row.fusedopt_only))

    def torch_plain_form(self) -> "Case":
        """torch.optim's namesake as it is, without any fusedopt-only option or gradient option:
        what a torch.optim checkpoint can say."""
        dropped = (*self.row.fusedopt_only, *GRAD_OPTIONS)
        return Case(self.optimizer, tuple((k, v) for k, v in self.options if k not in dropped))

    @property
    def torch_expressible(self) -> bool:
        """Whether torch.optim's namesake runs this case as it is (no fusedopt-only option)."""
        return self.torch_plain_form() == self


def _expected_optimizer(row: SpecRow, params, kwargs: dict):
    def make(params, **kwargs):
        if row.expected is not None:
            return row.expected(params, **kwargs)
        return getattr(torch.optim, row.name)(params, foreach=False, **kwargs)

    return with_grad_options(make, list(params), kwargs, _default_weight_decay(row))


def _default_weight_decay(row: SpecRow) -> float:
    """The optimizer's default weight_decay (AdamW's 1e-2), which absolute decay then uses."""
    weight_decay = inspect.signature(getattr(fusedopt, row.name)).parameters.get("weight_decay")
    return 0.0 if weight_decay is None else weight_decay.default


def _grid(row: SpecRow) -> List[Case]:
    keys = list(row.grid)
    cases = [Case(row.name, tuple(zip(keys, values))) for values in itertools.product(*row.grid.values())]
    cases = [case for case in cases if row.valid(dict(case.options))]
    return cases + [Case(row.name, tuple(options.items())) for options in row.grad_options]


ALL_CASES = [case for r in ROWS for case in _grid(r)]

# A few cases per optimizer that between them exercise every state tensor, for the tests
# that do not need the whole grid (state_dict, schedulers, training).
# The gradient options' representative cases come last, so the indices other tests pick
# (REPRESENTATIVE_CASES[:4] ...) keep naming the same cases.
REPRESENTATIVE_CASES = ([Case(r.name, tuple(options.items())) for r in ROWS for options in r.representative]
                        + [Case(r.name, tuple(r.grad_options[0].items())) for r in ROWS if r.name in GRAD_OPTION_ROWS])


class RoundedOpmath:
    """What a fused kernel computes for 16-bit params, for an optimizer torch has no fused
    version of: torch.optim's math on float32 copies, then params and state rounded to the
    params' dtype after every step. (torch's own single-tensor path computes in the 16-bit
    dtype itself, e.g. centered RMSprop in float16 goes NaN on these inputs, so it is no
    yardstick.)"""

    def __init__(self, params, make_optimizer):
        self.params = list(params)
        self.shadows = [torch.nn.Parameter(p.detach().float()) for p in self.params]
        self.inner = make_optimizer(self.shadows)

    @torch.no_grad()
    def step(self):
        for p, s in zip(self.params, self.shadows):
            s.grad = None if p.grad is None else p.grad.float()
        self.inner.step()
        for p, s in zip(self.params, self.shadows):
            p.copy_(s)
            s.copy_(p)
            for key, value in self.inner.state[s].items():
                if key not in SCALAR_STATE_KEYS:  # per-param float32 scalars stay float32
                    value.copy_(value.to(p.dtype))


# --------------------------------------------------------------------------- runs
def initial_values(seed: int = 0, shapes=SHAPES) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for shape in shapes]


def gradients(steps: int = STEPS, seed: int = 1, shapes=SHAPES) -> List[List[torch.Tensor]]:
    """Per step, one gradient per shape; scales differ per tensor and per step."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        scale = 0.5 + torch.rand((), generator=g, dtype=torch.float64).item()
        out.append([scale * torch.randn(shape, generator=g, dtype=torch.float64) for shape in shapes])
    return out


def make_params(values: Sequence[torch.Tensor], dtype: torch.dtype) -> List[torch.nn.Parameter]:
    return [torch.nn.Parameter(v.to(dtype).clone()) for v in values]


def run(make_optimizer: Callable, values: Sequence[torch.Tensor], grads: Sequence[Sequence[torch.Tensor]],
        dtype: torch.dtype, round_to: Optional[torch.dtype] = None):
    """Runs len(grads) steps from `values` in `dtype`; returns (params, optimizer).

    round_to: round initial values and grads to this dtype first (a float64 run that sees
    exactly the inputs a 16-bit run sees)."""
    src = round_to or dtype
    params = make_params([v.to(src) for v in values], dtype)
    optimizer = make_optimizer(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.to(src).to(dtype)
        optimizer.step()
    return params, optimizer


# --------------------------------------------------------------------------- comparisons
def assert_params_close(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], dtype: torch.dtype,
                        what: str = "param") -> None:
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert (a.dtype, a.shape) == (e.dtype, e.shape), f"{what} {i}: {a.dtype} {a.shape} vs {e.dtype} {e.shape}"
        close(a.detach(), e.detach(), dtype, f"{what} {i}")


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """assert_close with TOLERANCES[dtype], atol scaled by max(1, largest |expected|)."""
    tol = dict(TOLERANCES[dtype])
    if expected.numel():
        tol["atol"] *= max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{what}: {m}")


def assert_same_state(actual_opt: torch.optim.Optimizer, expected_opt: torch.optim.Optimizer,
                      actual_params, expected_params, dtype: Optional[torch.dtype] = None) -> None:
    """Same keys per param, `step` a tensor with the same value, every other state tensor
    of the param's shape and dtype and close to the expected one (dtype=None: layout only)."""
    for i, (pa, pe) in enumerate(zip(actual_params, expected_params)):
        sa, se = actual_opt.state.get(pa, {}), expected_opt.state.get(pe, {})
        assert set(sa) == set(se), f"param {i}: state keys {sorted(sa)} != torch's {sorted(se)}"
        for key, expected in se.items():
            value = sa[key]
            assert isinstance(value, torch.Tensor), f"param {i}: state[{key!r}] is a {type(value).__name__}"
            if key == "step":
                assert value.dim() == 0 and value.item() == expected.item(), f"param {i}: step {value} != {expected}"
                continue
            if key in SCALAR_STATE_KEYS:  # float32 0-dim, as torch.optim keeps them
                assert value.dim() == 0 and value.dtype == torch.float32, f"param {i}: state[{key!r}] layout"
                if dtype is not None:
                    close(value.cpu(), expected.to(torch.float32).cpu(), torch.float32, f"param {i}: state[{key!r}]")
                continue
            assert value.dtype == pa.dtype and value.shape == pa.shape, f"param {i}: state[{key!r}] layout"
            if dtype is not None:
                close(value, expected, dtype, f"param {i}: state[{key!r}]")


def max_error(actual: Sequence[torch.Tensor], truth: Sequence[torch.Tensor]) -> float:
    """Largest absolute difference over every element of every tensor (in float64); inf
    where any element is NaN or infinite."""
    errors = [(a.detach().double() - t.detach().double()).abs().nan_to_num(nan=math.inf).max().item()
              for a, t in zip(actual, truth) if a.numel()]
    return max(errors)


def rms_error(actual: Sequence[torch.Tensor], truth: Sequence[torch.Tensor]) -> float:
    """Root mean square of the difference over all elements (in float64)."""
    diffs = torch.cat([(a.detach().double() - t.detach().double()).flatten() for a, t in zip(actual, truth)])
    return diffs.pow(2).mean().sqrt().item()


def assert_low_precision_ok(fused_error: float, torch_error: float, dtype: torch.dtype, what: str = "") -> None:
    rule = LOW_PRECISION[dtype]
    bound = rule["factor"] * torch_error + rule["slack"]
    assert fused_error <= bound, (
        f"{what}: fusedopt's error {fused_error:.3g} against float64 exceeds {rule['factor']} x torch.optim's "
        f"own error {torch_error:.3g} + {rule['slack']:.3g} in {dtype}"
    )


def clone_params(params: Sequence[torch.Tensor]) -> List[torch.nn.Parameter]:
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


# Expected runs are shared by the tests of every backend (and never modified by them).
_expected_cache: Dict[tuple, tuple] = {}


def expected_run(case: Case, dtype: torch.dtype, fused_torch: bool = False, round_to: Optional[torch.dtype] = None):
    """(params, optimizer) of case.expected() after STEPS steps on the standard data; cached."""
    key = (case, dtype, fused_torch, round_to)
    if key not in _expected_cache:
        _expected_cache[key] = run(lambda ps: case.expected(ps, fused_torch=fused_torch), initial_values(),
                                   gradients(), dtype, round_to=round_to)
    return _expected_cache[key]
