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
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from .._code_lookup import CODE_BYTES, MANTISSA_BITS, MIN_EXPONENT, native_tables
from .._layout import DTYPE_CODES, FIRST_STATE_ROW, SparseRowBatch, TensorBatch, UpdateConfig
from .._sparse_rows import kernel_dtype_problem
from .._memory import storage_problem
from .._quantize import BLOCK_SIZE
from .._native import build_info, load_error, native
from .base import Backend


def common_arguments(batch: TensorBatch, config: UpdateConfig) -> tuple:
    """(table, count, dtype code, lr, lr_tensor address, first_step, master_weights,
    grad_scale, found_inf, clip_coef addresses, clip_value (0: none)): the arguments
    `cpu_update` and `cuda_update` of every kind start with, all checked."""
    transform = config.grad_transform
    return (batch.table_address(), len(batch), DTYPE_CODES[batch.dtype], config.lr,
            _lr_tensor_address(config.lr_tensor, batch.device), config.first_step, config.master_weights,
            *transform.addresses(batch.device, batch.dtype), transform.clip_value or 0.0)


def state_arguments(config: UpdateConfig) -> dict:
    """The keyword arguments `cpu_update` and `cuda_update` take after the common ones:
    the states' storage (bf16_states, float32_states; issue 13)."""
    stored = {"bf16_states": config.bf16_states, "float32_states": config.float32_states}
    return {name: True for name, chosen in stored.items() if chosen}


def int8_arguments(batch: TensorBatch, config: UpdateConfig) -> dict:
    """The keyword arguments `cpu_update` and `cpu_norms` take for 8-bit states: the address of
    the code tables on the batch's device (fusedopt/_code_lookup.py) and a mask of the state rows
    that use the signed code. The absmax rows follow the scalar-state rows (fusedopt/_layout.py),
    which the table built for this batch has already checked."""
    if not config.int8_states:
        return {}
    if batch.dtype not in (torch.float32, torch.float16, torch.bfloat16) or config.bf16_states:
        raise RuntimeError("8-bit states are for float32 math (float32 or 16-bit params, float32 states)")
    if len(batch.scales) != len(config.int8_signed):
        raise RuntimeError(f"8-bit states: {len(batch.scales)} absmax rows for {len(config.int8_signed)} states")
    return {"int8_tables": native_tables(batch.device).data_ptr(),
            "int8_signed": sum(1 << k for k, signed in enumerate(config.int8_signed) if signed)}


def int8_layout_problem(module: Any) -> Optional[str]:
    """Why `module`'s kernels cannot read 8-bit states as Python lays them out (None: they can)."""
    layout = getattr(module, "int8_layout", None)
    if layout is None:
        return f"this build of {module.__name__} predates its 8-bit state kernels; rebuild it"
    expected = (BLOCK_SIZE, CODE_BYTES, MIN_EXPONENT, MANTISSA_BITS)
    if tuple(layout) != expected:
        return (f"{module.__name__} reads 8-bit states laid out as (block, code bytes, bucket exponent, mantissa bits) "
                f"= {tuple(layout)}, Python writes {expected}; rebuild it")
    return None


def rounding_arguments(config: UpdateConfig) -> dict:
    """The keyword argument `cpu_update` and `cuda_update` take for bf16_stochastic_round: the
    call's seed (a nonzero 64-bit value; none: round to nearest even)."""
    seed = config.round_seed
    if not seed:
        return {}
    if not isinstance(seed, int) or not 0 < seed < 2**64:
        raise RuntimeError(f"round_seed must be an int in (0, 2**64), got {seed!r}")
    return {"round_seed": seed}


def per_tensor_arguments(batch: TensorBatch, config: UpdateConfig) -> Dict[str, int]:
    """The addresses of the per-tensor arrays (0: none), checked: clip_grad_norm_per_tensor's
    coefficients in the math type (GradTransform.tensor_clip) and a tensor scale (LAMB's float64 trust
    ratio, UpdateConfig.tensor_scale), each one value per tensor of the batch, on its device."""
    config.grad_transform.check_for(batch.device, batch.dtype, len(batch))
    clip, scale = config.grad_transform.tensor_clip, config.tensor_scale
    if scale is not None and (scale.dtype != torch.float64 or scale.dim() != 1 or scale.numel() != len(batch)
                              or scale.device != batch.device or not scale.is_contiguous()):
        raise RuntimeError(f"tensor_scale must be a contiguous float64 tensor of {len(batch)} values on "
                           f"{batch.device}, got {tuple(scale.shape)} {scale.dtype} on {scale.device}")
    return dict(tensor_clip=0 if clip is None else clip.data_ptr(), tensor_scale=0 if scale is None else scale.data_ptr())


def _lr_tensor_address(lr_tensor: Optional[torch.Tensor], device: torch.device) -> int:
    """The kernels read a config's lr_tensor as one float64 on the params' device."""
    if lr_tensor is None:
        return 0
    if lr_tensor.dtype != torch.float64 or lr_tensor.numel() != 1 or lr_tensor.device != device:
        raise RuntimeError(f"lr_tensor must be a one-element float64 tensor on {device}, "
                           f"got {tuple(lr_tensor.shape)} {lr_tensor.dtype} on {lr_tensor.device}")
    return lr_tensor.data_ptr()


def cuda_sparse_adam_arguments(kinds: "NativeKinds", batch: SparseRowBatch, hyper: Mapping[str, Any],
                               lr: Union[float, torch.Tensor]) -> tuple:
    """(hyper, table, count, dtype code, lr, lr_tensor address) for `cuda_sparse_adam` of the
    module `kinds` wraps, checked: a float32 or float64 batch (its table built and checked
    by fusedopt/_sparse_rows.py), lr a number or a one-element float64 tensor on the batch's
    device, which the kernel reads there (no host sync)."""
    problem = kernel_dtype_problem(batch.dtype)
    if problem:
        raise RuntimeError(f"the CUDA sparse-row kernel cannot run: {problem}, not {batch.dtype}")
    lr_address = _lr_tensor_address(lr, batch.device) if isinstance(lr, torch.Tensor) else 0
    return (kinds.hyper("adam", hyper), batch.table_address(), len(batch), DTYPE_CODES[batch.dtype],
            0.0 if lr_address else float(lr), lr_address)


def factored_arguments(batch, config) -> tuple:
    """(table, count, dtype code, lr, lr_tensor address, beta2_decay, eps1, eps2, d,
    weight_decay, maximize): what `cpu_adafactor` and `cuda_adafactor` start with, for a
    FactoredBatch (its table built and checked by fusedopt/_factored.py) and a FactoredConfig;
    lr_tensor a one-element float64 tensor on the batch's device, checked here."""
    return (batch.table_address(), len(batch), DTYPE_CODES[batch.dtype], config.lr,
            _lr_tensor_address(config.lr_tensor, batch.device), config.beta2_decay, config.eps1, config.eps2, config.d,
            config.weight_decay, config.maximize)


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
        state rows the native kind reads for these options (plus the master copy, its scalar
        states and, with 8-bit states, their absmax rows): the kernels
        index rows by that count, so a spec whose state keys disagreed with its header would
        read addresses past the table."""
        hyper = self.hyper(kind, config.hyper)
        rows = len(batch.table) // len(batch) - FIRST_STATE_ROW if len(batch) else 0
        expected = hyper.states() + bool(config.master_weights) + type(hyper).scalar_states
        if config.int8_states:  # one absmax row per state (fusedopt/_layout.py)
            expected += hyper.states()
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
    kernels = ("elementwise", "factored", "int8_states")

    def kernel_missing_reason(self, kernel: str) -> Optional[str]:
        reason = super().kernel_missing_reason(kernel)
        if reason is None and kernel == "factored" and not load_error and not hasattr(native, "cpu_adafactor"):
            return "this build of fusedopt._C predates its factored (Adafactor) kernels; rebuild it"
        if reason is None and kernel == "int8_states" and not load_error:
            return int8_layout_problem(native)
        return reason

    def update_factored(self, kind: str, batch, config) -> None:
        """Adafactor: every pass over the bucket in one native call (csrc/cpu/factored_cpu.cpp)."""
        if kind != "adafactor":
            raise ValueError(f"backend 'cpu' has no factored kernels for {kind!r}")
        native.cpu_adafactor(*factored_arguments(batch, config), torch.get_num_threads())

    def unusable_reason(self, device: torch.device) -> Optional[str]:
        if device.type != "cpu":
            return f"backend 'cpu' runs on CPU tensors, and these are on {device}"
        if load_error:
            return f"fusedopt._C could not be loaded ({load_error}); reinstall fusedopt with `pip install .`"
        return None

    def update(self, kind: str, batch: TensorBatch, config: UpdateConfig) -> None:
        self.check_state_storage(config, batch.dtype)
        _native_kinds().for_batch(kind, batch, config).cpu_update(*common_arguments(batch, config),
                                                             torch.get_num_threads(),
                                                             **per_tensor_arguments(batch, config), **state_arguments(config),
                                                             **rounding_arguments(config), **int8_arguments(batch, config))

    def sparse_rows_unsupported(self, dtype: torch.dtype) -> Optional[str]:
        problem = kernel_dtype_problem(dtype)
        if problem:
            return problem
        if not hasattr(native, "cpu_sparse_adam"):
            return "fusedopt._C was built without the sparse-row kernel; rebuild it (`pip install .`)"
        return None

    def sparse_adam_update(self, batch: SparseRowBatch, hyper: Mapping[str, Any], lr: float) -> None:
        native.cpu_sparse_adam(_native_kinds().hyper("adam", hyper), batch.table_address(), len(batch),
                               DTYPE_CODES[batch.dtype], float(lr), torch.get_num_threads())

    def norms(self, kind: str, batch: TensorBatch, config: UpdateConfig) -> torch.Tensor:
        self.check_state_storage(config, batch.dtype)
        out = torch.empty(len(batch), 2, dtype=torch.float64)
        clip = per_tensor_arguments(batch, config)["tensor_clip"]
        _native_kinds().for_batch(kind, batch, config).cpu_norms(*common_arguments(batch, config),
                                                            torch.get_num_threads(), clip, out.data_ptr(),
                                                            **state_arguments(config), **int8_arguments(batch, config))
        return out

    def update_with_norm_pass(self, kind: str, batch: TensorBatch, config: UpdateConfig) -> None:
        """Both passes and the trust ratio in one native call that takes the tensors a group at
        a time (csrc/cpu/norm_then_update.h): the update then reads from cache what the norm
        pass has just read. The same bits as Backend's norms, trust_ratio, update."""
        native_hyper = _native_kinds().for_batch(kind, batch, config) if len(batch) else None
        if native_hyper is None or not hasattr(native_hyper, "cpu_norms_then_update"):  # nothing to do, or an older build
            return super().update_with_norm_pass(kind, batch, config)
        self.check_state_storage(config, batch.dtype)
        if config.tensor_scale is not None:
            raise RuntimeError("update_with_norm_pass computes the tensor scale itself; the config already has one")
        native_hyper.cpu_norms_then_update(
            *common_arguments(batch, config), torch.get_num_threads(), len(batch.table) // len(batch),
            per_tensor_arguments(batch, config)["tensor_clip"], **state_arguments(config),
            **rounding_arguments(config), **int8_arguments(batch, config))

    def sum_of_squares_per_tensor(self, tensors: List[torch.Tensor]) -> torch.Tensor:
        """The native kernel (fusedopt/reduce.h's order, double accumulation) where every tensor
        is a contiguous block inside its storage; torch's otherwise."""
        # Also the body of the public op fusedopt::sum_of_squares, which gets any list: every
        # fact the kernel relies on (CPU, one supported dtype, dense, inside its storage) is
        # checked here; anything else goes to torch.
        if not _kernel_readable(tensors, "cpu"):
            return super().sum_of_squares_per_tensor(tensors)
        out = torch.empty(len(tensors), dtype=torch.float64)
        table = _reduction_table(tensors)
        native.cpu_sum_of_squares_per_tensor(table.buffer_info()[0], len(tensors), DTYPE_CODES[tensors[0].dtype],
                                             torch.get_num_threads(), out.data_ptr())
        return out


def _kernel_readable(tensors: List[torch.Tensor], device_type: str) -> bool:
    """Whether the reduction kernels may read these tensors through raw addresses: a non-empty
    list of dense, contiguous tensors of one supported dtype on one device of `device_type`,
    each inside its storage."""
    if not tensors:
        return False
    dtype, device = tensors[0].dtype, tensors[0].device
    return dtype in DTYPE_CODES and device.type == device_type and all(
        t.device == device and t.dtype == dtype and t.layout == torch.strided and t.is_contiguous()
        and storage_problem(t) is None for t in tensors)


def _reduction_table(tensors: List[torch.Tensor]) -> array.array:
    """The (numel, address) table the reduction kernels read (csrc/cpu/kernels.h)."""
    return array.array("q", [t.numel() for t in tensors] + [t.data_ptr() for t in tensors])


def reduction_partials(tensors: List[torch.Tensor]) -> int:
    """Float64 block partials the CUDA reduction needs (fusedopt/reduce.h: 65,536 elements a block)."""
    return sum((t.numel() + SUM_BLOCK - 1) // SUM_BLOCK for t in tensors)


SUM_BLOCK = 65536  # kSumBlock of csrc/include/fusedopt/reduce.h


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
    kernels = ("elementwise", "factored", "int8_states")

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

    def kernel_missing_reason(self, kernel: str) -> Optional[str]:
        reason = super().kernel_missing_reason(kernel)
        if (reason is None and kernel == "factored" and not load_error and build_info().get("cuda")
                and not hasattr(native, "cuda_adafactor")):
            return "this build of fusedopt._C predates its CUDA factored (Adafactor) kernels; rebuild it"
        if reason is None and kernel == "int8_states" and not load_error:
            return int8_layout_problem(native)
        return reason

    def update_factored(self, kind: str, batch, config) -> None:
        """Adafactor: the step counters, then passes A, tensor, B, scale and C over the whole
        bucket (csrc/cuda/factored.cu), on the current stream, no host sync; the workspace (its
        size depends on the tensors' shapes: cuda_adafactor_workspace_bytes) is the stream's."""
        if kind != "adafactor":
            raise ValueError(f"backend 'cuda' has no factored kernels for {kind!r}")
        if batch.device.type != "cuda":
            raise RuntimeError(f"backend 'cuda' runs on CUDA tensors, and this batch is on {batch.device}")
        index = _device_index(batch.device)
        stream = torch.cuda.current_stream(index).cuda_stream
        table, count = batch.table_address(), len(batch)
        workspace = self._workspace(index, stream, native.cuda_adafactor_workspace_bytes(table, count))
        native.cuda_adafactor(*factored_arguments(batch, config), workspace.data_ptr(), workspace.numel(), index, stream)

    def update(self, kind: str, batch: TensorBatch, config: UpdateConfig) -> None:
        self.check_state_storage(config, batch.dtype)
        index = _device_index(batch.device)
        stream = torch.cuda.current_stream(index).cuda_stream
        workspace = self._workspace(index, stream, _records_bytes(len(batch)))
        _native_kinds().for_batch(kind, batch, config).cuda_update(
            *common_arguments(batch, config), workspace.data_ptr(), workspace.numel(), self.chunk_bytes or 0,
            index, stream, **per_tensor_arguments(batch, config), **state_arguments(config),
            **rounding_arguments(config), **int8_arguments(batch, config))

    def norms(self, kind: str, batch: TensorBatch, config: UpdateConfig) -> torch.Tensor:
        """The kind's norm pass (csrc/cuda/norms.cuh: a prologue, the block sums, their per-tensor
        sums; the CPU kernel's bits) on the current stream, no sync. Its coefficient records go to
        the stream's workspace, which the update after it then reuses."""
        self.check_state_storage(config, batch.dtype)
        index = _device_index(batch.device)
        stream = torch.cuda.current_stream(index).cuda_stream
        workspace = self._workspace(index, stream, _records_bytes(len(batch)))
        out = torch.empty(len(batch), 2, dtype=torch.float64, device=batch.device)
        partials = torch.empty(max(2 * reduction_partials(batch.params), 1), dtype=torch.float64, device=batch.device)
        clip = per_tensor_arguments(batch, config)["tensor_clip"]
        _native_kinds().for_batch(kind, batch, config).cuda_norms(
            *common_arguments(batch, config), workspace.data_ptr(), workspace.numel(), partials.data_ptr(),
            partials.numel(), out.data_ptr(), index, stream, clip, **state_arguments(config),
            **int8_arguments(batch, config))
        return out

    def sparse_rows_unsupported(self, dtype: torch.dtype) -> Optional[str]:
        problem = kernel_dtype_problem(dtype)
        if problem:
            return problem
        if load_error or not hasattr(native, "cuda_sparse_adam"):
            return "fusedopt._C was built without the CUDA sparse-row kernel; rebuild it (`pip install .`)"
        return None

    def sparse_adam_update(self, batch: SparseRowBatch, hyper: Mapping[str, Any],
                           lr: Union[float, torch.Tensor]) -> None:
        """Every step counter, then every present row of the batch: two launches on the current
        stream (csrc/cuda/sparse_adam.cu), no host sync; lr a number or a one-element float64
        tensor on the batch's device."""
        if batch.device.type != "cuda":
            raise RuntimeError(f"backend 'cuda' runs on CUDA tensors, and this batch is on {batch.device}")
        arguments = cuda_sparse_adam_arguments(_native_kinds(), batch, hyper, lr)
        index = _device_index(batch.device)
        stream = torch.cuda.current_stream(index).cuda_stream
        workspace = self._workspace(index, stream, native.cuda_sparse_adam_workspace_bytes(len(batch)))
        native.cuda_sparse_adam(*arguments, workspace.data_ptr(), workspace.numel(), index, stream)

    def sum_of_squares_per_tensor(self, tensors: List[torch.Tensor]) -> torch.Tensor:
        """The CUDA kernel (the CPU kernel's order and bits) on the current stream, no sync."""
        if not _kernel_readable(tensors, "cuda"):
            return super().sum_of_squares_per_tensor(tensors)
        device = tensors[0].device
        index = _device_index(device)
        stream = torch.cuda.current_stream(index).cuda_stream
        out = torch.empty(len(tensors), dtype=torch.float64, device=device)
        partials = torch.empty(max(reduction_partials(tensors), 1), dtype=torch.float64, device=device)
        table = _reduction_table(tensors)
        native.cuda_sum_of_squares_per_tensor(table.buffer_info()[0], len(tensors), DTYPE_CODES[tensors[0].dtype],
                                              partials.data_ptr(), partials.numel(), out.data_ptr(), index, stream)
        return out

    def _workspace(self, index: int, stream: int, needed: int) -> torch.Tensor:
        """`needed` bytes (at least) of device memory for the coefficient records of a call on
        `stream` (used by the calls on that stream one after another, so one buffer per stream
        serves them all: the dense updates' and the sparse-row kernel's)."""
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


def _records_bytes(tensors: int) -> int:
    """Workspace bytes the prologue's coefficient records of a call over `tensors` tensors need
    (the update's and the norm pass's: csrc/cuda/multi_tensor_apply.cuh)."""
    return (tensors + 1) * _workspace_bytes_per_tensor()


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()
