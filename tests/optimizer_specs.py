"""One spec row per optimizer: everything the suite needs to test it on every backend.

A row names the fusedopt class, the lr the tests use, the option grid (every
combination is a Case of _compare.py, filtered by `valid`), the few representative
option sets the slower tests use, and what the optimizer must equal: torch.optim's
namesake by default, or `expected(params, **kwargs)` where torch has no such optimizer
(then an implementation of the paper's pseudo-code written here) or no such option (Adam's
optimized_update: _compare.KingmaBaAdam). State keys are never listed: the tests
take them from the expected optimizer's own state.

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
    fusedopt_only: Tuple[str, ...] = ()  # options torch.optim.<name> does not take
    torch_fused: bool = False  # torch.optim.<name> has fused=True on CPU (a 16-bit yardstick)


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


def _sgd_valid(o: dict) -> bool:
    if o.get("nesterov") and (o.get("momentum", 0) == 0 or o.get("dampening", 0) != 0):
        return False  # torch rejects these
    return not (o.get("momentum", 0) == 0 and o.get("dampening", 0) != 0)  # dampening without momentum: no-op


def _adam_expected(decoupled: bool):
    def expected(params, optimized_update=False, **kwargs):
        if optimized_update:
            return KingmaBaAdam(params, decoupled=decoupled, **kwargs)
        return getattr(torch.optim, "AdamW" if decoupled else "Adam")(params, foreach=False, **kwargs)
    return expected


ADAM_GRID = dict(amsgrad=(False, True), maximize=(False, True), weight_decay=(0.0, 0.1), optimized_update=(False, True))

ROWS: List[SpecRow] = [
    SpecRow("Adam", 1e-2, ADAM_GRID, representative=({"amsgrad": True, "weight_decay": 0.1},),
            expected=_adam_expected(False), fusedopt_only=("optimized_update",), torch_fused=True),
    SpecRow("AdamW", 1e-2, ADAM_GRID, representative=({"weight_decay": 0.1}, {"optimized_update": True}),
            expected=_adam_expected(True), fusedopt_only=("optimized_update",), torch_fused=True),
    SpecRow("SGD", 5e-2, dict(momentum=(0.0, 0.9), dampening=(0.0, 0.5), nesterov=(False, True),
                              weight_decay=(0.0, 0.1), maximize=(False, True)), valid=_sgd_valid,
            representative=({"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
                            {"momentum": 0.9, "dampening": 0.5}, {}), torch_fused=True),
    SpecRow("RMSprop", 1e-2, dict(alpha=(0.99, 0.8), centered=(False, True), momentum=(0.0, 0.9),
                                  weight_decay=(0.0, 0.1), maximize=(False, True)),
            representative=({"centered": True, "momentum": 0.9, "weight_decay": 0.1}, {})),
    # The element-wise family (issue 11).
    SpecRow("Adagrad", 5e-2, dict(lr_decay=(0.0, 0.01), initial_accumulator_value=(0.0, 0.1),
                                  weight_decay=(0.0, 0.1), maximize=(False, True)),
            representative=({"lr_decay": 0.01, "initial_accumulator_value": 0.1, "weight_decay": 0.1},),
            torch_fused=True),
    SpecRow("Adadelta", 1.0, dict(rho=(0.9, 0.5), weight_decay=(0.0, 0.1), maximize=(False, True)),
            representative=({"weight_decay": 0.1},)),
    SpecRow("Adamax", 1e-2, dict(betas=((0.9, 0.999), (0.8, 0.9)), weight_decay=(0.0, 0.1), maximize=(False, True)),
            representative=({"weight_decay": 0.1},)),
    SpecRow("RAdam", 1e-2, dict(weight_decay=(0.0, 0.1), decoupled_weight_decay=(False, True),
                                maximize=(False, True)),
            representative=({"weight_decay": 0.1, "decoupled_weight_decay": True},)),
    SpecRow("Rprop", 1e-2, dict(etas=((0.5, 1.2), (0.3, 1.5)), step_sizes=((1e-6, 50), (1e-4, 0.02)),
                                maximize=(False, True)),
            representative=({"step_sizes": (1e-4, 0.02)},)),
    # t0=5 starts ASGD's averaging (mu < 1) within the tests' 20 steps; torch's default 1e6 never does.
    SpecRow("ASGD", 5e-2, dict(lambd=(1e-4, 0.1), alpha=(0.75, 0.5), t0=(1e6, 5.0), weight_decay=(0.0, 0.1),
                               maximize=(False, True)),
            representative=({"t0": 5.0, "lambd": 0.1, "weight_decay": 0.1}, {})),
    SpecRow("NAdam", 1e-2, dict(weight_decay=(0.0, 0.1), decoupled_weight_decay=(False, True),
                                momentum_decay=(4e-3, 0.1), maximize=(False, True)),
            representative=({"weight_decay": 0.1, "momentum_decay": 0.1},
                            {"weight_decay": 0.1, "decoupled_weight_decay": True})),
    SpecRow("Lion", 1e-3, dict(betas=((0.9, 0.99), (0.95, 0.98)), weight_decay=(0.0, 0.1), maximize=(False, True)),
            representative=({"weight_decay": 0.1},), expected=PaperLion),
]


def row(name: str) -> SpecRow:
    return next(r for r in ROWS if r.name == name)
