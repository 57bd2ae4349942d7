"""The optimizer configurations the benchmark times (one table block each)."""
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple

from .traffic import Traffic, traffic_for

# What `--optimizers` accepts; a family may expand to several cases.
FAMILIES = ("adam", "adamw", "sgd", "rmsprop")


@dataclass(frozen=True)
class FusedoptVariant:
    """A fusedopt-only option timed as its own row, e.g. AdamW's optimized_update."""

    suffix: str  # appended to the row label: fusedopt[cpu,<suffix>]
    kwargs: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerCase:
    key: str  # unique id used in JSON, e.g. "rmsprop-centered"
    family: str  # the `--optimizers` name that selects it
    class_name: str  # the same name in torch.optim and fusedopt
    hyper: Mapping  # hyper-parameters every contender gets
    fusedopt_variants: Tuple[FusedoptVariant, ...] = (FusedoptVariant(""),)

    @property
    def label(self) -> str:
        args = ", ".join(f"{name}={value}" for name, value in self.hyper.items() if name != "lr")
        return f"{self.class_name}({args})"

    @property
    def traffic(self) -> Traffic:
        return traffic_for(self.class_name, self.hyper)


CASES: Tuple[OptimizerCase, ...] = (
    OptimizerCase("adam", "adam", "Adam", {"lr": 1e-3}),
    OptimizerCase(
        "adamw",
        "adamw",
        "AdamW",
        {"lr": 1e-3, "weight_decay": 1e-2},
        fusedopt_variants=(
            FusedoptVariant(""),
            FusedoptVariant("optimized_update", {"optimized_update": True}),
        ),
    ),
    OptimizerCase("sgd", "sgd", "SGD", {"lr": 1e-3, "momentum": 0.9}),
    OptimizerCase("rmsprop", "rmsprop", "RMSprop", {"lr": 1e-2}),
    OptimizerCase(
        "rmsprop-centered", "rmsprop", "RMSprop", {"lr": 1e-2, "centered": True, "momentum": 0.9}
    ),
)

CASES_BY_KEY: Dict[str, OptimizerCase] = {case.key: case for case in CASES}


def cases_for_families(families: Sequence[str]) -> List[OptimizerCase]:
    """The cases selected by `--optimizers`, in the canonical order."""
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown optimizer(s) {sorted(unknown)}; choose from {list(FAMILIES)}")
    return [case for case in CASES if case.family in families]
