"""Backends that call the compiled kernels of fusedopt._C: `cpu` (C++/OpenMP) and `cuda`.

Python has validated every address in the batch's table (fusedopt/_buckets.py); these
classes only pass the table and the scalars across.
"""
from __future__ import annotations

import array
from typing import List, Optional

import torch

from .._native import build_info, load_error, native
from .base import AdamConfig, Backend, RMSpropConfig, SGDConfig, TensorBatch

GRAD_ROW = 2  # row of the grad addresses in the table (csrc/include/fusedopt/tensor_table.h)

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
                        c.optimized_update, c.master_weights, *c.grad_transform.addresses(),
                        torch.get_num_threads())

    def sgd(self, batch: TensorBatch, c: SGDConfig) -> None:
        native.cpu_sgd(batch.table_address(), len(batch), DTYPE_CODES[batch.dtype], c.lr, c.momentum,
                       c.dampening, c.weight_decay, c.nesterov, c.maximize, c.first_step, c.master_weights,
                       *c.grad_transform.addresses(), torch.get_num_threads())

    def rmsprop(self, batch: TensorBatch, c: RMSpropConfig) -> None:
        native.cpu_rmsprop(batch.table_address(), len(batch), DTYPE_CODES[batch.dtype], c.lr, c.alpha, c.eps,
                           c.weight_decay, c.momentum, c.centered, c.maximize, c.master_weights,
                           *c.grad_transform.addresses(), torch.get_num_threads())

    def grad_sum_of_squares(self, batch: TensorBatch) -> torch.Tensor:
        n = len(batch)
        numels_and_grads = batch.table[0:n] + batch.table[GRAD_ROW * n:(GRAD_ROW + 1) * n]
        return self._sum_of_squares(numels_and_grads, n, batch.dtype)

    def tensor_sum_of_squares(self, tensors: List[torch.Tensor]) -> torch.Tensor:
        """Sum of squares of dense CPU tensors of one dtype (the caller checked that)."""
        table = array.array("q", [t.numel() for t in tensors] + [t.data_ptr() for t in tensors])
        return self._sum_of_squares(table, len(tensors), tensors[0].dtype)

    def _sum_of_squares(self, table: array.array, n: int, dtype: torch.dtype) -> torch.Tensor:
        total = native.cpu_sum_of_squares(table.buffer_info()[0], n, DTYPE_CODES[dtype], torch.get_num_threads())
        return torch.tensor(total, dtype=torch.float64)


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
                     c.maximize, c.decoupled_weight_decay, c.optimized_update, c.master_weights,
                     *c.grad_transform.addresses())

    def sgd(self, batch: TensorBatch, c: SGDConfig) -> None:
        self._launch(native.cuda_sgd, batch, c.lr, c.momentum, c.dampening, c.weight_decay, c.nesterov,
                     c.maximize, c.first_step, c.master_weights, *c.grad_transform.addresses())

    def rmsprop(self, batch: TensorBatch, c: RMSpropConfig) -> None:
        self._launch(native.cuda_rmsprop, batch, c.lr, c.alpha, c.eps, c.weight_decay, c.momentum, c.centered,
                     c.maximize, c.master_weights, *c.grad_transform.addresses())


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()
