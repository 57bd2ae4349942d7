"""What a backend receives: the configs of the three optimizers and one batch of tensors.

The configs mirror the C++ structs in csrc/include/fusedopt/{adam,sgd,rmsprop}.h field for
field; every backend reads the same fields, so the math has one set of inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch


@dataclass(frozen=True)
class GradTransform:
    """What happens to every gradient before the optimizer's math (mirrors struct
    GradTransform in csrc/include/fusedopt/common.h). Each is None or a one-element float32
    tensor on the params' device, read by the kernel itself, so no step waits on the host:

    grad_scale: torch.amp.GradScaler's scale; grads are divided by it.
    found_inf:  nonzero skips the whole step (params, state and step counters unchanged).
    clip_coef:  max_grad_norm's clip coefficient; grads are multiplied by it.

    With a scale or a clip coefficient every backend also writes the grad it used
    (`grad / grad_scale * clip_coef`, before maximize and weight decay) back into the grad,
    so p.grad after `scaler.step(optimizer)` is what torch leaves there: torch's fused
    optimizers store grad / scale, and `scaler.unscale_` + `clip_grad_norm_` leave the
    grads unscaled and clipped. A skipped step writes nothing (torch's fused optimizers
    return before touching the grads).
    """

    grad_scale: Optional[torch.Tensor] = None
    found_inf: Optional[torch.Tensor] = None
    clip_coef: Optional[torch.Tensor] = None

    def check(self, device: torch.device) -> None:
        """Kernels read each through a raw pointer as one float32 beside the params: refuse
        anything else before a launch (the optimizers pass such tensors; the torch.library
        op passes what it is given)."""
        for name in ("grad_scale", "found_inf", "clip_coef"):
            t = getattr(self, name)
            if t is not None and (t.dtype != torch.float32 or t.numel() != 1 or t.device != device):
                raise RuntimeError(f"{name} must be a one-element float32 tensor on {device}, "
                                   f"got {tuple(t.shape)} {t.dtype} on {t.device}")

    def addresses(self, device: torch.device) -> Tuple[int, int, int]:
        """The three addresses for native code (0 for none), checked."""
        self.check(device)
        return tuple(0 if t is None else t.data_ptr() for t in (self.grad_scale, self.found_inf, self.clip_coef))

    def writes_grad(self) -> bool:
        """Whether the step stores the transformed grad back (see the class docstring)."""
        return self.grad_scale is not None

    def skips_step(self) -> bool:
        """Host-side check, for backends that may synchronise (the reference)."""
        return self.found_inf is not None and bool(self.found_inf.item() != 0)


NO_GRAD_TRANSFORM = GradTransform()

# LR_TENSOR. A learning rate given as a tensor (torch accepts one; schedulers then write it
# in place) reaches the backends that read it from memory (`Backend.reads_lr_tensor`) as
# the configs' `lr_tensor`: a 0-dim float64 tensor on the params' device, read by the
# kernel, so a step captured in a CUDA graph follows the tensor's value at each replay and
# nothing waits on the host. `lr` is then NaN. Other backends get `lr` as a float.


@dataclass(frozen=True)
class AdamConfig:
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    amsgrad: bool
    maximize: bool
    decoupled_weight_decay: bool  # AdamW
    optimized_update: bool  # eps added to sqrt(v) before bias correction (Kingma & Ba, sec. 2)
    master_weights: bool = False  # 16-bit params: update the fp32 master (last state) and round into the param
    lr_tensor: Optional[torch.Tensor] = None  # see LR_TENSOR
    grad_transform: GradTransform = NO_GRAD_TRANSFORM


@dataclass(frozen=True)
class SGDConfig:
    lr: float
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool
    maximize: bool
    first_step: bool  # momentum buffers are new: they start as a copy of the gradient
    master_weights: bool = False  # 16-bit params: update the fp32 master (last state) and round into the param
    lr_tensor: Optional[torch.Tensor] = None  # see LR_TENSOR
    grad_transform: GradTransform = NO_GRAD_TRANSFORM


@dataclass(frozen=True)
class RMSpropConfig:
    lr: float
    alpha: float
    eps: float
    weight_decay: float
    momentum: float
    centered: bool
    maximize: bool
    master_weights: bool = False  # 16-bit params: update the fp32 master (last state) and round into the param
    lr_tensor: Optional[torch.Tensor] = None  # see LR_TENSOR
    grad_transform: GradTransform = NO_GRAD_TRANSFORM


class TensorBatch:
    """The tensors one backend call updates: params with grads of one device and dtype.

    `states[k]` lists the k-th state tensor of every param in the optimizer's order
    (Adam: exp_avg, exp_avg_sq[, max_exp_avg_sq]; SGD: [momentum_buffer]; RMSprop:
    square_avg[, grad_avg][, momentum_buffer]). `steps` are the float32 step counters
    (None for SGD); a backend increments each exactly once per call.

    `table` is the int64 address table of csrc/include/fusedopt/tensor_table.h (rows:
    numel, param, grad, step, states...), already validated; `table_version` changes
    whenever any address in it changes, so backends may cache what they derive from it.
    """

    __slots__ = ("params", "grads", "steps", "states", "device", "dtype", "table", "table_version")

    def __init__(
        self,
        params: List[torch.Tensor],
        grads: List[torch.Tensor],
        steps: Optional[List[torch.Tensor]],
        states: Sequence[List[torch.Tensor]],
        device: torch.device,
        dtype: torch.dtype,
        table,
        table_version: int,
    ):
        self.params = params
        self.grads = grads
        self.steps = steps
        self.states = states
        self.device = device
        self.dtype = dtype
        self.table = table  # array.array('q'), rows * len(params)
        self.table_version = table_version

    def __len__(self) -> int:
        return len(self.params)

    def table_address(self) -> int:
        return self.table.buffer_info()[0]


class Backend:
    """One way of running the updates. Subclasses register themselves in backends/__init__."""

    name: str = ""
    dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    reads_lr_tensor: bool = False  # takes the configs' lr_tensor (see LR_TENSOR)

    def unusable_reason(self, device: torch.device) -> Optional[str]:
        """None when this backend can update tensors on `device`, else why not and how to fix it."""
        raise NotImplementedError

    def adam(self, batch: TensorBatch, config: AdamConfig) -> None:
        raise NotImplementedError

    def sgd(self, batch: TensorBatch, config: SGDConfig) -> None:
        raise NotImplementedError

    def rmsprop(self, batch: TensorBatch, config: RMSpropConfig) -> None:
        raise NotImplementedError

    def sum_of_squares(self, grads: List[torch.Tensor]) -> torch.Tensor:
        """Sum of the squares of every element of these dense real tensors of one dtype and
        device, as a float64 0-dim tensor on that device (no host sync). The eager step and
        the torch.compile op (fusedopt::sum_of_squares) both call this, so they clip alike.
        torch's multi-tensor norm serves every backend without its own."""
        # float32 norms even for 16-bit grads, so every backend's clip coefficient agrees
        # with the CPU kernel's (which accumulates in double) to float32 rounding; float64
        # grads keep their precision (a float64 norm cannot narrow to float32).
        precision = torch.float64 if grads[0].dtype == torch.float64 else torch.float32
        norms = torch._foreach_norm(grads, 2.0, dtype=precision)
        return torch.stack(norms).double().square().sum()
