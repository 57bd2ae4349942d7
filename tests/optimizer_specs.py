"""One spec row per optimizer: everything the suite needs to test it on every backend.

A row names the fusedopt class, the lr the tests use, the option grid (every
combination is a Case of _compare.py, filtered by `valid`), the few representative
option sets the slower tests use, and what the optimizer must equal: torch.optim's
namesake by default, or `expected(params, **kwargs)` where torch has no such optimizer
(then an implementation of the paper's pseudo-code written here) or no such option (Adam's
optimized_update: _compare.KingmaBaAdam). State keys are never listed: the tests
take them from the expected optimizer's own state.

fusedopt's two gradient options, which every optimizer takes and torch.optim does not
(`clip_grad_value`, and `weight_decay_mode` where the decay is decoupled), are tested in
a few option sets per row (`grad_options`, appended to the grid's and the representative
cases rather than multiplied into the grid); the expected optimizer gets them from
WithGradOptions, which does what a torch user would write around torch.optim.

Adding an optimizer to the suite is adding its row here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch


@dataclass(frozen=True)
class SpecRow:
    name: str  # fusedopt.<name>, and torch.optim.<name> unless `expected` is given
    lr: float
    grid: Dict[str, Sequence] = field(default_factory=dict)
    valid: Callable[[dict], bool] = lambda options: True
    representative: Tuple[Dict[str, object], ...] = ({},)
    # (params, **kwargs) -> an optimizer computing what fusedopt must; None: torch.optim.<name>
    expected: Optional[Callable] = None
    fusedopt_only: Tuple[str, ...] = ()  # options torch.optim.<name> does not take (besides GRAD_OPTIONS)
    torch_fused: bool = False  # torch.optim.<name> has fused=True on CPU (a 16-bit yardstick)
    # Option sets with fusedopt's gradient options (GRAD_OPTIONS): cases of their own, added to
    # the grid's cases; the first is also representative for the rows in GRAD_OPTION_ROWS.
    grad_options: Tuple[Dict[str, object], ...] = ()


# fusedopt's own gradient options, which torch.optim has no keyword for: the expected
# optimizer gets them from WithGradOptions.
GRAD_OPTIONS = ("clip_grad_value", "weight_decay_mode")
# Rows whose first grad_options set joins the representative cases (every backend, the slow
# tests): the clamp with L2 decay, with momentum, and with each optimizer's absolute decay.
GRAD_OPTION_ROWS = ("Adam", "AdamW", "SGD", "RAdam", "Lion")


class WithGradOptions(torch.optim.Optimizer):
    """An expected optimizer with fusedopt's gradient options done as a torch user would:
    before each step (after the closure, if any) `torch.nn.utils.clip_grad_value_` on the
    grads, then, for weight_decay_mode="absolute", `p *= 1 - wd` on every param with a grad,
    around an inner optimizer built with weight_decay=0.

    Why that order is exactly fusedopt's: AdamW, RAdam(decoupled_weight_decay=True) and Lion
    multiply p by their decay factor before anything else reads p, and nothing else of
    their step reads the decay, so decaying first and then stepping without decay is the
    same arithmetic; the clamp precedes maximize's sign (symmetric, so either order) and the
    decay, and follows GradScaler's unscale_ (torch's scaler unscales before calling step).

    Shares the inner optimizer's param_groups and state (schedulers, GradScaler and
    state_dict see the inner optimizer's)."""

    def __init__(self, inner: torch.optim.Optimizer, clip_value: Optional[float] = None, absolute_decay: float = 0.0):
        # No Optimizer.__init__: everything but step is the inner optimizer's.
        self.inner, self.clip_value, self.absolute_decay = inner, clip_value, absolute_decay

    def __getattr__(self, name):
        if name == "inner":  # not set yet (copy, pickle): avoid recursing
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def param_groups(self):
        return self.inner.param_groups

    @property
    def state(self):
        return self.inner.state

    @property
    def defaults(self):
        return self.inner.defaults

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state_dict):
        self.inner.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True):
        self.inner.zero_grad(set_to_none)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
            if self.clip_value is not None and params:  # torch's clip_grad_value_ refuses an empty list
                torch.nn.utils.clip_grad_value_(params, self.clip_value)
            if self.absolute_decay:
                for p in params:
                    p.mul_(1 - self.absolute_decay)
        self.inner.step()
        return loss


def with_grad_options(make: Callable, params, kwargs: dict, default_weight_decay: float):
    """make(params, **kwargs) without GRAD_OPTIONS, wrapped in WithGradOptions where they are set."""
    kwargs = dict(kwargs)
    clip_value = kwargs.pop("clip_grad_value", None)
    absolute_decay = 0.0
    if kwargs.pop("weight_decay_mode", "decoupled") == "absolute":
        absolute_decay = kwargs.get("weight_decay", default_weight_decay)
        kwargs["weight_decay"] = 0.0
    inner = make(params, **kwargs)
    if clip_value is None and not absolute_decay:
        return inner
    return WithGradOptions(inner, clip_value, absolute_decay)


class PerParamOptimizer(torch.optim.Optimizer):
    """A readable optimizer written for the tests: step() runs the closure with grad enabled,
    then `update(p, grad, state, group)` for every param with a grad, in the param's dtype."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.update(p, -p.grad if group["maximize"] else p.grad, self.state[p], group)
        return loss


class KingmaBaAdam(PerParamOptimizer):
    """Adam in Kingma & Ba's "efficient" form (section 2 of the paper):

        step = lr * sqrt(1 - b2^t) / (1 - b1^t);   p -= step * m / (sqrt(v) + eps)

    AdamW decays first (p *= 1 - lr*wd); Adam adds wd*p to the gradient. Same state
    layout as torch.optim.Adam.
    """

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=None, amsgrad=False,
                 maximize=False, decoupled=False):
        if weight_decay is None:  # the defaults of torch.optim.AdamW and torch.optim.Adam
            weight_decay = 1e-2 if decoupled else 0.0
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, decoupled=decoupled))

    def update(self, p, g, state, group):
        beta1, beta2 = group["betas"]
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t = state["step"].item()
        if wd != 0:
            if group["decoupled"]:
                p.mul_(1 - lr * wd)
            else:
                g = g + wd * p
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if group["amsgrad"]:
            torch.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        p.addcdiv_(m, v.sqrt().add_(eps), value=-step_size)


class PaperLion(PerParamOptimizer):
    """Lion exactly as Program 1 of Chen et al. 2023 writes it:

        update = sign(b1*m + (1-b1)*g);  p -= lr * (update + wd*p);  m = b2*m + (1-b2)*g

    (decay inside the update: p*(1 - lr*wd) - lr*update, the same in exact arithmetic as
    fusedopt's decoupled form, to rounding)."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize))

    def update(self, p, g, state, group):
        beta1, beta2 = group["betas"]
        if not state:
            state["exp_avg"] = torch.zeros_like(p)
        m = state["exp_avg"]
        update = (beta1 * m + (1 - beta1) * g).sign()
        p.sub_(group["lr"] * (update + group["weight_decay"] * p))
        m.mul_(beta2).add_((1 - beta2) * g)


class PaperLAMB(PerParamOptimizer):
    """LAMB as Algorithm 2 of You et al. 2020 (arXiv 1904.00962) writes it, phi the identity:

        m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;  m_hat = m/(1-b1^t);  v_hat = v/(1-b2^t)
        r = m_hat / (sqrt(v_hat) + eps);  p -= lr * ||p|| / ||r + wd*p|| * (r + wd*p)

    with the ratio 1 where either norm is 0, and fusedopt's options: `grad_averaging=False`
    (m = b1*m + g, Apex's), `bias_correction=False` (m_hat = m, v_hat = v),
    `optimized_update=True` (Kingma & Ba's form m*sqrt(1-b2^t)/(1-b1^t) / (sqrt(v) + eps)) and
    `maximize`. Written independently of fusedopt's code, one param at a time."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, bias_correction=True,
                 grad_averaging=True, optimized_update=False, maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
                                      bias_correction=bias_correction, grad_averaging=grad_averaging,
                                      optimized_update=optimized_update))

    def update(self, p, g, state, group):
        beta1, beta2 = group["betas"]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t = state["step"].item()
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(beta1).add_(g, alpha=(1 - beta1) if group["grad_averaging"] else 1.0)
        v.mul_(beta2).add_(g * g, alpha=1 - beta2)
        bc1 = 1 - beta1**t if group["bias_correction"] else 1.0
        bc2 = 1 - beta2**t if group["bias_correction"] else 1.0
        if group["optimized_update"]:
            r = m * (math.sqrt(bc2) / bc1) / (v.sqrt() + group["eps"])
        else:
            r = (m / bc1) / ((v / bc2).sqrt() + group["eps"])
        u = r + group["weight_decay"] * p
        p_norm, u_norm = p.norm(), u.norm()
        ratio = (p_norm / u_norm).item() if p_norm > 0 and u_norm > 0 else 1.0
        p.sub_(group["lr"] * ratio * u)


def _sgd_valid(o: dict) -> bool:
    if o.get("nesterov") and (o.get("momentum", 0) == 0 or o.get("dampening", 0) != 0):
        return False  # torch rejects these
    return not (o.get("momentum", 0) == 0 and o.get("dampening", 0) != 0)  # dampening without momentum: no-op


# clip_grad_value 0.5 clamps about a third of the tests' grads (randn times 0.5 to 1.5): both
# sides of the clamp are exercised. Absolute decay is 0.01 per step, lr-independent.
CLIP = {"clip_grad_value": 0.5}
ABSOLUTE = {"weight_decay_mode": "absolute", "weight_decay": 0.01}


def _adam_expected(decoupled: bool):
    def expected(params, optimized_update=False, **kwargs):
        if optimized_update:
            return KingmaBaAdam(params, decoupled=decoupled, **kwargs)
        return getattr(torch.optim, "AdamW" if decoupled else "Adam")(params, foreach=False, **kwargs)
    return expected


ADAM_GRID = dict(amsgrad=(False, True), maximize=(False, True), weight_decay=(0.0, 0.1), optimized_update=(False, True))

ROWS: List[SpecRow] = [
    SpecRow("Adam", 1e-2, ADAM_GRID, representative=({"amsgrad": True, "weight_decay": 0.1},),
            expected=_adam_expected(False), fusedopt_only=("optimized_update",), torch_fused=True,
            grad_options=({**CLIP, "weight_decay": 0.1, "maximize": True},
                          {**CLIP, **ABSOLUTE, "decoupled_weight_decay": True, "amsgrad": True})),
    SpecRow("AdamW", 1e-2, ADAM_GRID, representative=({"weight_decay": 0.1}, {"optimized_update": True}),
            expected=_adam_expected(True), fusedopt_only=("optimized_update",), torch_fused=True,
            grad_options=({**CLIP, **ABSOLUTE}, {**ABSOLUTE, "optimized_update": True, "maximize": True})),
    SpecRow("SGD", 5e-2, dict(momentum=(0.0, 0.9), dampening=(0.0, 0.5), nesterov=(False, True),
                              weight_decay=(0.0, 0.1), maximize=(False, True)), valid=_sgd_valid,
            representative=({"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
                            {"momentum": 0.9, "dampening": 0.5}, {}), torch_fused=True,
            grad_options=({**CLIP, "momentum": 0.9, "weight_decay": 0.1},)),
    SpecRow("RMSprop", 1e-2, dict(alpha=(0.99, 0.8), centered=(False, True), momentum=(0.0, 0.9),
                                  weight_decay=(0.0, 0.1), maximize=(False, True)),
            representative=({"centered": True, "momentum": 0.9, "weight_decay": 0.1}, {}),
            grad_options=({**CLIP, "centered": True, "momentum": 0.9},)),
    # The element-wise family (issue 11).
    SpecRow("Adagrad", 5e-2, dict(lr_decay=(0.0, 0.01), initial_accumulator_value=(0.0, 0.1),
                                  weight_decay=(0.0, 0.1), maximize=(False, True)),
            representative=({"lr_decay": 0.01, "initial_accumulator_value": 0.1, "weight_decay": 0.1},),
            torch_fused=True, grad_options=({**CLIP, "weight_decay": 0.1},)),
    SpecRow("Adadelta", 1.0, dict(rho=(0.9, 0.5), weight_decay=(0.0, 0.1), maximize=(False, True)),
            representative=({"weight_decay": 0.1},), grad_options=({**CLIP, "maximize": True},)),
    SpecRow("Adamax", 1e-2, dict(betas=((0.9, 0.999), (0.8, 0.9)), weight_decay=(0.0, 0.1), maximize=(False, True)),
            representative=({"weight_decay": 0.1},), grad_options=({**CLIP, "weight_decay": 0.1},)),
    SpecRow("RAdam", 1e-2, dict(weight_decay=(0.0, 0.1), decoupled_weight_decay=(False, True),
                                maximize=(False, True)),
            representative=({"weight_decay": 0.1, "decoupled_weight_decay": True},),
            grad_options=({**CLIP, **ABSOLUTE, "decoupled_weight_decay": True},)),
    SpecRow("Rprop", 1e-2, dict(etas=((0.5, 1.2), (0.3, 1.5)), step_sizes=((1e-6, 50), (1e-4, 0.02)),
                                maximize=(False, True)),
            representative=({"step_sizes": (1e-4, 0.02)},), grad_options=({**CLIP},)),
    # t0=5 starts ASGD's averaging (mu < 1) within the tests' 20 steps; torch's default 1e6 never does.
    SpecRow("ASGD", 5e-2, dict(lambd=(1e-4, 0.1), alpha=(0.75, 0.5), t0=(1e6, 5.0), weight_decay=(0.0, 0.1),
                               maximize=(False, True)),
            representative=({"t0": 5.0, "lambd": 0.1, "weight_decay": 0.1}, {}),
            grad_options=({**CLIP, "t0": 5.0, "weight_decay": 0.1},)),
    SpecRow("NAdam", 1e-2, dict(weight_decay=(0.0, 0.1), decoupled_weight_decay=(False, True),
                                momentum_decay=(4e-3, 0.1), maximize=(False, True)),
            representative=({"weight_decay": 0.1, "momentum_decay": 0.1},
                            {"weight_decay": 0.1, "decoupled_weight_decay": True}),
            grad_options=({**CLIP, **ABSOLUTE, "weight_decay": 0.1, "decoupled_weight_decay": True},)),
    SpecRow("Lion", 1e-3, dict(betas=((0.9, 0.99), (0.95, 0.98)), weight_decay=(0.0, 0.1), maximize=(False, True)),
            representative=({"weight_decay": 0.1},), expected=PaperLion,
            grad_options=({**CLIP, **ABSOLUTE}, {**ABSOLUTE, "maximize": True})),
    # Issue 12. lr 1e-2: the trust ratio makes every tensor move by ~lr * ||p|| a step.
    SpecRow("LAMB", 1e-2, dict(weight_decay=(0.0, 0.1), maximize=(False, True), bias_correction=(True, False),
                               grad_averaging=(True, False), optimized_update=(False, True)),
            representative=({"weight_decay": 0.1}, {"optimized_update": True, "grad_averaging": False}),
            expected=PaperLAMB, grad_options=({**CLIP, "weight_decay": 0.1},)),
]


def row(name: str) -> SpecRow:
    return next(r for r in ROWS if r.name == name)
