"""Backends that call the compiled kernels of fusedopt._C: `cpu` (C++/OpenMP) and `cuda`.

Python has validated every address in the batch's table (fusedopt/_buckets.py); these
classes only pass the table and the scalars across.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._native import build_info, load_error, native
from .base import AdamConfig, Backend, RMSpropConfig, SGDConfig, TensorBatch

# Must match enum class DType in csrc/include/fusedopt/common.h.
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


class CPUBackend(Backend):
    name = "cpu"

    def unusable_reason(self, device: torch.device) -> Optional[str]:
        if device.type != "cpu":
            return f"backend 'cpu' runs on CPU tensors, and these are on {device}"
        if load_error:
            return f"fusedopt._C could not be loaded ({load_error}); reinstall fusedopt with `pip install .`"
        return None

    def adam(self, batch: TensorBatch, c: AdamConfig) -> None:
        native.cpu_adam(batch.table_address(), len(batch), DTYPE_CODES[batch.dtype], c.lr, c.beta1, c.beta2,
                        c.eps, c.weight_decay, c.amsgrad, c.maximize, c.decoupled_weight_decay,
                        c.optimized_update, torch.get_num_threads())

    def sgd(self, batch: TensorBatch, c: SGDConfig) -> None:
        native.cpu_sgd(batch.table_address(), len(batch), DTYPE_CODES[batch.dtype], c.lr, c.momentum,
                       c.dampening, c.weight_decay, c.nesterov, c.maximize, c.first_step, torch.get_num_threads())

    def rmsprop(self, batch: TensorBatch, c: RMSpropConfig) -> None:
        native.cpu_rmsprop(batch.table_address(), len(batch), DTYPE_CODES[batch.dtype], c.lr, c.alpha, c.eps,
                           c.weight_decay, c.momentum, c.centered, c.maximize, torch.get_num_threads())


class CUDABackend(Backend):
    name = "cuda"

    def unusable_reason(self, device: torch.device) -> Optional[str]:
        if device.type != "cuda":
            return f"backend 'cuda' runs on CUDA tensors, and these are on {device}"
        if load_error:
            return f"fusedopt._C could not be loaded ({load_error}); reinstall fusedopt with `pip install .`"
        if not build_info().get("cuda"):
            return ("fusedopt was built without CUDA kernels (no nvcc at install time, or FUSEDOPT_NO_CUDA=1); "
                    "reinstall with the CUDA toolkit's nvcc on PATH")
        reason = native.cuda_unusable_reason(_device_index(device))
        return reason or None

    def _launch(self, fn, batch: TensorBatch, *scalars) -> None:
        index = _device_index(batch.device)
        stream = torch.cuda.current_stream(index).cuda_stream
        fn(batch.table_address(), len(batch), DTYPE_CODES[batch.dtype], *scalars, index, stream)

    def adam(self, batch: TensorBatch, c: AdamConfig) -> None:
        self._launch(native.cuda_adam, batch, c.lr, c.beta1, c.beta2, c.eps, c.weight_decay, c.amsgrad,
                     c.maximize, c.decoupled_weight_decay, c.optimized_update)

    def sgd(self, batch: TensorBatch, c: SGDConfig) -> None:
        self._launch(native.cuda_sgd, batch, c.lr, c.momentum, c.dampening, c.weight_decay, c.nesterov,
                     c.maximize, c.first_step)

    def rmsprop(self, batch: TensorBatch, c: RMSpropConfig) -> None:
        self._launch(native.cuda_rmsprop, batch, c.lr, c.alpha, c.eps, c.weight_decay, c.momentum, c.centered,
                     c.maximize)


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()
