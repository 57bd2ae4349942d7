"""Hyper-parameter checks with torch.optim's exact conditions, messages and ValueError."""
from __future__ import annotations

import os
import sys
import warnings
from typing import Mapping, Optional

import torch

from .._buckets import DTensor
from .._quantize import is_int8


def scalar(value) -> float:
    """A hyper-parameter given as a number or a one-element tensor, as a Python float (a
    string is a TypeError, as in torch's arithmetic: float() would read "0.9")."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"a hyper-parameter must be a number or a tensor, got {value!r}")
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def check_lr(lr, *, nan_allowed: bool = False) -> None:
    """nan_allowed: torch.optim.SGD's condition (`lr < 0.0`), which a NaN lr passes."""
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if (lr < 0.0) if nan_allowed else not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


def check_non_negative(value, what: str) -> None:
    if not 0.0 <= value:
        raise ValueError(f"Invalid {what}: {value}")


def check_betas(betas) -> None:
    # By index, as torch.optim checks them: a 1-element tuple is its IndexError.
    for index in (0, 1):
        if not 0.0 <= betas[index] < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {betas[index]}")


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
    # As torch.optim: any truthy value asks for an implementation, but not both at once.
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


WEIGHT_DECAY_MODES = ("decoupled", "absolute")


def check_weight_decay_mode(mode, decoupled: bool = True) -> None:
    """weight_decay_mode: "decoupled" (torch's p *= 1 - lr*wd) or "absolute" (labml's
    p *= 1 - wd, independent of lr). Absolute decay is a form of decoupled decay: where the
    weight decay is L2 (added to the gradient), asking for it is an error, not a no-op."""
    if not isinstance(mode, str) or mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"Invalid weight_decay_mode: {mode!r} (expected one of "
                         f"{', '.join(map(repr, WEIGHT_DECAY_MODES))})")
    if mode == "absolute" and not decoupled:
        raise ValueError("weight_decay_mode='absolute' applies to decoupled weight decay, and this weight decay is "
                         "L2 (added to the gradient); set decoupled_weight_decay=True or use "
                         "weight_decay_mode='decoupled'")


def absolute_weight_decay(group: dict, decoupled: bool = True) -> bool:
    """The group's weight_decay_mode as the kernels' bool hyper-parameter, checked (a group
    edited after construction is checked again at the step)."""
    mode = group["weight_decay_mode"]
    check_weight_decay_mode(mode, decoupled)
    return mode == "absolute"


def check_low_precision_fits(group: Mapping, dtype: torch.dtype, distributed: bool = False) -> None:
    """The group's state_dtype and bf16_stochastic_round against a param dtype: when the group
    is added (each param's) and at every step (each bucket's), as `model.double()` after
    construction changes it. bf16 and 8-bit states hold float32 math's states: not for float64
    (the double-precision kernels would read 2-byte states as doubles, past their end) or
    complex params, nor 8-bit states for DTensor (`distributed`) params; stochastic rounding
    is for bfloat16 params."""
    _check_state_dtype_fits(group.get("state_dtype"), dtype)
    if distributed and is_int8(group.get("state_dtype")):
        _refuse_int8_dtensor()
    _check_rounding_fits(group.get("bf16_stochastic_round"), dtype)


def _refuse_int8_dtensor() -> None:
    raise ValueError("state_dtype='int8' does not support DTensor (FSDP2) params yet: their block scales would not "
                     "be sharded with them; use state_dtype=torch.bfloat16")


def _check_state_dtype_fits(state_dtype, dtype: torch.dtype) -> None:
    if (state_dtype == torch.bfloat16 or is_int8(state_dtype)) and (dtype == torch.float64 or dtype.is_complex):
        shown = "'int8'" if is_int8(state_dtype) else "torch.bfloat16"
        raise ValueError(f"state_dtype={shown} needs float32, float16 or bfloat16 params (their math runs in "
                         f"float32); this group has a {dtype} param")


def _check_rounding_fits(rounding, dtype: torch.dtype) -> None:
    if rounding is True and dtype != torch.bfloat16:
        raise ValueError(f"bf16_stochastic_round=True applies to bfloat16 params only; this group has a {dtype} param")


def check_low_precision_options(group: dict, name: str = "", bf16_refused: Optional[str] = None,
                                int8_refused: Optional[str] = None, rounding_refused: Optional[str] = None,
                                params: bool = True) -> None:
    """state_dtype and bf16_stochastic_round of a param group (issue 13), checked when the group
    is added, and again at each step without the params (`params=False`: what a hand edit of
    the group may have changed; the step checks each bucket's dtype, check_low_precision_fits). state_dtype: None or torch.float32 (the same: today's state dtypes),
    torch.bfloat16 (every state tensor stored in bf16) or "int8" (blockwise dynamic 8-bit
    states, fusedopt/_quantize.py; tensors under 4,096 elements keep full-precision states);
    neither for float64 or complex params, whose math is not float32, and "int8" not for
    FSDP2 (DTensor) params, whose block scales would not be sharded with them.
    bf16_refused / int8_refused: why optimizer `name` cannot keep such states (None: it can).
    bf16_stochastic_round: True rounds bf16 params without a master copy stochastically
    (fusedopt/backends/reference/_rounding.py); only for bfloat16 params, not with
    master_weights; rounding_refused: why optimizer `name` cannot (None: it can)."""
    state_dtype = group.get("state_dtype")
    int8 = is_int8(state_dtype)
    if isinstance(state_dtype, str) and not int8:
        raise ValueError(f"Invalid state_dtype: {state_dtype!r} (None, torch.float32, torch.bfloat16 or 'int8')")
    if not int8 and state_dtype not in (None, torch.float32, torch.bfloat16):
        raise ValueError(f"Invalid state_dtype: {state_dtype!r} (None, torch.float32, torch.bfloat16 or 'int8')")
    if state_dtype == torch.bfloat16 and bf16_refused is not None:
        raise ValueError(f"{name}: state_dtype=torch.bfloat16 is not supported: {bf16_refused}; use state_dtype=None "
                         "(or torch.float32)")
    if int8 and int8_refused is not None:
        others = "None (or torch.float32)" if bf16_refused is not None else "None, torch.float32 or torch.bfloat16"
        raise ValueError(f"{name}: state_dtype='int8' is not supported: {int8_refused}; use state_dtype={others}")
    params = [p for p in group.get("params", ()) if isinstance(p, torch.Tensor)] if params else []
    for p in params:
        _check_state_dtype_fits(state_dtype, p.dtype)
    if int8:
        if any(isinstance(p, DTensor) for p in params):
            _refuse_int8_dtensor()
    rounding = group.get("bf16_stochastic_round", False)
    if not isinstance(rounding, bool):
        raise ValueError(f"Invalid bf16_stochastic_round: {rounding!r} (True or False)")
    if rounding:
        if rounding_refused is not None:
            raise ValueError(f"{name}: bf16_stochastic_round=True is not supported: {rounding_refused}")
        if group.get("master_weights"):
            raise ValueError("bf16_stochastic_round=True rounds bf16 params that have no master copy; "
                             "it cannot be combined with master_weights=True")
        for p in params:
            _check_rounding_fits(rounding, p.dtype)


# bfloat16 keeps 8 significant bits: below a value m * 2**e (1 <= m < 2) the next one lies
# 2**-7 * 2**e away, so decaying it by a factor d rounds back to it when (1 - d) * m < 2**-8.
# Above d = 1 - 2**-8 every decayed bf16 state therefore stalls, within a factor of two of where
# its decay began; above 1 - 2**-9 (Adam's default beta2 = 0.999) it never shrinks at all and
# keeps the largest value it reaches. Decays up to 1 - 2**-8 shrink every value.
BF16_LARGEST_SHRINKING_DECAY = 1 - 2 ** -8


def warn_bf16_state_decays(name: str, decays: Mapping[str, float]) -> None:
    """Warn (UserWarning, at the user's call) when a group with state_dtype=torch.bfloat16 decays a
    state by a factor under which its bf16 values stall; `decays`: the group's decay factors by
    hyper-parameter name (OptimizerSpec.state_decays)."""
    stuck = {key: value for key, value in decays.items() if value > BF16_LARGEST_SHRINKING_DECAY}
    if stuck:
        shown = ", ".join(f"{key}={value}" for key, value in stuck.items())
        warnings.warn(
            f"{name}: with state_dtype=torch.bfloat16, {shown} stalls the state it decays: a bf16 value times "
            f"a factor above {BF16_LARGEST_SHRINKING_DECAY} (1 - 2**-8) rounds back to itself once its mantissa is "
            "small enough, so that state stops coming down within a factor of two, and above 1 - 2**-9 never "
            "comes down (Adam's second moment then keeps its largest value: smaller steps than with float32 "
            "states). Use state_dtype=None or 'int8' for this group, or decays of at most "
            f"{BF16_LARGEST_SHRINKING_DECAY}.", UserWarning, stacklevel=_user_stacklevel())


_INTERNAL_DIRECTORIES = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
                         os.path.dirname(os.path.abspath(torch.optim.__file__)) + os.sep)


def _user_stacklevel() -> int:
    """warnings.warn's stacklevel, for its caller, of the first frame outside fusedopt and
    torch.optim: the user's constructor or add_param_group call, at whatever depth."""
    frame, level = sys._getframe(1), 1  # the caller of warnings.warn: its stacklevel 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL_DIRECTORIES):
        frame, level = frame.f_back, level + 1
    return level
