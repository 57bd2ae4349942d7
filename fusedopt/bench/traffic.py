"""Bytes an optimizer step must move through memory, per parameter element.

Achieved bandwidth is reported against this minimum: every tensor the update
reads is read once and every tensor it writes is written once. Gradients and
optimizer state have the parameter's dtype (as in torch.optim), so the count
is a number of tensors times the element size. The per-step ``step`` counter
is a single scalar and is not counted.
"""
from dataclasses import dataclass
from typing import Mapping, Tuple

import torch

# Short names used in the printed formulas.
_SYMBOLS = {
    "param": "p",
    "grad": "g",
    "exp_avg": "m",
    "exp_avg_sq": "v",
    "max_exp_avg_sq": "vmax",
    "momentum_buffer": "buf",
    "square_avg": "sq",
    "grad_avg": "gavg",
}
# With master weights (16-bit params): p32 is the fp32 master copy, and the states are fp32.


@dataclass(frozen=True)
class Traffic:
    """The tensors one element's update reads and writes."""

    reads: Tuple[str, ...]
    writes: Tuple[str, ...]

    @property
    def state_tensors(self) -> Tuple[str, ...]:
        """Optimizer state kept per parameter (everything read but p and g)."""
        return tuple(name for name in self.reads if name not in ("param", "grad"))

    def bytes_per_element(self, dtype: torch.dtype, master_weights: bool = False) -> int:
        if master_weights and uses_master(dtype):
            # reads master, g, states; writes master, p, states: p and g in dtype, the rest fp32
            return 2 * _itemsize(dtype) + (2 + 2 * len(self.state_tensors)) * 4
        return (len(self.reads) + len(self.writes)) * _itemsize(dtype)

    def formula(self, dtype: torch.dtype, master_weights: bool = False) -> str:
        """E.g. 'reads p,g,m,v + writes p,m,v = 7 x 4 B = 28 B/elem'."""
        reads = ",".join(_SYMBOLS[name] for name in self.reads)
        writes = ",".join(_SYMBOLS[name] for name in self.writes)
        if master_weights and uses_master(dtype):
            states = ",".join(_SYMBOLS[name] for name in self.state_tensors)
            return (
                f"reads p32,g,{states} + writes p32,p,{states} (master weights: p,g {_itemsize(dtype)} B;"
                f" p32 and states 4 B) = {self.bytes_per_element(dtype, True)} B/elem"
            )
        count = len(self.reads) + len(self.writes)
        return (
            f"reads {reads} + writes {writes} = {count} x {_itemsize(dtype)} B"
            f" = {self.bytes_per_element(dtype)} B/elem"
        )


def uses_master(dtype: torch.dtype) -> bool:
    """Whether master_weights=True gives params of this dtype an fp32 master copy."""
    return dtype in (torch.float16, torch.bfloat16)


def traffic_for(class_name: str, hyper: Mapping) -> Traffic:
    """The memory traffic of one step of ``class_name`` with these hyper-parameters."""
    if class_name in ("Adam", "AdamW"):
        state = ["exp_avg", "exp_avg_sq"]
        if hyper.get("amsgrad", False):
            state.append("max_exp_avg_sq")
    elif class_name == "SGD":
        state = ["momentum_buffer"] if hyper.get("momentum", 0.0) != 0.0 else []
    elif class_name == "RMSprop":
        state = ["square_avg"]
        if hyper.get("centered", False):
            state.append("grad_avg")
        if hyper.get("momentum", 0.0) != 0.0:
            state.append("momentum_buffer")
    else:
        raise ValueError(f"no traffic model for optimizer {class_name!r}")
    return Traffic(reads=("param", "grad", *state), writes=("param", *state))


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
