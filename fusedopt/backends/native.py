"""Backends that call the compiled kernels of fusedopt._C: `cpu` (C++/OpenMP) and `cuda`.

Python has validated every address in the batch's table (fusedopt/_buckets.py); these
classes only pass the table and the scalars across, and for CUDA the workspace its
kernels write their coefficients into and the chunk size.

Every optimizer kind is one class of the native module, `<module>.optimizers.<kind>`,
generated from its math header (csrc/include/fusedopt/optimizers/<kind>.h): built from the
hyper-parameters **by name** (a missing or unknown name is a ValueError, a bool given for a
float a TypeError), with `cpu_update(...)` and `cuda_update(...)` taking the options every
kind shares in one fixed signature (`common_arguments`).
"""
from __future__ import annotations

import array
import functools
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .._layout import DTYPE_CODES, FIRST_STATE_ROW, SparseRowBatch, TensorBatch, UpdateConfig
from .._memory import storage_problem
from .._native import build_info, load_error, native
from .base import Backend


def common_arguments(batch: TensorBatch, config: UpdateConfig) -> tuple:
    """(table, count, dtype code, lr, lr_tensor address, first_step, master_weights,
    grad_scale, found_inf, clip_coef addresses, clip_value (0: none)): the arguments
    `cpu_update` and `cuda_update` of every kind start with, all checked."""
    transform = config.grad_transform
    return (batch.table_address(), len(batch), DTYPE_CODES[batch.dtype], config.lr,
            _lr_tensor_address(config.lr_tensor, batch.device), config.first_step, config.master_weights,
            *transform.addresses(batch.device), transform.clip_value or 0.0)


def _lr_tensor_address(lr_tensor: Optional[torch.Tensor], device: torch.device) -> int:
    """The kernels read a config's lr_tensor as one float64 on the params' device."""
    if lr_tensor is None:
        return 0
    if lr_tensor.dtype != torch.float64 or lr_tensor.numel() != 1 or lr_tensor.device != device:
        raise RuntimeError(f"lr_tensor must be a one-element float64 tensor on {device}, "
                           f"got {tuple(lr_tensor.shape)} {lr_tensor.dtype} on {lr_tensor.device}")
    return lr_tensor.data_ptr()


class NativeKinds:
    """The optimizer classes of one native module (fusedopt._C, or the tests'
    fusedopt._cuda_host): `hyper(kind, values)` is the bound hyper-parameter object of
    `kind` for these values. Building one takes a few microseconds, about what a cache key
    that tells 0.0 from -0.0 and False would cost, so each call builds its own."""

    def __init__(self, module: Any):
        self._module = module
        self._checked: Dict[str, Any] = {}

    def hyper(self, kind: str, values: Mapping[str, Any]) -> Any:
        cls = self._checked.get(kind) or self._check(kind)
        return cls(values if type(values) is dict else dict(values))

    def for_batch(self, kind: str, batch: TensorBatch, config: UpdateConfig) -> Any:
        """hyper(kind, config.hyper), after checking that the batch's table has exactly the
        state rows the native kind reads for these options (plus the master copy and its scalar
        states): the kernels
        index rows by that count, so a spec whose state keys disagreed with its header would
        read addresses past the table."""
        hyper = self.hyper(kind, config.hyper)
        rows = len(batch.table) // len(batch) - FIRST_STATE_ROW if len(batch) else 0
        expected = hyper.states() + bool(config.master_weights) + type(hyper).scalar_states
        if len(batch) and rows != expected:
            raise RuntimeError(f"optimizer {kind!r}: the batch carries {rows} state rows but the native kernels "
                               f"read {expected} for these options; its spec's state_keys and "
                               f"csrc/include/fusedopt/optimizers/{kind}.h disagree")
        return hyper

    def _check(self, kind: str) -> Any:
        """The native class of `kind`, once its hyper-parameter names are checked against
        the Python spec's (fusedopt/optim/_spec.py): a header and a spec that disagree would
        bind values to the wrong math."""
        from ..optim._spec import spec  # the optimizers register their specs; imported late

        described = self._module.hyperparameters()
        expected = spec(kind).hyper_names()
        if kind not in described:
            raise RuntimeError(f"optimizer kind {kind!r} has a Python spec (hyper-parameters {', '.join(expected)}) "
                               f"but no native class in {self._module.__name__}, which has "
                               f"{', '.join(described)}; add csrc/include/fusedopt/optimizers/{kind}.h and rebuild")
        names = tuple(name for name, _ in described[kind])
        if names != tuple(expected):
            raise RuntimeError(f"optimizer {kind!r}: the native hyper-parameters ({', '.join(names)}; "
                               f"csrc/include/fusedopt/optimizers/{kind}.h) differ from the Python spec's "
                               f"({', '.join(expected)}; fusedopt.optim); make them the same names in the same "
                               "order, and rebuild")
        cls = getattr(self._module.optimizers, kind)
        self._checked[kind] = cls
        return cls


@functools.lru_cache(maxsize=None)
def _native_kinds() -> NativeKinds:
    return NativeKinds(native)


class CPUBackend(Backend):
    name = "cpu"
    reads_lr_tensor = True

    def unusable_reason(self, device: torch.device) -> Optional[str]:
        if device.type != "cpu":
            return f"backend 'cpu' runs on CPU tensors, and these are on {device}"
        if load_error:
            return f"fusedopt._C could not be loaded ({load_error}); reinstall fusedopt with `pip install .`"
        return None

    def update(self, kind: str, batch: TensorBatch, config: UpdateConfig) -> None:
        _native_kinds().for_batch(kind, batch, config).cpu_update(*common_arguments(batch, config),
                                                             torch.get_num_threads())

    def sparse_rows_unsupported(self, dtype: torch.dtype) -> Optional[str]:
        if dtype not in (torch.float32, torch.float64):
            return "its lazy (sparse-row) Adam kernel updates float32 and float64 params"
        if not hasattr(native, "cpu_sparse_adam"):
            return "fusedopt._C was built without the sparse-row kernel; rebuild it (`pip install .`)"
        return None

    def sparse_adam_update(self, batch: SparseRowBatch, hyper: Mapping[str, Any], lr: float) -> None:
        native.cpu_sparse_adam(_native_kinds().hyper("adam", hyper), batch.table_address(), len(batch),
                               DTYPE_CODES[batch.dtype], float(lr), torch.get_num_threads())

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

    def update(self, kind: str, batch: TensorBatch, config: UpdateConfig) -> None:
        index = _device_index(batch.device)
        stream = torch.cuda.current_stream(index).cuda_stream
        workspace = self._workspace(index, stream, len(batch))
        _native_kinds().for_batch(kind, batch, config).cuda_update(
            *common_arguments(batch, config), workspace.data_ptr(), workspace.numel(), self.chunk_bytes or 0,
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


@functools.lru_cache(maxsize=None)
def _workspace_bytes_per_tensor() -> int:
    return int(build_info()["cuda_workspace_bytes_per_tensor"])


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()
