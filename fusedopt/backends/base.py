"""The interface every backend implements; what it receives lives in fusedopt/_layout.py."""
from __future__ import annotations

from typing import Any, List, Mapping, Optional

import torch

from .._layout import GradTransform, NO_GRAD_TRANSFORM, SparseRowBatch, TensorBatch, UpdateConfig  # noqa: F401  (re-exported)


class Backend:
    """One way of running the updates. Subclasses register themselves in backends/__init__."""

    name: str = ""
    dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    reads_lr_tensor: bool = False  # takes the configs' lr_tensor (see LR_TENSOR)

    def unusable_reason(self, device: torch.device) -> Optional[str]:
        """None when this backend can update tensors on `device`, else why not and how to fix it."""
        raise NotImplementedError

    def update(self, kind: str, batch: TensorBatch, config: UpdateConfig) -> None:
        """One step of optimizer `kind` (a registered OptimizerSpec's kind, fusedopt/optim/_spec.py)
        over every tensor of `batch`, in as few launches as the backend can: advance the step
        counters (if the kind keeps them), apply config.grad_transform, update params and states."""
        raise NotImplementedError

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
