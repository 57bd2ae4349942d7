"""Hyper-parameter checks with torch.optim's exact conditions, messages and ValueError."""
from __future__ import annotations

import torch


def scalar(value) -> float:
    """A hyper-parameter given as a number or a one-element tensor, as a Python float."""
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def check_lr(lr) -> None:
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


def check_non_negative(value, what: str) -> None:
    if not 0.0 <= value:
        raise ValueError(f"Invalid {what}: {value}")


def check_betas(betas) -> None:
    for index, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {beta}")


def check_adam_hyperparameters(lr, betas, eps, weight_decay) -> None:
    check_lr(lr)
    check_non_negative(eps, "epsilon value")
    check_betas(betas)
    check_non_negative(weight_decay, "weight_decay value")
    if not ((isinstance(betas[0], float) and isinstance(betas[1], float))
            or (isinstance(betas[0], torch.Tensor) and isinstance(betas[1], torch.Tensor))):
        raise ValueError("betas must be either both floats or both Tensors")
    for index, beta in enumerate(betas):
        if isinstance(beta, torch.Tensor) and beta.numel() != 1:
            raise ValueError(f"Tensor betas[{index}] must be 1-element")


def check_torch_flags(foreach, fused, differentiable) -> None:
    """torch.optim's implementation switches, accepted so lines copied from torch code run:
    fusedopt always runs one fused update per bucket, whatever `foreach` and `fused` say.
    A differentiable step (autograd through the update) is something it cannot do."""
    if differentiable:
        raise RuntimeError("fusedopt does not support differentiable=True (autograd through the optimizer "
                           "step); use torch.optim's for-loop implementation for that")
    for name, value in (("foreach", foreach), ("fused", fused)):
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{name} must be None or a bool, got {value!r}")
