"""Backends that call the compiled kernels of fusedopt._C: `cpu` (C++/OpenMP) and `cuda`.

Python has validated every address in the batch's table (fusedopt/_buckets.py); these
classes only pass the table and the scalars across, and for CUDA the workspace its
kernels write their coefficients into and the chunk size.
"""
from __future__ import annotations

import array
import dataclasses
import functools
from typing import Dict, List, Optional, Tuple

import torch

from .._memory import storage_problem
from .._native import build_info, load_error, native
from .base import AdamConfig, Backend, GradTransform, RMSpropConfig, SGDConfig, TensorBatch

# Must match enum class DType in csrc/include/fusedopt/common.h.
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def _native_arguments(batch: TensorBatch, config) -> tuple:
    """(table, count, dtype code, the config's fields in order): the bindings take a
    config's fields in the order backends/base.py declares them, with lr_tensor as its
    address and grad_transform as its three addresses, all checked."""
    fields = [getattr(config, f.name) for f in dataclasses.fields(config)]
    transform = fields.pop()
    lr_tensor = fields.pop()
    assert isinstance(transform, GradTransform)  # the last two fields of every config
    return (batch.table_address(), len(batch), DTYPE_CODES[batch.dtype], *fields,
            _lr_tensor_address(lr_tensor, batch.device), *transform.addresses(batch.device))


def _lr_tensor_address(lr_tensor: Optional[torch.Tensor], device: torch.device) -> int:
    """The kernels read a config's lr_tensor as one float64 on the params' device."""
    if lr_tensor is None:
        return 0
    if lr_tensor.dtype != torch.float64 or lr_tensor.numel() != 1 or lr_tensor.device != device:
        raise RuntimeError(f"lr_tensor must be a one-element float64 tensor on {device}, "
                           f"got {tuple(lr_tensor.shape)} {lr_tensor.dtype} on {lr_tensor.device}")
    return lr_tensor.data_ptr()


class CPUBackend(Backend):
    name = "cpu"
    reads_lr_tensor = True

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
        # Also the body of the public op fusedopt::sum_of_squares, which gets any list: every
        # fact the kernel relies on (CPU, one supported dtype, dense, inside its storage) is
        # checked here; anything else goes to torch.
        dtype = grads[0].dtype
        if dtype not in DTYPE_CODES or not all(
                t.device.type == "cpu" and t.dtype == dtype and t.layout == torch.strided and t.is_contiguous()
                and storage_problem(t) is None for t in grads):
            return super().sum_of_squares(grads)
        table = array.array("q", [t.numel() for t in grads] + [t.data_ptr() for t in grads])
        total = native.cpu_sum_of_squares(table.buffer_info()[0], len(grads), DTYPE_CODES[grads[0].dtype],
                                          torch.get_num_threads())
        return torch.tensor(total, dtype=torch.float64)


class CUDABackend(Backend):
    """The compiled CUDA kernels. Each call hands them a workspace (a few bytes per tensor,
    where a prologue kernel writes the update's coefficients; csrc/cuda/multi_tensor_apply.cuh),
    cached per device and stream and grown when a larger bucket comes, so a step allocates
    nothing once the first has run (allocate outside a CUDA graph by running a step before
    capturing, as torch's own capturable optimizers need too), and the chunk size: bytes of
    each param-dtype list one thread block updates, `chunk_bytes` (None: the build's default,
    build_info()['cuda_default_chunk_bytes']; a multiple of 4,096), which the bench sets to
    compare sizes."""

    name = "cuda"
    reads_lr_tensor = True

    def __init__(self):
        self.chunk_bytes: Optional[int] = None
        self._workspaces: Dict[Tuple[int, int], torch.Tensor] = {}

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
        stream = torch.cuda.current_stream(index).cuda_stream
        workspace = self._workspace(index, stream, len(batch))
        op(*_native_arguments(batch, config), workspace.data_ptr(), workspace.numel(), self.chunk_bytes or 0,
           index, stream)

    def _workspace(self, index: int, stream: int, tensors: int) -> torch.Tensor:
        """Device memory for the coefficient records of a call on `stream` (used by the calls
        on that stream one after another, so one buffer per stream serves them all)."""
        needed = (tensors + 1) * _workspace_bytes_per_tensor()
        workspace = self._workspaces.get((index, stream))
        if workspace is None or workspace.numel() < needed:
            size = max(needed, 2 * workspace.numel()) if workspace is not None else needed
            with torch.cuda.device(index):  # allocated on the stream that uses it
                workspace = torch.empty(size, dtype=torch.uint8, device=torch.device("cuda", index))
            self._workspaces[(index, stream)] = workspace
        return workspace

    def adam(self, batch: TensorBatch, config: AdamConfig) -> None:
        self._launch(native.cuda_adam, batch, config)

    def sgd(self, batch: TensorBatch, config: SGDConfig) -> None:
        self._launch(native.cuda_sgd, batch, config)

    def rmsprop(self, batch: TensorBatch, config: RMSpropConfig) -> None:
        self._launch(native.cuda_rmsprop, batch, config)


@functools.lru_cache(maxsize=None)
def _workspace_bytes_per_tensor() -> int:
    return int(build_info()["cuda_workspace_bytes_per_tensor"])


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()
