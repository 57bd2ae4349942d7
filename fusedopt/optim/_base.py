"""The torch.optim.Optimizer subclass all fusedopt optimizers share.

A subclass supplies its constructor (torch.optim's signature, defaults and checks), its
OptimizerSpec (fusedopt/optim/_spec.py: kind, hyper-parameters by name, state tensors,
step counter) and, where its group keys differ from the spec's names, `hyper(group)`.
Defining the class registers the spec. This class owns the rest: buckets per param group,
the per-step loop, what every optimizer does to gradients first (GradScaler's unscale/skip,
max_grad_norm's clip, clip_grad_value's clamp, in that order: GradTransform), fp32 master
weights, state_dict compatibility with torch.optim, and backend resolution.
"""
from __future__ import annotations

import operator
import sys
from itertools import chain
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .. import backends
from .._buckets import (COMPLEX_TO_REAL, Bucket, DTensor, SparseGradError, StateMap, _RegroupNeeded,
                        check_state_complete, consolidate, kernel_view, split_into_buckets)
from .._layout import (MASTER_KEY, NO_GRAD_TRANSFORM, GradTransform, TensorBatch, check_clip_options,
                       check_max_grad_norm, math_dtype)
from .._memory import overlaps_itself
from .._quantize import CODE_DTYPE, dequantized_like, quantized_entry_problem, quantized_like, refusal, scale_key
from ..clip import clip_coefficient, global_norm
from ._checks import (check_low_precision_fits, check_low_precision_options, check_weight_decay_mode,
                      warn_bf16_state_decays)
from ._lazy import check_lazy_group, is_lazy, prepare_lazy_groups, run_lazy_groups
from ._ops import compiled_step, compiled_step_serves, run_outside_the_graph
from ._plan import (INT8_KERNEL, bf16_states, bucket_scale_keys, bucket_state_dtype, bucket_state_keys,
                    float32_states, group_hyper, int8_states, quantizes, return_copied_grads, run_update, step_hyper,
                    stochastic_round, uses_master)
from ._sparse_grads import SparseGrads, hide_sparse_grads, restore_grads
from ._spec import OptimizerSpec, register


Prepared = List[Tuple[Bucket, TensorBatch, List[int]]]


class FusedOptimizer(torch.optim.Optimizer):
    spec: OptimizerSpec  # set by every optimizer class; defining the class registers it

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """True to torch (GradScaler.step): it then hands this optimizer `grad_scale` and
        `found_inf` instead of unscaling the grads itself; the kernels unscale and skip the
        step on inf/NaN, with no sync. False to everyone else: frameworks read the flag as
        "step() unscales, so grads must not be unscaled before it" and refuse to clip
        (Lightning, even under bf16 where no scaler exists). That is not so here: after an
        explicit scaler.unscale_(), GradScaler.step hands over found_inf alone."""
        return _called_from_torch(sys._getframe(1))

    def __init__(self, params, defaults: Dict[str, Any]):
        defaults["backend"] = backends.check_name(defaults.get("backend", "auto"))
        check_max_grad_norm(defaults.get("max_grad_norm"))
        self._buckets: Dict[int, Tuple[List[torch.Tensor], List[Bucket], bool]] = {}
        super().__init__(params, defaults)
        self.state = StateMap(self.state)
        for group in self.param_groups:
            self._check_backend_runs(group)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "spec" in cls.__dict__:
            register(cls.spec, cls)

    # ----------------------------------------------------------------- subclass API
    def hyper(self, group: dict) -> Dict[str, Any]:
        """The group's values of the spec's hyper-parameters, by name (before coercion to
        float/bool). Subclasses whose group keys differ (Adam's `betas`) override it."""
        return {name: group[name] for name in self.spec.hyper_names()}

    def state_keys(self, group: dict) -> Tuple[str, ...]:
        """Names of the per-param state tensors the kernels read and write, in table order."""
        return tuple(self.spec.state_keys(group_hyper(self, group)))

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def has_step_counter(self) -> bool:
        return self.spec.step_counter
    # Values for flags missing from a loaded param group (a checkpoint of an older torch or
    # fusedopt): torch.optim's __setstate__ defaults for its own keys, which are the
    # historical behaviour, not this optimizer's constructor arguments.
    _setstate_defaults: Dict[str, Any] = {}
    # fusedopt's own group keys, defaulted the same way: what a checkpoint without them meant.
    # state_dict() leaves them out where they hold these values (and always leaves out the
    # backend, which is how this process runs, not training state), so a fusedopt
    # checkpoint has torch's key set and loads both ways under DCP's default planner,
    # which refuses a destination key the checkpoint lacks.
    # clip_grad_value: every grad element clamped to [-c, c] after GradScaler's unscale and
    # max_grad_norm's clip (whose norm is that of the unclamped grads), before maximize and
    # weight decay; a plain number per group (None: off). Optimizers with decoupled weight
    # decay add weight_decay_mode="decoupled" (or "absolute") to their own defaults.
    # clip_grad_norm_per_tensor: each grad multiplied by its own paddle ClipGradByNorm
    # coefficient (fusedopt/clip.py's per_tensor_clip_coefficients), after GradScaler's unscale
    # and max_grad_norm's clip, before clip_grad_value's clamp; None: off.
    # state_dtype: None (or torch.float32: the same) keeps today's state dtypes (the param's, or
    # float32 with master weights); torch.bfloat16 stores every state tensor in bf16; "int8"
    # stores each state tensor of 4,096 elements or more as blockwise 8-bit codes and block
    # scales (fusedopt/_quantize.py). Like the backend, a group keeps its own state_dtype when a
    # checkpoint is loaded, and the checkpoint's states are converted to it (issue 13).
    # bf16_stochastic_round: True stores bf16 params that have no master copy rounded
    # stochastically, not to nearest: the upper 16 bits of (the float32 result's bits + 16
    # random bits), so small updates are kept on average instead of lost; the random bits hash
    # (a seed drawn per bucket per step from torch's default generator, the tensor, the
    # element), so runs repeat under torch.manual_seed (fusedopt/backends/reference/_rounding.py).
    _own_setstate_defaults = dict(backend="auto", master_weights=False, max_grad_norm=None, clip_grad_value=None,
                                  clip_grad_norm_per_tensor=None, state_dtype=None, bf16_stochastic_round=False)

    # fusedopt's group options (weight_decay_mode aside: check_weight_decay_mode). A class that
    # takes one has it in its defaults or its _own_setstate_defaults; a group of any other class
    # asking for it (Adafactor with clip_grad_value, SGD with lazy_mode) is refused when added,
    # not ignored or left to fail inside a step.
    _group_options = (*(key for key in _own_setstate_defaults if key != "backend"), "lazy_mode", "optimized_update")
    # Options the class sets in every group itself (SparseAdam: lazy_mode).
    _implied_group_options: Tuple[str, ...] = ()

    # What to do instead, appended to the refusal of a sparse grad (Adam: lazy mode).
    _sparse_grad_advice = ""

    # Why this optimizer cannot keep bf16 states (state_dtype=torch.bfloat16 is then refused
    # when a group is added); None: it can.
    _bf16_states_refused: Optional[str] = None
    # Why it cannot keep 8-bit states (None: decided by its state tensors' names,
    # fusedopt/_quantize.py's STATE_CODES and REFUSED_STATES).
    _int8_states_refused: Optional[str] = None

    # ----------------------------------------------------------------- torch.optim API
    def add_param_group(self, param_group: dict) -> None:
        if not isinstance(param_group, dict):  # torch's check, before ours reads it
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        if "backend" in param_group:
            backends.check_name(param_group["backend"])
        _refuse_duplicates(param_group)
        super().add_param_group(param_group)
        self._check_group_options(self.param_groups[-1])
        if hasattr(self, "_buckets"):  # torch's __init__ calls this before ours has finished
            self._check_backend_runs(self.param_groups[-1])

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.state = StateMap(self.state)
        self._buckets = {}  # tensors may have been replaced: rebuild every table
        for group in self.param_groups:
            for key, value in (*self._setstate_defaults.items(), *self._own_setstate_defaults.items()):
                group.setdefault(key, value)

    def state_dict(self) -> dict:
        # fusedopt's shaping runs as the first post-hook, so the user's post-hooks see (and
        # may change) the state dict in its final form, as they would torch.optim's.
        handle = self.register_state_dict_post_hook(type(self)._shape_state_dict, prepend=True)
        try:
            return super().state_dict()
        finally:
            handle.remove()

    def _shape_state_dict(self, state_dict: dict) -> dict:
        # Plain dicts, as torch.optim's: torch.load(weights_only=True) accepts nothing else.
        # Entries that are not dicts (a hook may store anything) pass through as torch's do.
        state_dict["state"] = {key: dict(value) if isinstance(value, dict) else value
                               for key, value in state_dict["state"].items()}
        own = self._own_setstate_defaults
        state_dict["param_groups"] = [
            {key: value for key, value in group.items()
             if key != "backend" and not (key in own and _same_value(value, own[key]))}
            for group in state_dict["param_groups"]
        ]
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        # The backend is how this process runs the step, not part of the training state:
        # keep the one each group was given here rather than the checkpoint's. So too the
        # state_dtype, and bf16_stochastic_round where the checkpoint's cannot apply (a run
        # saved with bf16 params and stochastic rounding may resume with float32 params).
        chosen = [(group["backend"], group.get("state_dtype"), group.get("bf16_stochastic_round"))
                  for group in self.param_groups]
        loaded = []

        def check_after_user_hooks(optimizer, state_dict):
            # The last pre-hook: the user's may have converted the checkpoint, so judge (and
            # later restore fp32 state from) what they return, as torch.optim loads it.
            self._check_loadable(state_dict)
            loaded.append(state_dict)

        def restore_before_user_hooks(optimizer):
            # The first post-hook, so the user's see the state as it will train (as state_dict's
            # shaping is the first of its post-hooks).
            for group, (backend, state_dtype, rounding) in zip(self.param_groups, chosen):
                group["backend"] = backend
                group["state_dtype"] = state_dtype
                if group.get("bf16_stochastic_round") and any(p.dtype != torch.bfloat16 for p in group["params"]):
                    group["bf16_stochastic_round"] = bool(rounding)
            self._buckets = {}  # a group's 8-bit split follows its state_dtype
            self._restore_state_dtypes(loaded[0])

        # torch's load builds new state and groups and swaps them in; a load that fails
        # anywhere (here, or in a user's hook) puts the old ones back, so an optimizer never
        # trains on half a checkpoint (torch's cast of 8-bit codes to float values, say).
        previous = (self.state, self.param_groups, self._buckets)
        hooks = (self.register_load_state_dict_pre_hook(check_after_user_hooks),
                 self.register_load_state_dict_post_hook(restore_before_user_hooks, prepend=True))
        try:
            super().load_state_dict(state_dict)
        except BaseException:
            self.state, self.param_groups, self._buckets = previous
            raise
        finally:
            for hook in hooks:
                hook.remove()

    def _check_loadable(self, state_dict: dict) -> None:
        # torch.optim.Optimizer.__setstate__ (every load, deepcopy and unpickle) adds
        # `differentiable` to the defaults even of optimizers that never take it (Adafactor,
        # SparseAdam): their groups need not have it.
        defaulted = {*self._setstate_defaults, *self._own_setstate_defaults, "differentiable"}
        name = type(self).__name__
        for index, group in enumerate(state_dict.get("param_groups", ())):
            missing = [key for key in self.defaults if key not in group and key not in defaulted]
            if missing:  # torch would load it, then fail at the next step with a KeyError
                raise ValueError(f"{name}: load_state_dict: param group {index} has no "
                                 f"{', '.join(map(repr, missing))}; is this another optimizer's state_dict?")
        states = state_dict.get("state", {})
        for param_id, entry in (states.items() if isinstance(states, dict) else ()):
            problem = isinstance(entry, dict) and quantized_entry_problem(entry)
            if problem:
                raise ValueError(f"{name}: load_state_dict: the state of param {param_id} {problem}")

    def _restore_state_dtypes(self, state_dict: dict) -> None:
        """torch's load casts every floating state tensor to its param's dtype (uint8 codes
        and their scales too); per-param scalar states (float32: NAdam's mu_product, ASGD's eta
        and mu, which a bf16 cast would round), master weights (float32) and state tensors of another dtype
        (float32 with master weights, bf16 with state_dtype=torch.bfloat16, 8-bit codes with
        "int8") are taken from the checkpoint again and converted once, from the saved values,
        to the form this group keeps them in: a float32 checkpoint loads into bf16 states
        rounded once and into 8-bit states quantized once; bf16 states load exactly into
        float32 ones, 8-bit states dequantized (fusedopt/_quantize.py)."""
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        for saved_id, (param, group) in zip(saved_ids, self._params_with_groups()):
            saved = state_dict["state"].get(saved_id)
            if saved is None:
                continue
            state = self.state[param]
            for key in (*(("step",) if self.has_step_counter else ()), *self.spec.scalar_state_keys()):
                value = saved.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key in state:
                    # A number (an old checkpoint's step): a tensor, as torch's __setstate__ makes
                    # it, so a compiled step can pass it to the op.
                    state[key] = torch.tensor(float(value), dtype=torch.float32, device=param.device)
                elif key != "step" and isinstance(value, torch.Tensor) and value.is_floating_point():
                    # float32 beside any param (_init_state)
                    state[key] = value.to(device=param.device, dtype=torch.float32, copy=True)
            quantized = quantizes(group, param)
            state_dtype = bucket_state_dtype(group, param.dtype, quantized)
            keys = self.state_keys(group)
            saved_quantized = any(_is_quantized(saved, key) for key in keys)
            if state_dtype is None and not saved_quantized:
                continue
            if self._uses_master(group, param.dtype) and isinstance(saved.get(MASTER_KEY), torch.Tensor):
                state[MASTER_KEY] = saved[MASTER_KEY].to(device=param.device, dtype=torch.float32, copy=True)
            for key in keys:
                value = saved.get(key)
                if not isinstance(value, torch.Tensor):
                    continue
                state.pop(scale_key(key), None)
                if _is_quantized(saved, key):
                    if quantized:  # codes and scales exactly as saved
                        state[key] = value.to(device=param.device, copy=True)
                        state[scale_key(key)] = saved[scale_key(key)].to(device=param.device, copy=True)
                        continue
                    value = dequantized_like(value, saved[scale_key(key)], key)
                if quantized:
                    codes, scales = quantized_like(value.to(device=param.device, dtype=torch.float32), key)
                    state[key], state[scale_key(key)] = codes, scales
                else:
                    state[key] = value.to(device=param.device, dtype=state_dtype or param.dtype, copy=True)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        if torch.compiler.is_compiling() and not compiled_step_serves(self):
            return run_outside_the_graph(self._step, closure)  # a graph break: the eager step, untraced
        return self._step(closure)

    def _step(self, closure: Optional[Callable[[], Any]]):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        if (self.spec.first_step_rule and found_inf is not None and found_inf.device.type == "cpu"
                and found_inf.item() != 0):  # never under torch.compile (compiled_step_serves)
            # Reading a CPU tensor costs no sync: skip before any lazy state is created, so a
            # skipped first step leaves SGD's first-step rule (buf = grad) for the next one.
            # Elsewhere the kernels skip; new buffers then start at zero (torch's fused SGD
            # leaves them uninitialised).
            return loss
        if torch.compiler.is_compiling():
            compiled_step(self)  # traced by dynamo: one torch.library op per group and dtype
            return loss
        # The groups' hyper-parameters, read and checked once per step before any state is
        # created: the state keys, lazy state and the backend calls below all follow from them.
        hypers = [step_hyper(self, group) for group in self.param_groups]
        # Lazy groups (sparse grads updating only their rows, fusedopt/optim/_lazy.py) are
        # validated first and run after the others: nothing moves unless every grad can.
        lazy = [(group, hyper) for group, hyper in zip(self.param_groups, hypers) if is_lazy(group)]
        lazy_prepared = prepare_lazy_groups(self, lazy) if lazy else []
        # Params whose sparse grads torch's own update takes (SGD, Adagrad; _sparse_grads.py),
        # their grads hidden from the fused step meanwhile.
        sparse: List[SparseGrads] = []
        try:
            prepared = [[] if is_lazy(group) else self._prepare_group(index, group, hyper, sparse)
                        for index, (group, hyper) in enumerate(zip(self.param_groups, hypers))]
            transforms = self._grad_transforms(prepared)
            if getattr(self, "grad_scale", None) is not None:
                _check_grads_writable(prepared)
            for group, hyper, batches in zip(self.param_groups, hypers, prepared):
                for bucket, batch, fresh in batches:
                    transform = transforms(group, bucket.device, bucket.dtype)
                    backend = (backends.resolve(group["backend"], bucket.device, INT8_KERNEL) if bucket.quantized
                               else backends.resolve(group["backend"], bucket.device))
                    run_update(self.spec, backend, batch, fresh, hyper,
                               group["lr"], self._uses_master(group, bucket.dtype), transform,
                               group.get("clip_grad_norm_per_tensor"), bf16_states(group),
                               int8_states=bucket.quantized, stochastic=stochastic_round(group),
                               float32_states=float32_states(group, bucket.dtype, bucket.quantized))
                    if transform.writes_grad() and bucket._grads_copied:
                        return_copied_grads([kernel_view(p.grad) for p in bucket.params if p.grad is not None],
                                            batch.grads)
        finally:
            restore_grads(sparse)
        for entry in sparse:
            self._sparse_update(entry.group, entry.params, entry.grads)
        if lazy:
            run_lazy_groups(lazy, lazy_prepared)
        return loss

    # ----------------------------------------------------------------- state
    def _uses_master(self, group: dict, dtype: torch.dtype) -> bool:
        return uses_master(group, dtype)

    def _bucket_state_keys(self, group: dict, dtype: torch.dtype, hyper: dict) -> Tuple[str, ...]:
        return bucket_state_keys(self.spec, hyper, self._uses_master(group, dtype))

    def _init_state(self, group: dict, dtype: torch.dtype, hyper: dict,
                    quantized: bool = False) -> Callable[[torch.Tensor, dict], None]:
        """A function filling a param's missing state entries (lazy initialisation): torch's
        float32 step counter and scalar states (kept beside the param, so GPU kernels read
        them without a sync), every state tensor (zeros, or the spec's initial value), and the fp32 master
        copy of a 16-bit param. State tensors get the bucket's state dtype (bucket_state_dtype);
        in a `quantized` bucket (8-bit states) each is its start value quantized: uint8 codes
        and float32 block scales (`<key>_absmax`; zeros: absmax 0, every code pointing at 0.0)."""
        keys = self.spec.state_keys(hyper)
        order = self.spec.creation_order
        created_in_order = (keys if not order  # torch's order of new state keys, where it is not table order
                            else sorted(keys, key=lambda k: order.index(k) if k in order else len(order)))
        with_step = self.has_step_counter
        master = self._uses_master(group, dtype)
        state_dtype = bucket_state_dtype(group, dtype, quantized)
        fills = {key: group[source] for key, source in self.spec.initial_values}
        # torch.optim's per-param scalars (ASGD's eta starts at the group's lr, its mu at 1):
        # float32, beside the param; a tensor lr is read only when such state is created.
        scalars = self.spec.scalar_states
        # Every path that creates state comes here (buckets, the compiled step, lazy mode,
        # sparse grads): a trained state that lost some of these is torch's KeyError.
        required = (*keys, *self.spec.scalar_state_keys(), *(("step",) if with_step else ()))
        name = type(self).__name__

        def init(p: torch.Tensor, state: dict) -> None:
            check_state_complete(state, required, name)
            if with_step:
                state.setdefault("step", torch.tensor(0.0, dtype=torch.float32, device=p.device))
            for key, start in scalars:
                if key not in state:
                    value = float(group[start]) if isinstance(start, str) else float(start)
                    state[key] = torch.tensor(value, dtype=torch.float32, device=p.device)
            for key in created_in_order:
                if key not in state:
                    value = torch.zeros_like(p, dtype=torch.float32 if quantized else state_dtype,
                                             memory_format=torch.preserve_format)
                    value = value if key not in fills else value.fill_(_start_value(fills[key], value))
                    if quantized:
                        state[key], state[scale_key(key)] = quantized_like(value, key)
                    else:
                        state[key] = value
            if master and MASTER_KEY not in state:
                state[MASTER_KEY] = p.detach().to(torch.float32, copy=True)
            # master_weights or state_dtype turned on for state kept in another form (a torch
            # checkpoint, or a group switched over): its states go on in the bucket's form
            for key in keys:
                if _is_quantized(state, key) and not quantized:
                    state[key] = dequantized_like(state[key], state.pop(scale_key(key)), key)
                if quantized and state[key].dtype == CODE_DTYPE and scale_key(key) not in state:
                    raise RuntimeError(f"{type(self).__name__}: state '{key}' holds 8-bit codes without their block "
                                       f"scales '{scale_key(key)}'; restore both, or delete the state")
                if quantized and state[key].dtype != CODE_DTYPE:
                    state[key], state[scale_key(key)] = quantized_like(state[key].float(), key)
                elif state[key].is_floating_point() and state[key].dtype != (state_dtype or dtype):
                    state[key] = state[key].to(state_dtype or dtype)  # (complex states keep their dtype)

        return init

    def _sparse_update(self, group: dict, params: List[torch.Tensor], grads: List[torch.Tensor]) -> None:
        """torch.optim's own update of params with sparse grads (fusedopt/optim/_sparse_grads.py);
        optimizers whose torch namesake takes sparse grads override it."""
        raise NotImplementedError

    def _check_sparse_group(self, group: dict) -> None:
        """Refuse, before any param moves, what _sparse_update cannot do for this group."""

    def _create_state_now(self) -> None:
        """Every param's state as its first step would create it, at once (Adagrad: torch
        creates `sum` and `step` in its constructor). Consolidated as a first step's new state
        is, per group, dtype, device and state form, so the per-step checks cost the same."""
        for group in self.param_groups:
            hyper = group_hyper(self, group)
            kinds: Dict[tuple, List[dict]] = {}
            for p in group["params"]:
                self._init_param_state(group, hyper, p)
                kinds.setdefault((p.dtype, p.device, quantizes(group, p), isinstance(p, DTensor)), []).append(
                    self.state[p])
            for (*_, distributed), states in kinds.items():
                if len(states) > 1 and not distributed:  # as Bucket._rebuild consolidates new state
                    consolidate(states, tuple(states[0]))

    def _init_param_state(self, group: dict, hyper: dict, p: torch.Tensor) -> None:
        """p's missing state, as the first step of its bucket would create it."""
        dtype = COMPLEX_TO_REAL.get(p.dtype, p.dtype)
        init = (self._init_state(group, dtype, hyper, quantized=True) if quantizes(group, p)
                else self._init_state(group, dtype, hyper))
        init(p, self.state[p])

    # ----------------------------------------------------------------- per step
    def _prepare_group(self, index: int, group: dict, hyper: dict, sparse: Optional[List[SparseGrads]] = None
                       ) -> Prepared:
        """Validated batches of every bucket of the group, before any kernel runs. A bucket
        whose sparse grads torch's own update can take (`_sparse_update`) is prepared without
        them, and they join `sparse`."""
        for attempt in range(2):
            try:
                prepared = []
                for bucket in self._group_buckets(index, group):
                    # the params' dtype now (complex ones too), which model.double() may have changed
                    check_low_precision_fits(group, bucket.param_dtype, bucket.distributed)
                    keys = self._bucket_state_keys(group, bucket.dtype, hyper)

                    def prepare():
                        return bucket.batch(
                            self.state, keys, self.has_step_counter,
                            (self._init_state(group, bucket.dtype, hyper, quantized=True) if bucket.quantized
                             else self._init_state(group, bucket.dtype, hyper)),  # Adafactor's takes no `quantized`
                            bucket_state_dtype(group, bucket.dtype, bucket.quantized),
                            scalar_keys=self.spec.scalar_state_keys(),
                            scale_keys=bucket_scale_keys(keys, bucket.quantized),
                        )
                    try:
                        batch, fresh = prepare()
                    except SparseGradError as error:  # raised before the bucket wrote anything
                        if sparse is None or type(self)._sparse_update is FusedOptimizer._sparse_update:
                            raise SparseGradError(f"{error}{self._sparse_grad_advice}") from None
                        sparse.append(hide_sparse_grads(self, group, bucket.params))
                        batch, fresh = prepare()
                    if batch is not None:
                        prepared.append((bucket, batch, fresh))
                return prepared
            except _RegroupNeeded:  # p.data was replaced by a tensor of another dtype or device
                self._buckets.pop(index, None)
        raise AssertionError("unreachable: buckets were just rebuilt from the current params")

    def _grad_transforms(self, prepared: List[Prepared]) -> Callable[[dict, torch.device, torch.dtype], GradTransform]:
        """GradScaler's scale and found_inf (float32), and each group's clip coefficient (in the
        math type of the bucket's dtype: float64 grads are scaled in float64, as torch's
        clip_grad_norm_ scales them), as one-element tensors on each device. Computed on the
        device: nothing here syncs."""
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        clipped = any(group.get("max_grad_norm") is not None for group in self.param_groups)
        if grad_scale is None and found_inf is None and not clipped:
            return _value_clip_only
        norm = self._grad_norm(prepared, grad_scale) if clipped else None
        on_device: Dict[Any, Optional[torch.Tensor]] = {}

        def placed(key, tensor: Optional[torch.Tensor], device: torch.device,
                   dtype: torch.dtype = torch.float32) -> Optional[torch.Tensor]:
            if tensor is None:
                return None
            if (key, device, dtype) not in on_device:
                on_device[(key, device, dtype)] = tensor.to(device=device, dtype=dtype, non_blocking=True).reshape(())
            return on_device[(key, device, dtype)]

        def transform(group: dict, device: torch.device, dtype: torch.dtype) -> GradTransform:
            max_norm = group.get("max_grad_norm")
            coef = None
            if max_norm is not None:
                coef = placed(("clip", max_norm), clip_coefficient(max_norm, norm), device, math_dtype(dtype))
            return GradTransform(placed("scale", grad_scale, device), placed("inf", found_inf, device), coef,
                                 group.get("clip_grad_value"))

        return transform

    def _grad_norm(self, prepared: List[Prepared], grad_scale: Optional[torch.Tensor]) -> torch.Tensor:
        """L2 norm of every gradient this optimizer updates, unscaled, in float64: one sum of
        squares per bucket, in bucket order (the compiled path does the same, fusedopt/_ops.py)."""
        sums = [backends.resolve(group["backend"], bucket.device).sum_of_squares(batch.grads)
                for group, batches in zip(self.param_groups, prepared) for bucket, batch, _ in batches]
        return global_norm(sums, grad_scale)

    # ----------------------------------------------------------------- internals
    def _params_with_groups(self):
        return ((p, group) for group in self.param_groups for p in group["params"])

    def _group_buckets(self, index: int, group: dict) -> List[Bucket]:
        params = group["params"]
        int8 = int8_states(group)
        cached = self._buckets.get(index)
        if (cached is not None and cached[2] == int8 and len(cached[0]) == len(params)
                and all(map(operator.is_, params, cached[0]))):
            return cached[1]
        buckets = split_into_buckets(params, type(self).__name__,
                                     quantized=(lambda p: quantizes(group, p)) if int8 else None)
        self._buckets[index] = (list(params), buckets, int8)
        return buckets

    def _check_group_options(self, group: dict) -> None:
        """fusedopt's own group options, checked when the group is added (the constructor's
        defaults included): clip_grad_value, and weight_decay_mode, which only optimizers
        with decoupled weight decay take (their `hyper` checks it against the group's form
        of decay; anywhere else a group asking for absolute decay is refused, not ignored)."""
        name = type(self).__name__
        try:
            check_clip_options(group)
            # Read once here, as the kernels will: a bad value (or a weight_decay_mode that does
            # not fit the group's decay) is refused now, not at the first step.
            hyper = group_hyper(self, group)
            self._check_low_precision_options(group, hyper)
            if is_lazy(group):
                check_lazy_group(group, name)
            if "weight_decay_mode" not in self.defaults and "weight_decay_mode" in group:
                check_weight_decay_mode(group["weight_decay_mode"], decoupled=False)
            self._refuse_options_not_taken(group)  # last: the checks above say why where they can
            if bf16_states(group):
                warn_bf16_state_decays(name, {key: hyper[key] for key in self.spec.state_decays})
        except Exception:
            self.param_groups.pop()  # as if never added, as torch's own checks leave it
            raise

    def _check_low_precision_options(self, group: dict, hyper: dict, params: bool = True) -> None:
        """state_dtype and bf16_stochastic_round against what this optimizer can keep: when a
        group is added, and at each step (`params=False`) for what a hand edit may have changed."""
        check_low_precision_options(group, type(self).__name__, self._bf16_states_refused,
                                    self._int8_states_refused or refusal(tuple(self.spec.state_keys(hyper))),
                                    None if self.spec.kernel == "elementwise" else
                                    f"its {self.spec.kernel} kernels round bf16 params to nearest only", params)

    def _refuse_options_not_taken(self, group: dict) -> None:
        """Runs after the options' own checks, so a value here is None, False, a valid one, or
        torch.float32 for state_dtype (the same as None)."""
        taken = {*self.defaults, *type(self)._own_setstate_defaults, *self._implied_group_options}
        for key in self._group_options:
            value = group.get(key)
            if key not in taken and value not in (None, False) and not (key == "state_dtype" and value == torch.float32):
                raise ValueError(f"{type(self).__name__} does not take {key} (a param group asks for "
                                 f"{key}={value!r})")

    def _check_backend_runs(self, group: dict) -> None:
        """A backend named explicitly must be able to run on the group's devices: say so now."""
        for device in {p.device for p in group["params"]}:
            backends.resolve(group["backend"], device)
            if any(quantizes(group, p) for p in group["params"] if p.device == device):
                backends.resolve(group["backend"], device, INT8_KERNEL)


def _start_value(fill, state: torch.Tensor):
    """What a state tensor starting at a group value is filled with: the value itself, or for
    complex state complex(v, v), as torch.optim starts Adagrad's `sum` and Rprop's
    `step_size`, so a param's imaginary parts move as its real parts do."""
    return complex(fill, fill) if state.is_complex() else fill


def _is_quantized(state: dict, key: str) -> bool:
    """state[key] holds 8-bit codes (uint8, with its block scales beside it)."""
    value = state.get(key)
    return isinstance(value, torch.Tensor) and value.dtype == CODE_DTYPE and scale_key(key) in state


def _value_clip_only(group: dict, device: torch.device, dtype: torch.dtype) -> GradTransform:
    """The transform of a step without GradScaler and max_grad_norm: clip_grad_value's alone."""
    value = group.get("clip_grad_value")
    return NO_GRAD_TRANSFORM if value is None else GradTransform(clip_value=value)


def _check_grads_writable(prepared: List[Prepared]) -> None:
    """GradScaler's unscaled grads are written back into p.grad (as torch's fused optimizers
    do), so a grad whose elements share memory (an expanded view) is refused before any
    kernel runs, as torch's own unscale_ refuses it."""
    for batches in prepared:
        for bucket, batch, _ in batches:
            if bucket._grads_copied and any(overlaps_itself(p.grad) for p in bucket.params if p.grad is not None):
                raise RuntimeError("GradScaler: a grad's elements share memory (an expanded view), so the unscaled "
                                   "grad cannot be written back into it; give each param a grad of its own memory")


def _called_from_torch(frame) -> bool:
    module = frame.f_globals.get("__name__", "") if frame is not None else ""
    return module == "torch" or module.startswith("torch.")


def _same_value(value, default) -> bool:
    return value is default or (type(value) is type(default) and value == default)


def _refuse_duplicates(param_group: dict) -> None:
    """torch.optim only warns about a param listed twice in a group, then updates it twice;
    a fused update cannot write one tensor twice, so refuse it here, naming it."""
    params = param_group["params"]
    if isinstance(params, torch.Tensor) or not isinstance(params, (list, tuple)):
        return  # torch's add_param_group normalises and reports these
    names = param_group.get("param_names")
    seen: Dict[int, int] = {}
    for index, p in enumerate(params):
        if isinstance(p, tuple) and len(p) == 2:  # (name, param) pairs
            name, p = p
        else:
            name = names[index] if names and index < len(names) else None
        first = seen.setdefault(id(p), index)
        if first != index:
            label = f"{name!r}" if name is not None else f"at positions {first} and {index}"
            raise ValueError(f"a parameter group lists the same parameter twice ({label}, shape "
                             f"{tuple(p.shape)}); each parameter may appear once")
