"""fusedopt's steps as a torch.library op, so torch.compile sees them as real ops.

`fusedopt::update_` mutates the params, step counters and state tensors it is given, and
the grads when it unscales them (all declared, so functionalisation and CUDA-graph trees
know), and returns nothing; its fake kernel does nothing. `fusedopt::update_reading_grads_`
is the same step without a grad_scale, declared to read the grads only: grads declared
mutated that alias one another (views of one flat buffer, as DDP's gradient_as_bucket_view
gives) failed inductor's functionalisation pass, so a compiled step raised on them. Under torch.compile, FusedOptimizer.step calls `compiled_step` where it serves
(`compiled_step_serves`), which dynamo traces: plain list and dict work, lazy state
creation, then one op call per group and dtype; the other steps run eagerly, outside the
graph (`run_outside_the_graph`). The op validates its tensors exactly as the eager path
does (fusedopt/_buckets.py) and runs the same backend op.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .. import backends
from .._buckets import kernel_view, split_into_buckets
from .._layout import LOW_PRECISION, GradTransform, check_clip_norm_per_tensor
from .._quantize import is_int8
from ..clip import clip_coefficient, global_norm
from . import _spec
from ._checks import check_low_precision_fits
from ._lazy import is_lazy
from ._plan import (bf16_states, bucket_state_keys, return_copied_grads, run_update, split_fresh,
                    step_hyper, stochastic_round)


def _update(
    kind: str,
    params: List[torch.Tensor],
    grads: List[torch.Tensor],
    steps: List[torch.Tensor],
    states: List[torch.Tensor],
    state_keys: str,
    field_names: str,
    field_values: List[float],
    first_step: bool,
    master_weights: bool,
    grad_scale: Optional[torch.Tensor],
    found_inf: Optional[torch.Tensor],
    clip_coef: Optional[torch.Tensor],
    backend: str,
    clip_value: Optional[float] = None,
    clip_norm_per_tensor: Optional[float] = None,
    bf16_states: bool = False,
    bf16_stochastic_round: bool = False,
    lr_tensor: Optional[torch.Tensor] = None,
) -> None:
    """One optimizer step over `params` (all with grads). `states` holds one row of
    len(params) tensors per name in the comma-separated `state_keys` (the kind's state
    tensors, the master copy, then its scalar states such as ASGD's eta), flattened; `steps`
    holds a float32 step counter per param for Adam and RMSprop and is empty for SGD.
    `field_names` (comma-separated) names `field_values`: `lr` and the kind's hyper-parameters
    (its OptimizerSpec's), in any order. clip_value: clip_grad_value's bound (None: no clamp),
    applied after the grad_scale and clip_coef (GradTransform). clip_norm_per_tensor:
    clip_grad_norm_per_tensor's bound (None: off), per bucket as the eager step (run_update).
    bf16_states: the state tensors (not the master copy) are bfloat16
    (state_dtype=torch.bfloat16). bf16_stochastic_round: bf16 params (without master weights)
    are rounded stochastically, a seed drawn per bucket (run_update). lr_tensor: the lr as a
    one-element tensor (compiled_step passes a group's tensor lr, or a float lr made a tensor),
    read when the op runs (the `lr` field is then not read), so a compiled step follows a
    scheduler without recompiling. With grad_scale the grads
    are written back (GradTransform). Every argument is checked here, before
    any kernel runs: a malformed call raises ValueError (its shape: kind, counts, names) or
    RuntimeError (a tensor that cannot serve), never reaches native code."""
    spec, keys, hyper, lr = _checked_arguments(kind, params, grads, steps, states, state_keys, field_names, field_values,
                                      master_weights, backend)
    if lr_tensor is not None:
        if lr_tensor.numel() != 1 or lr_tensor.is_complex():
            raise ValueError(f"fusedopt::update_: lr_tensor must hold one real number, got dtype "
                             f"{lr_tensor.dtype} and shape {tuple(lr_tensor.shape)}")
        # An integer tensor lr is a number as the eager step reads it (learning_rate).
        lr = lr_tensor if lr_tensor.is_floating_point() else lr_tensor.to(torch.float64)
    scalar_keys = spec.scalar_state_keys()
    tensor_keys = keys[:len(keys) - len(scalar_keys)]
    n = len(params)
    grad_of = {id(p): g for p, g in zip(params, grads)}
    views: Dict[torch.Tensor, dict] = {}
    for i, p in enumerate(params):
        views[p] = {key: states[row * n + i] for row, key in enumerate(keys)}
        if steps:
            views[p]["step"] = steps[i]
    transform = GradTransform(grad_scale, found_inf, clip_coef, clip_value)
    prepared = []
    for bucket in split_into_buckets(params, f"fusedopt::{kind}", strict=True):  # all checked before any runs
        check_low_precision_fits({"state_dtype": torch.bfloat16 if bf16_states else None,
                                  "bf16_stochastic_round": bf16_stochastic_round}, bucket.dtype)
        fitted = transform.for_dtype(bucket.dtype)  # the coefficient in this bucket's math type
        fitted.check(bucket.device, bucket.dtype)
        check_clip_norm_per_tensor(clip_norm_per_tensor)
        batch, _ = bucket.batch(
            views, tensor_keys, bool(steps), _no_initialisation,
            torch.bfloat16 if bf16_states else torch.float32 if master_weights else None,
            [grad_of[id(p)] for p in bucket.params], scalar_keys,
        )
        prepared.append((bucket, batch, fitted))
    for bucket, batch, fitted in prepared:
        fresh = list(range(len(batch))) if first_step else []
        run_update(spec, backends.resolve(backend, bucket.device), batch, fresh, hyper, lr, master_weights, fitted,
                   clip_norm_per_tensor, bf16_states, stochastic=bf16_stochastic_round)
        if fitted.writes_grad():
            return_copied_grads([grad_of[id(p)] for p in bucket.params], batch.grads)


def _checked_arguments(kind, params, grads, steps, states, state_keys, field_names, field_values, master_weights,
                       backend) -> Tuple[_spec.OptimizerSpec, Tuple[str, ...], dict, float]:
    """(spec, state keys, hyper-parameters, lr) of a call, after checking that the arguments fit together.
    Native code trusts the table these become: a missing step counter or state row would
    be read as a null or stray pointer."""
    where = "fusedopt::update_"
    specs = _spec.elementwise_kinds()  # the op runs the element-wise kernel (Adafactor's is another shape)
    if kind not in specs:
        raise ValueError(f"{where}: unknown kind {kind!r}; expected one of {', '.join(specs)}")
    spec = specs[kind]
    backends.check_name(backend)
    n = len(params)
    if len(grads) != n:
        raise ValueError(f"{where}: {len(grads)} grads for {n} params")
    names = field_names.split(",") if field_names else []
    expected_names = ("lr", *spec.hyper_names())
    if len(names) != len(set(names)) or set(names) != set(expected_names):
        raise ValueError(f"{where}: field_names must name each of {','.join(expected_names)} once "
                         f"for {kind}, got {field_names!r}")
    if len(field_values) != len(names):
        raise ValueError(f"{where}: {len(field_values)} field_values for {len(names)} field_names")
    values = dict(zip(names, field_values))
    lr = values.pop("lr")
    hyper = spec.coerce(values)
    if master_weights and any(p.dtype not in LOW_PRECISION for p in params):
        raise ValueError(f"{where}: master_weights applies to float16 and bfloat16 params only")
    expected_keys = (*bucket_state_keys(spec, hyper, master_weights), *spec.scalar_state_keys())
    keys = tuple(state_keys.split(",")) if state_keys else ()
    if keys != expected_keys:
        raise ValueError(f"{where}: state_keys must be {','.join(expected_keys)!r} for {kind} with these options, "
                         f"got {state_keys!r}")
    if len(states) != len(keys) * n:
        raise ValueError(f"{where}: {len(states)} states for {len(keys)} state keys x {n} params")
    if spec.step_counter and len(steps) != n:
        raise ValueError(f"{where}: {kind} needs a step counter per param, got {len(steps)} for {n} params")
    if not spec.step_counter and steps:
        raise ValueError(f"{where}: {kind} keeps no step counter, so steps must be empty (got {len(steps)})")
    return spec, keys, hyper, lr


@torch.library.custom_op("fusedopt::sum_of_squares", mutates_args=())
def sum_of_squares(grads: List[torch.Tensor], backend: str) -> torch.Tensor:
    """Backend.sum_of_squares of one bucket's grads, as the eager step computes it."""
    return backends.resolve(backend, grads[0].device).sum_of_squares(grads)


@sum_of_squares.register_fake
def _(grads, backend) -> torch.Tensor:
    return grads[0].new_empty((), dtype=torch.float64)


update_ = torch.library.custom_op("fusedopt::update_", _update, mutates_args=("params", "grads", "steps", "states"))
_UPDATE_SIGNATURE = inspect.signature(_update)


@functools.wraps(_update)  # the same signature, so the same schema
def _update_reading_grads(*args, **kwargs) -> None:
    if _UPDATE_SIGNATURE.bind(*args, **kwargs).arguments.get("grad_scale") is not None:
        raise ValueError("fusedopt::update_reading_grads_: a grad_scale writes the unscaled grads back, which this op "
                         "does not declare; call fusedopt::update_")
    _update(*args, **kwargs)


update_reading_grads_ = torch.library.custom_op("fusedopt::update_reading_grads_", _update_reading_grads,
                                                mutates_args=("params", "steps", "states"))


@update_.register_fake
@update_reading_grads_.register_fake
def _(kind, params, grads, steps, states, state_keys, field_names, field_values, first_step, master_weights,
      grad_scale, found_inf, clip_coef, backend, clip_value=None, clip_norm_per_tensor=None,
      bf16_states=False, bf16_stochastic_round=False, lr_tensor=None) -> None:
    return None


def _no_initialisation(param: torch.Tensor, state: dict) -> None:
    raise RuntimeError("fusedopt::update_: every state tensor must be passed in")


def compiled_step_serves(optimizer) -> bool:
    """Whether compiled_step can take this step inside a compiled region. Not for 8-bit states
    (the op carries no block scales), lazy groups and sparse grads (other kernels, or torch's
    own update for SGD's and Adagrad's), nor under GradScaler with a CPU found_inf for an
    optimizer whose new state takes the first grad (the eager step skips before creating SGD's
    buffer, so the next step starts it as buf = grad; the op's kernels would skip with a zero
    buffer already made). Those steps run eagerly, outside the graph (run_outside_the_graph)."""
    found_inf = getattr(optimizer, "found_inf", None)
    if optimizer.spec.first_step_rule and found_inf is not None and found_inf.device.type == "cpu":
        return False
    for group in optimizer.param_groups:
        if is_int8(group.get("state_dtype")) or is_lazy(group):
            return False
        if any(p.grad is not None and p.grad.layout != torch.strided for p in group["params"]):
            return False
    return True


@torch.compiler.disable
def run_outside_the_graph(step: Callable[[Optional[Callable[[], Any]]], Any], closure: Optional[Callable[[], Any]]):
    """`step(closure)` run eagerly where dynamo would trace it: a graph break, so that a
    compiled region containing optimizer.step() takes the steps compiled_step does not serve
    (compiled_step_serves) and Adafactor's factored one, instead of tracing their Python
    checks (weak references, raw addresses) into guards that fail on the next step."""
    with torch.no_grad():
        return step(closure)


def compiled_step(optimizer) -> None:
    """FusedOptimizer.step's traceable form (see the module docstring)."""
    grad_scale = getattr(optimizer, "grad_scale", None)
    found_inf = getattr(optimizer, "found_inf", None)
    groups = [(g, [p for p in g["params"] if p.grad is not None]) for g in optimizer.param_groups]
    norm = None
    if any(g.get("max_grad_norm") is not None for g, _ in groups):
        # The eager step's norm (FusedOptimizer._grad_norm), bit for bit: one sum of squares
        # per bucket, buckets in first-appearance order of (device, dtype) in each group.
        sums = []
        for group, params in groups:
            for bucket in _buckets_in_order(group["params"]):
                grads = [kernel_view(p.grad) for p in bucket if p.grad is not None]
                if grads:
                    sums.append(torch.ops.fusedopt.sum_of_squares(grads, group["backend"]))
        norm = global_norm(sums, grad_scale)
    hypers = [step_hyper(optimizer, group) for group, _ in groups]  # every group's checked before any update
    for (group, params), hyper in zip(groups, hypers):
        if not params:
            continue
        names = ["lr", *hyper]
        # The lr goes in as a tensor, a float one made here on the params' device: as a float
        # field it would be a constant of the graph, recompiled for at every scheduler step
        # until dynamo's recompile limit sends every fusedopt step back to eager. (A float lr
        # then becomes a graph input after one recompile, as for torch.optim.)
        lr = group["lr"]
        lr_tensor = lr if isinstance(lr, torch.Tensor) else torch.tensor(float(lr), dtype=torch.float64,
                                                                         device=params[0].device)
        values = [0.0, *map(float, hyper.values())]
        coef = None
        if group.get("max_grad_norm") is not None:
            coef = clip_coefficient(group["max_grad_norm"], norm)  # float64: for_dtype rounds it per bucket
        for dtype in {p.dtype for p in params}:
            selected = [p for p in params if p.dtype == dtype]
            master = optimizer._uses_master(group, dtype)
            keys = [*optimizer._bucket_state_keys(group, dtype, hyper), *optimizer.spec.scalar_state_keys()]
            init = optimizer._init_state(group, dtype, hyper)
            fresh, seasoned = split_fresh(selected, optimizer.state, keys, optimizer.spec.step_counter, init)
            if not optimizer.spec.first_step_rule:
                fresh, seasoned = [], selected
            # State created just now takes SGD's first-step rule; the op applies one rule per call.
            for subset, is_fresh in ((fresh, True), (seasoned, False)):
                if subset:
                    _call(optimizer, group, subset, keys, names, values, is_fresh, master, grad_scale, found_inf, coef,
                          lr_tensor)


def _buckets_in_order(params) -> List[List[torch.Tensor]]:
    buckets: Dict[tuple, List[torch.Tensor]] = {}
    for p in params:
        buckets.setdefault((p.device, p.dtype), []).append(p)
    return list(buckets.values())


def _call(optimizer, group, params: Sequence[torch.Tensor], keys, names, values, fresh, master, grad_scale,
          found_inf, coef, lr_tensor) -> None:
    state = optimizer.state
    op = torch.ops.fusedopt.update_reading_grads_ if grad_scale is None else torch.ops.fusedopt.update_
    op(
        optimizer.kind, list(params), [p.grad for p in params],
        [state[p]["step"] for p in params] if optimizer.spec.step_counter else [],
        [state[p][key] for key in keys for p in params], ",".join(keys), ",".join(names), values,
        fresh, master, grad_scale, found_inf, coef, group["backend"], group.get("clip_grad_value"),
        group.get("clip_grad_norm_per_tensor"), bf16_states(group), stochastic_round(group), lr_tensor,
    )
