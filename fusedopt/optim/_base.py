"""The torch.optim.Optimizer subclass all fusedopt optimizers share.

A subclass supplies its hyper-parameter checks and defaults, which state tensors it keeps
(in the order the kernels expect), how to create them, and how to call its backend op.
This class owns the rest: buckets per param group, the per-step loop, state_dict
compatibility with torch.optim, and backend resolution.
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .. import backends
from .._buckets import Bucket, StateMap, _RegroupNeeded, split_into_buckets
from ..backends.base import Backend, TensorBatch


class FusedOptimizer(torch.optim.Optimizer):
    has_step_counter: bool = True  # keeps state['step'] (Adam, RMSprop) or not (SGD)

    def __init__(self, params, defaults: Dict[str, Any]):
        defaults["backend"] = backends.check_name(defaults.get("backend", "auto"))
        self._buckets: Dict[int, Tuple[List[torch.Tensor], List[Bucket]]] = {}
        super().__init__(params, defaults)
        self.state = StateMap(dict, self.state)
        for group in self.param_groups:
            self._check_backend_runs(group)

    # ----------------------------------------------------------------- subclass API
    def state_keys(self, group: dict) -> Tuple[str, ...]:
        """Names of the per-param state tensors the kernels read and write, in table order."""
        raise NotImplementedError

    def init_state(self, group: dict) -> Callable[[torch.Tensor, dict], None]:
        """A function filling a param's missing state entries (lazy initialisation): by
        default torch's float32 CPU-style step counter, kept beside the param, and zeros."""
        keys = self.state_keys(group)
        with_step = self.has_step_counter

        def init(p: torch.Tensor, state: dict) -> None:
            if with_step:
                state.setdefault("step", torch.tensor(0.0, dtype=torch.float32, device=p.device))
            for key in keys:
                if key not in state:
                    state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)

        return init

    def update(self, backend: Backend, batch: TensorBatch, fresh: List[int], group: dict) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------- torch.optim API
    def add_param_group(self, param_group: dict) -> None:
        if "backend" in param_group:
            backends.check_name(param_group["backend"])
        super().add_param_group(param_group)
        if hasattr(self, "_buckets"):  # torch's __init__ calls this before ours has finished
            self._check_backend_runs(self.param_groups[-1])

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.state = StateMap(dict, self.state)
        self._buckets = {}  # tensors may have been replaced: rebuild every table
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def load_state_dict(self, state_dict: dict) -> None:
        # The backend is how this process runs the step, not part of the training state:
        # keep the one each group was given here rather than the checkpoint's.
        chosen = [group["backend"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, backend in zip(self.param_groups, chosen):
            group["backend"] = backend

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            for bucket, batch, fresh in self._prepare_group(index, group):
                self.update(backends.resolve(group["backend"], bucket.device), batch, fresh, group)
        return loss

    # ----------------------------------------------------------------- internals
    def _prepare_group(self, index: int, group: dict) -> List[Tuple[Bucket, TensorBatch, List[int]]]:
        """Validated batches of every bucket of the group, before any kernel of it runs."""
        keys = self.state_keys(group)
        init = self.init_state(group)
        for attempt in range(2):
            try:
                prepared = []
                for bucket in self._group_buckets(index, group):
                    batch, fresh = bucket.batch(self.state, keys, self.has_step_counter, init)
                    if batch is not None:
                        prepared.append((bucket, batch, fresh))
                return prepared
            except _RegroupNeeded:  # p.data was replaced by a tensor of another dtype or device
                self._buckets.pop(index, None)
        raise AssertionError("unreachable: buckets were just rebuilt from the current params")

    def _group_buckets(self, index: int, group: dict) -> List[Bucket]:
        params = group["params"]
        cached = self._buckets.get(index)
        if cached is not None and len(cached[0]) == len(params) and all(map(operator.is_, params, cached[0])):
            return cached[1]
        buckets = split_into_buckets(params, type(self).__name__)
        self._buckets[index] = (list(params), buckets)
        return buckets

    def _check_backend_runs(self, group: dict) -> None:
        """A backend named explicitly must be able to run on the group's devices: say so now."""
        for device in {p.device for p in group["params"]}:
            backends.resolve(group["backend"], device)
