"""The registry: one OptimizerSpec per optimizer kind, from which the rest follows.

An optimizer is described once, in its own module (fusedopt/optim/<module>.py), by a
FusedOptimizer subclass whose `spec` names:

- `kind`, which also names its per-element math (csrc/include/fusedopt/optimizers/<kind>.h,
  picked up by the build with no list to edit), its reference update
  (fusedopt/backends/reference/<kind>.py) and its Triton update
  (fusedopt/backends/triton/<kind>.py);
- `hyperparameters`: the names (and types) of what the kernels read, lr excepted, which
  reach native code by name (UpdateConfig.hyper);
- `state_keys(hyper)`: its state tensors in table order for given options, each starting
  in the param's layout as zeros, or filled with a group value (`initial_values`:
  Adagrad's `sum` starts at `initial_accumulator_value`, Rprop's `step_size` at `lr`);
- whether it keeps a float32 step counter, and whether new state follows a first-step rule;
- `scalar_states`: its per-param scalar states besides the step (ASGD's `eta` and `mu`,
  NAdam's `mu_product`), each a 0-dim float32 tensor beside the param, as torch.optim keeps
  them, starting at a group value (a group key) or a number. Like the step counter they
  are read and written once per tensor per step where its coefficients are computed
  (csrc/include/fusedopt/optimizer.h's kScalarStates), never by the element loops;
- `kernel`: the shape of kernel its step needs. "elementwise" (every optimizer above: the
  math header, the per-element loops, the generic step) or another shape that a backend
  runs through its own method (`Backend.kernels` lists what each backend has; a backend
  without the shape is refused by name and skipped by "auto"). "factored" is Adafactor's:
  row and column reductions and per-tensor RMS values (fusedopt/_factored.py). Such kinds
  have no math header and own their step; `elementwise_kinds()` lists the others.

Registering happens when the class is defined (FusedOptimizer.__init_subclass__); the
optimizer modules are imported by fusedopt.optim, so `spec(kind)` and `registered()` see
every optimizer once fusedopt is imported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Tuple, Type, Union

FLOAT, BOOL = float, bool
ELEMENTWISE = "elementwise"


@dataclass(frozen=True)
class OptimizerSpec:
    kind: str
    hyperparameters: Tuple[Tuple[str, type], ...]  # (name, float or bool): what the math reads, by name
    state_keys: Callable[[Mapping[str, Any]], Tuple[str, ...]]  # hyper -> state tensor names in table order
    step_counter: bool = True  # keeps a float32 state['step'] the kernels advance
    first_step_rule: bool = False  # new state depends on the first grad (SGD's buf = grad)
    # A reduction pass before each update (LAMB): Backend.norms gives two sums per tensor,
    # from which a per-tensor scale (the trust ratio) reaches the update (UpdateConfig.tensor_scale).
    norm_pass: bool = False
    initial_values: Tuple[Tuple[str, str], ...] = ()  # (state key, group key whose value fills it); else zeros
    # The order torch.optim creates the state keys in, where it is not table order: new state
    # enters optimizer.state (and so state_dict()) in this order.
    creation_order: Tuple[str, ...] = ()
    # (key, group key or number it starts at): per-param float32 scalars, in table order
    scalar_states: Tuple[Tuple[str, Union[str, float]], ...] = ()
    kernel: str = ELEMENTWISE  # the kernel shape its step needs (see the module docstring)
    # The hyper-parameters that multiply a state tensor every step (state <- decay * state + ...):
    # with bf16 states a decay too close to 1 stalls its state (it stops coming down), which
    # fusedopt/optim/_checks.py's warn_bf16_state_decays says when the group is added.
    state_decays: Tuple[str, ...] = ()
    # The betas a bias correction 1 - beta**t divides by: below 1 at every step (step_hyper),
    # not only when the group is added.
    bias_corrected: Tuple[str, ...] = ()

    def scalar_state_keys(self) -> Tuple[str, ...]:
        return tuple(key for key, _ in self.scalar_states)

    def hyper_names(self) -> Tuple[str, ...]:
        return tuple(name for name, _ in self.hyperparameters)

    def coerce(self, values: Mapping[str, Any]) -> Dict[str, Any]:
        """`values` as this spec's hyper dict: exactly its names (a ValueError names what is
        missing or unknown), each a Python float or bool. A string where a number belongs is a
        TypeError, as torch's arithmetic on it is: float() would read "0.1" as 0.1."""
        names = self.hyper_names()
        if set(values) != set(names):
            missing = [n for n in names if n not in values]
            unknown = [n for n in values if n not in names]
            raise ValueError(f"{self.kind}: hyper-parameters must be exactly {', '.join(names)}"
                             f"{'; missing ' + ', '.join(missing) if missing else ''}"
                             f"{'; unknown ' + ', '.join(unknown) if unknown else ''}")
        for name, kind in self.hyperparameters:
            if kind is FLOAT and isinstance(values[name], (str, bytes)):
                raise TypeError(f"{self.kind}: hyper-parameter {name} must be a number, got {values[name]!r}")
        return {name: kind(_plain(values[name])) for name, kind in self.hyperparameters}


def _plain(value):
    return value.item() if hasattr(value, "item") else value


_SPECS: Dict[str, OptimizerSpec] = {}
_CLASSES: Dict[str, Type] = {}


def register(spec: OptimizerSpec, optimizer_class: Type) -> None:
    known = _SPECS.get(spec.kind)
    if known is not None and known != spec:
        raise ValueError(f"optimizer kind {spec.kind!r} is registered twice with different specs")
    _SPECS[spec.kind] = spec
    _CLASSES.setdefault(spec.kind, optimizer_class)  # the first class of a kind (Adam, not AdamW)


def spec(kind: str) -> OptimizerSpec:
    try:
        return _SPECS[kind]
    except KeyError:
        raise ValueError(f"unknown optimizer kind {kind!r}; expected one of {', '.join(_SPECS)}") from None


def registered() -> Dict[str, OptimizerSpec]:
    """Every registered kind and its spec, in registration order."""
    return dict(_SPECS)


def elementwise_kinds() -> Dict[str, OptimizerSpec]:
    """The registered kinds whose step is the element-wise kernel (each has a math header in
    csrc/include/fusedopt/optimizers/), in registration order."""
    return {kind: s for kind, s in _SPECS.items() if s.kernel == ELEMENTWISE}
