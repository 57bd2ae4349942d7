"""The interface every backend implements; what it receives lives in fusedopt/_layout.py."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, List, Mapping, Optional

import torch

from .._layout import GradTransform, NO_GRAD_TRANSFORM, SparseRowBatch, TensorBatch, UpdateConfig  # noqa: F401  (re-exported)


class Backend:
    """One way of running the updates. Subclasses register themselves in backends/__init__."""

    name: str = ""
    dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    reads_lr_tensor: bool = False  # takes the configs' lr_tensor (see LR_TENSOR)
    # The kernel shapes this backend runs (OptimizerSpec.kernel): "elementwise" through
    # update(); "factored" (Adafactor's row/column reductions) through update_factored().
    kernels = ("elementwise",)

    def kernel_missing_reason(self, kernel: str) -> Optional[str]:
        """None when this backend has kernels of shape `kernel`, else a sentence saying not."""
        if kernel in self.kernels:
            return None
        return (f"backend {self.name!r} has no {kernel} kernels yet (it runs {', '.join(self.kernels)} ones); "
                f"choose backend='auto' or one of the backends that have them")

    def check_state_storage(self, config: UpdateConfig, dtype: torch.dtype) -> None:
        """Refuse a call whose states this backend cannot read before anything runs: 8-bit
        states (config.int8_states) without the "int8_states" kernels, and bf16 or 8-bit states
        for params of `dtype` whose math is not float32 (float64: the kernels would read the
        2-byte or 1-byte states as doubles, past their end). step() never sends one (it
        refuses such groups and resolves 8-bit buckets with that kernel shape); this guards
        every other way in."""
        if (config.bf16_states or config.int8_states) and dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise RuntimeError(f"fusedopt: bf16 or 8-bit states cannot serve {dtype} params")
        if config.int8_states:
            reason = self.kernel_missing_reason("int8_states")
            if reason is not None:
                raise NotImplementedError(reason)

    def unusable_reason(self, device: torch.device) -> Optional[str]:
        """None when this backend can update tensors on `device`, else why not and how to fix it."""
        raise NotImplementedError

    def update(self, kind: str, batch: TensorBatch, config: UpdateConfig) -> None:
        """One step of optimizer `kind` (a registered OptimizerSpec's kind, fusedopt/optim/_spec.py)
        over every tensor of `batch`, in as few launches as the backend can: advance the step
        counters (if the kind keeps them), apply config.grad_transform, update params and states."""
        raise NotImplementedError

    def update_factored(self, kind: str, batch, config) -> None:
        """One step of a "factored" kind (Adafactor) over a FactoredBatch with a
        FactoredConfig (fusedopt/_factored.py), for backends whose `kernels` list the shape."""
        raise NotImplementedError(self.kernel_missing_reason("factored"))

    def norms(self, kind: str, batch: TensorBatch, config: UpdateConfig) -> torch.Tensor:
        """The reduction pass of a kind with OptimizerSpec.norm_pass (LAMB): a float64 tensor
        [len(batch), 2] on the batch's device, per tensor the sums of the kind's two terms
        (LAMB: ||p||^2 and ||u||^2) for the coming update (step counters + 1, the grad
        transformed as `update` will), writing nothing; deterministic, no host sync."""
        raise NotImplementedError(f"backend {self.name!r} has no norm pass for {kind!r}")

    def update_with_norm_pass(self, kind: str, batch: TensorBatch, config: UpdateConfig) -> None:
        """One step of a kind with OptimizerSpec.norm_pass: `norms`, the per-tensor trust ratio
        ||p|| / ||u|| (trust_ratio) as UpdateConfig.tensor_scale, then `update`. A backend may
        interleave the passes (the CPU one does, tensor group by tensor group) if every tensor
        gets the same sums, ratio and update."""
        self.update(kind, batch, dataclasses.replace(config, tensor_scale=trust_ratio(self.norms(kind, batch, config))))

    def sum_of_squares_per_tensor(self, tensors: List[torch.Tensor]) -> torch.Tensor:
        """The sum of the squares of each of these dense real tensors (one dtype, one device),
        as a float64 tensor of shape [len(tensors)] on that device, in one multi-tensor pass
        where the backend has one, without a host sync. Accumulated in float64 (at least
        float32), deterministic: the same bits run to run whatever the thread count. The
        compiled CPU and CUDA kernels share one order (fusedopt/reduce.h) and so one result;
        this default (the reference's) is torch's float64 sum of each tensor's squares."""
        if not tensors:
            return torch.zeros(0, dtype=torch.float64)
        return torch.stack([t.detach().double().square().sum() for t in tensors])

    def sparse_rows_unsupported(self, dtype: torch.dtype) -> Optional[str]:
        """None when this backend runs lazy (sparse-row) Adam on params of `dtype`, else why not."""
        return f"backend {self.name!r} does not implement lazy (sparse-row) Adam"

    def sparse_adam_update(self, batch: SparseRowBatch, hyper: Mapping[str, Any], lr: float) -> None:
        """One lazy Adam step over every tensor of `batch` (fusedopt/_layout.py) in one call:
        advance every step counter, then update the present rows of each param and its
        moments with torch.optim.SparseAdam's arithmetic and Adam's options `hyper` (the adam
        spec's hyper-parameters by name; fusedopt/backends/reference/sparse_adam.py is the
        readable statement)."""
        raise NotImplementedError(self.sparse_rows_unsupported(batch.dtype))

    def sum_of_squares(self, grads: List[torch.Tensor]) -> torch.Tensor:
        """Sum of the squares of every element of these tensors, as a float64 0-dim tensor on
        their device (no host sync): the per-tensor sums, added. The eager step and the
        torch.compile op (fusedopt::sum_of_squares) both call this, so they clip alike."""
        return self.sum_of_squares_per_tensor(grads).sum()


def trust_ratio(norms: torch.Tensor) -> torch.Tensor:
    """LAMB's per-tensor ratio ||p|| / ||u|| from the norm pass's sums of squares (float64
    [n, 2]), on their device; 1 where either norm is 0 or NaN (You et al.; a NaN u then reaches
    the param). Every square root and division correctly rounded, so every backend gets the
    ratio's bits that the CPU kernel computes (csrc/cpu/norm_then_update.h): torch's float64
    sqrt on the CPU is not (about 1 value in 70 is an ulp off), so CPU sums are read back here
    (no device to wait for) and computed with Python's math; CUDA's sqrt and division are."""
    if norms.device.type == "cpu":
        ratios = [_ratio(math.sqrt(a), math.sqrt(b)) for a, b in norms.tolist()]
        return torch.tensor(ratios, dtype=torch.float64)
    param_norm, update_norm = norms[:, 0].sqrt(), norms[:, 1].sqrt()
    usable = (param_norm > 0) & (update_norm > 0)
    return torch.where(usable, param_norm / update_norm, torch.ones_like(param_norm)).contiguous()


def _ratio(param_norm: float, update_norm: float) -> float:
    return param_norm / update_norm if param_norm > 0 and update_norm > 0 else 1.0
