"""Adafactor: torch.optim.Adafactor's math, defaults, errors and state layout, fused."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from .. import backends
from .._buckets import check_state_complete
from .._factored import FACTORED, MOMENT_KEYS, FactoredConfig, FactoredTables, new_moments
from ._base import FusedOptimizer
from ._ops import run_outside_the_graph
from ._plan import learning_rate, step_hyper
from ._spec import BOOL, FLOAT, OptimizerSpec

__all__ = ["Adafactor"]


class Adafactor(FusedOptimizer):
    """torch.optim.Adafactor (Shazeer & Stern 2018, with torch's use of lr and eps1), each
    bucket of a group updated by a few passes over all its tensors (fusedopt/_factored.py):
    the row and column means of g², the param's RMS and the update's RMS stay where the
    tensors are, so a step does not wait on the host (torch's reads each with .item()).

    State as torch's: `step` (a float32 0-dim tensor, kept beside the param), `row_var`
    (..., R, 1) and `col_var` (..., 1, C) for params with two or more dimensions,
    `variance` for vectors; all in the param's dtype. float16/bfloat16 params are computed
    in float32 and rounded once. `eps=(None, eps2)` uses the machine epsilon of each
    bucket's dtype (torch takes the first param's, whatever the others' dtypes).

    A tensor lr is read as a float64 number (torch computes alpha and the decay factor in
    the tensor's dtype, so with a float32 tensor the two differ by float32 rounding of the
    step size). Params must be contiguous. GradScaler unscales the grads itself before the step, as it
    does for torch.optim.Adafactor (which refuses grad_scale and found_inf).
    """

    spec = OptimizerSpec(
        kind="adafactor",
        hyperparameters=(("beta2_decay", FLOAT), ("eps1", FLOAT), ("eps2", FLOAT), ("d", FLOAT),
                         ("weight_decay", FLOAT), ("maximize", BOOL)),
        state_keys=lambda h: (),  # row_var/col_var/variance are not laid out like the param: _factored.py
        kernel=FACTORED,
    )
    # torch.optim.Adafactor.__setstate__'s default; its step conversion is the bucket's.
    _setstate_defaults = dict(foreach=None)
    # Adafactor takes none of fusedopt's gradient options (master_weights, max_grad_norm,
    # clip_grad_value): only the backend.
    # state_dtype: only None (or torch.float32: the same), its states stay in the param's dtype
    # (_bf16_states_refused).
    _own_setstate_defaults = dict(backend="auto", state_dtype=None)
    _bf16_states_refused = ("Adafactor's factored second moments (row_var, col_var, variance) stay in the param's "
                            "dtype; its kernels have no bf16 state storage")
    _int8_states_refused = ("Adafactor's factored second moments (row_var, col_var, variance) are not laid out like "
                            "the param and have no 8-bit storage")
    # GradScaler hands grad_scale/found_inf only to optimizers that say they take them; torch's
    # Adafactor does not, so the scaler unscales (and skips on inf) itself.
    _step_supports_amp_scaling = False

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, *,
                 foreach=None, maximize=False, backend="auto", state_dtype=None):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not 0.0 >= beta2_decay:
            raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
        if eps[0] is not None and not 0.0 <= eps[0]:
            raise ValueError(f"epsilon1 should be >= 0 but is: {eps[0]}")
        if not 0.0 <= eps[1]:
            raise ValueError(f"epsilon2 should be >= 0 but is: {eps[1]}")
        if not 1.0 <= d:
            raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight_decay should be >= 0 but is: {weight_decay}")
        self._tables: Dict[tuple, FactoredTables] = {}
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay, foreach=foreach,
                        maximize=maximize, backend=backend, state_dtype=state_dtype)
        super().__init__(params, defaults)

    def hyper(self, group: dict) -> Dict[str, Any]:
        """The group's hyper-parameters by the spec's names; eps1 is NaN for torch's None
        (resolved per bucket dtype in the step)."""
        eps1, eps2 = group["eps"]
        return dict(beta2_decay=group["beta2_decay"], eps1=float("nan") if eps1 is None else eps1, eps2=eps2,
                    d=group["d"], weight_decay=group["weight_decay"], maximize=group["maximize"])

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._tables = {}

    def _init_state(self, group: dict, dtype: torch.dtype, hyper: dict):
        def init(p: torch.Tensor, state: dict) -> None:
            # A state with moments but no step has trained and lost its step: torch's KeyError
            check_state_complete(state, ("step", *MOMENT_KEYS), type(self).__name__, any_of=MOMENT_KEYS)
            state.setdefault("step", torch.tensor(0.0, dtype=torch.float32, device=p.device))
            new_moments(p, state)

        return init

    def _check_backend_runs(self, group: dict) -> None:
        for device in {p.device for p in group["params"]}:
            backends.resolve(group["backend"], device, FACTORED)

    @torch.no_grad()
    def step(self, closure=None):
        if torch.compiler.is_compiling():  # its factored kernels have no torch.library op
            return run_outside_the_graph(self._step, closure)
        return self._step(closure)

    def _step(self, closure):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plans = []  # every bucket checked before any is updated
        for index, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.grad is not None and torch.is_complex(p):
                    raise RuntimeError("Adafactor does not support complex parameters")
            hyper = step_hyper(self, group)  # checked for every group before any update
            for position, (bucket, batch, _) in enumerate(self._prepare_group(index, group, hyper)):
                owners = [p for p in bucket.params if p.grad is not None]
                # A table is rebuilt whenever the bucket's batch changes (its version is unique).
                tables = self._tables.setdefault((index, position), FactoredTables(type(self).__name__))
                plans.append((group, hyper, bucket, tables.batch(batch, owners, self.state)))
        for group, hyper, bucket, factored in plans:
            backend = backends.resolve(group["backend"], bucket.device, FACTORED)
            backend.update_factored(self.kind, factored, _config(group, hyper, backend, factored))
        return loss


def _config(group: dict, hyper: dict, backend, batch) -> FactoredConfig:
    lr, lr_tensor = learning_rate(group["lr"], backend, batch.device)
    eps1: Optional[float] = group["eps"][0]
    if eps1 is None:  # torch: the machine epsilon of the params' dtype
        eps1 = torch.finfo(batch.dtype).eps
    return FactoredConfig(lr=lr, lr_tensor=lr_tensor, beta2_decay=hyper["beta2_decay"], eps1=float(eps1),
                          eps2=hyper["eps2"], d=hyper["d"], weight_decay=hyper["weight_decay"],
                          maximize=hyper["maximize"])
