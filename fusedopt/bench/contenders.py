"""What is timed: torch.optim's implementations of each case's optimizer (where torch has
one of that name) and fusedopt's backends, each row a Contender."""
import inspect
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

import fusedopt

from .workloads import OptimizerCase

OptimizerFactory = Callable[[List[torch.Tensor]], torch.optim.Optimizer]

# torch.optim's three implementations, by the constructor flag that selects each.
TORCH_VARIANTS = {
    "for-loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},  # where torch has it (Adam, AdamW, SGD, Adagrad); probed, not assumed
}
FUSEDOPT_BACKENDS = ("cuda", "triton", "cpu", "reference")


@dataclass(frozen=True)
class Contender:
    label: str  # row label: "torch[fused]", "fusedopt[cpu,optimized_update]"
    kind: str  # "torch" or "fusedopt"
    variant: str  # a TORCH_VARIANTS key, or a fusedopt backend name
    make: OptimizerFactory
    master_weights: bool = False  # fusedopt with fp32 master weights (16-bit params)


def torch_contenders(case: OptimizerCase, variants: Sequence[str]) -> List[Contender]:
    """torch.optim's implementations of ``case`` among ``variants``, leaving out those
    its constructor does not offer (RMSprop has no ``fused``); none where torch.optim has
    no optimizer of that name."""
    optimizer_class = getattr(torch.optim, case.class_name, None)
    if optimizer_class is None:
        return []
    offered = inspect.signature(optimizer_class).parameters
    return [
        Contender(
            label=f"torch[{variant}]",
            kind="torch",
            variant=variant,
            make=_factory(optimizer_class, {**case.hyper, **TORCH_VARIANTS[variant]}),
        )
        for variant in variants
        if all(flag in offered for flag in TORCH_VARIANTS[variant])
    ]


def fusedopt_contenders(case: OptimizerCase, backends: Sequence[str], master_weights: bool = False) -> List[Contender]:
    """Each backend's rows for ``case``; with ``master_weights`` (asked for, on 16-bit params)
    one more row per backend, ``fusedopt[<backend>,master_weights]``."""
    optimizer_class = case.optimizer_class
    contenders = []
    for backend in backends:
        for extra in case.fusedopt_variants:
            label = f"fusedopt[{backend},{extra.suffix}]" if extra.suffix else f"fusedopt[{backend}]"
            kwargs = {**case.hyper, **extra.kwargs, "backend": backend}
            contenders.append(Contender(label, "fusedopt", backend, _factory(optimizer_class, kwargs)))
        if master_weights:
            kwargs = {**case.hyper, "backend": backend, "master_weights": True}
            contenders.append(Contender(f"fusedopt[{backend},master_weights]", "fusedopt", backend,
                                        _factory(optimizer_class, kwargs), master_weights=True))
    return contenders


def fusedopt_backends(device: torch.device) -> List[str]:
    """The fusedopt backends timed on ``device`` unless --backend names others.

    On a CPU, Triton runs only under its interpreter (TRITON_INTERPRET=1), a
    correctness tool far too slow to be worth timing, so it is left out.
    """
    try:
        usable = list(fusedopt.available_backends(device))
    except AttributeError:  # a core without available_backends: ask each backend directly
        usable = [backend for backend in FUSEDOPT_BACKENDS if _constructs(backend, device)]
    if device.type == "cpu":
        usable = [backend for backend in usable if backend != "triton"]
    return usable


def _constructs(backend: str, device: torch.device) -> bool:
    try:
        fusedopt.Adam([_probe_param(device, torch.float32)], backend=backend)
    except RuntimeError:
        return False
    return True


def probe(contender: Contender, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Why ``contender`` cannot step a parameter of this device and dtype, or None if it can."""
    param = _probe_param(device, dtype)
    try:
        contender.make([param]).step()
    except Exception as error:  # reported as a skipped row, with the library's own message
        return f"{type(error).__name__}: {error}"
    return None


def _factory(optimizer_class, kwargs) -> OptimizerFactory:
    return lambda params: optimizer_class(params, **kwargs)


def _probe_param(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    param = torch.zeros(5, device=device, dtype=dtype, requires_grad=True)
    param.grad = torch.ones_like(param)
    return param
