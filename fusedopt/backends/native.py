"""Backends that call the compiled kernels of fusedopt._C: `cpu` (C++/OpenMP) and `cuda`.

Python has validated every address in the batch's table (fusedopt/_buckets.py); these
classes only pass the table and the scalars across.
"""
from __future__ import annotations

import array
import dataclasses
from typing import List, Optional

import torch

from .._memory import storage_problem
from .._native import build_info, load_error, native
from .base import AdamConfig, Backend, GradTransform, RMSpropConfig, SGDConfig, TensorBatch

# Must match enum class DType in csrc/include/fusedopt/common.h.
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def _native_arguments(batch: TensorBatch, config) -> tuple:
    """(table, count, dtype code, the config's fields in order): the bindings take a
    config's fields in the order backends/base.py declares them, with grad_transform as
    its three checked addresses."""
    fields = [getattr(config, f.name) for f in dataclasses.fields(config)]
    transform = fields.pop()
    assert isinstance(transform, GradTransform)  # the last field of every config
    return (batch.table_address(), len(batch), DTYPE_CODES[batch.dtype], *fields, *transform.addresses(batch.device))


class CPUBackend(Backend):
    name = "cpu"

    def unusable_reason(self, device: torch.device) -> Optional[str]:
        if device.type != "cpu":
            return f"backend 'cpu' runs on CPU tensors, and these are on {device}"
        if load_error:
            return f"fusedopt._C could not be loaded ({load_error}); reinstall fusedopt with `pip install .`"
        return None

    def adam(self, batch: TensorBatch, config: AdamConfig) -> None:
        native.cpu_adam(*_native_arguments(batch, config), torch.get_num_threads())

    def sgd(self, batch: TensorBatch, config: SGDConfig) -> None:
        native.cpu_sgd(*_native_arguments(batch, config), torch.get_num_threads())

    def rmsprop(self, batch: TensorBatch, config: RMSpropConfig) -> None:
        native.cpu_rmsprop(*_native_arguments(batch, config), torch.get_num_threads())

    def sum_of_squares(self, grads: List[torch.Tensor]) -> torch.Tensor:
        """The native kernel (double accumulation) where every tensor is a contiguous block
        inside its storage (the caller checked dtype and device); torch's otherwise."""
        if not all(t.is_contiguous() and storage_problem(t) is None for t in grads):
            return super().sum_of_squares(grads)
        table = array.array("q", [t.numel() for t in grads] + [t.data_ptr() for t in grads])
        total = native.cpu_sum_of_squares(table.buffer_info()[0], len(grads), DTYPE_CODES[grads[0].dtype],
                                          torch.get_num_threads())
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

    def _launch(self, op, batch: TensorBatch, config) -> None:
        index = _device_index(batch.device)
        op(*_native_arguments(batch, config), index, torch.cuda.current_stream(index).cuda_stream)

    def adam(self, batch: TensorBatch, config: AdamConfig) -> None:
        self._launch(native.cuda_adam, batch, config)

    def sgd(self, batch: TensorBatch, config: SGDConfig) -> None:
        self._launch(native.cuda_sgd, batch, config)

    def rmsprop(self, batch: TensorBatch, config: RMSpropConfig) -> None:
        self._launch(native.cuda_rmsprop, batch, config)


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()
