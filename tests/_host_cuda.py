"""Helpers of tests/test_cuda_host.py: fusedopt._cuda_host (the CUDA kernels of csrc/cuda
compiled as host C++) as a backend, tensors placed between guard bytes, and bit-for-bit
comparison.

The backend calls the CUDA entry points exactly as fusedopt/backends/native.py's
CUDABackend does (each kind's bound hyper-parameters, built by name, and the same common
arguments from the same validated address table), on CPU tensors,
with the device index choosing the emulated GPU: 0 accepts 32 KB kernel parameter blocks,
1 only the classic 4 KB (csrc/cuda_host/devices.h).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import pytest
import torch

import fusedopt.backends
from fusedopt._sparse_rows import kernel_dtype_problem
from fusedopt.backends.base import Backend, TensorBatch, UpdateConfig
from fusedopt.backends.native import (
    DTYPE_CODES, NativeKinds, _kernel_readable, _reduction_table, common_arguments,
    cuda_sparse_adam_arguments, factored_arguments, int8_arguments, per_tensor_arguments, reduction_partials,
    rounding_arguments, state_arguments,
)

if os.environ.get("FUSEDOPT_CUDA_HOST", "") not in ("", "0"):
    from fusedopt import _cuda_host as host  # asked for: a missing module is an error, not a skip
else:
    host = pytest.importorskip(
        "fusedopt._cuda_host",
        reason="fusedopt._cuda_host is not built (editable and in-place builds build it; FUSEDOPT_CUDA_HOST=1 forces it)",
    )

LARGE_BLOCKS_DEVICE, CLASSIC_BLOCKS_DEVICE = 0, 1
HOST_KINDS = NativeKinds(host)  # each kind's class of fusedopt._cuda_host, checked against its spec
HOST_BACKENDS = {"cuda_host": LARGE_BLOCKS_DEVICE, "cuda_host_classic": CLASSIC_BLOCKS_DEVICE}


class HostCUDABackend(Backend):
    """The CUDA ops of fusedopt._cuda_host on CPU tensors, as emulated device `device`."""

    kernels = ("elementwise", "factored", "int8_states")

    def __init__(self, name: str, device: int):
        self.name = name
        self.device = device

    def unusable_reason(self, device: torch.device) -> Optional[str]:
        return None if device.type == "cpu" else f"{self.name} runs the CUDA kernels on CPU tensors"

    def update(self, kind: str, batch: TensorBatch, config: UpdateConfig) -> None:
        # As CUDABackend.update: a workspace for the prologue kernel's coefficient records
        # (host memory here, fresh each call so a stale record cannot hide), the build's chunk size.
        workspace = _workspace(len(batch))
        HOST_KINDS.for_batch(kind, batch, config).cuda_update(*common_arguments(batch, config), workspace.data_ptr(),
                                                          workspace.numel(), 0, self.device, 0,
                                                          **per_tensor_arguments(batch, config), **state_arguments(config),
                                                          **rounding_arguments(config), **int8_arguments(batch, config))

    def norms(self, kind: str, batch: TensorBatch, config: UpdateConfig) -> torch.Tensor:
        # As CUDABackend.norms, with buffers filled with NaN: a value the kernels do not write shows.
        workspace = _workspace(len(batch))
        out = torch.full((len(batch), 2), float("nan"), dtype=torch.float64)
        partials = torch.full((max(2 * reduction_partials(batch.params), 1),), float("nan"), dtype=torch.float64)
        clip = per_tensor_arguments(batch, config)["tensor_clip"]
        HOST_KINDS.for_batch(kind, batch, config).cuda_norms(
            *common_arguments(batch, config), workspace.data_ptr(), workspace.numel(), partials.data_ptr(),
            partials.numel(), out.data_ptr(), self.device, 0, clip, **state_arguments(config),
            **int8_arguments(batch, config))
        return out

    def sum_of_squares_per_tensor(self, tensors: List[torch.Tensor]) -> torch.Tensor:
        # As CUDABackend's (clip_grad_norm_per_tensor's sums): the CUDA reduction kernel.
        if not _kernel_readable(tensors, "cpu"):
            return super().sum_of_squares_per_tensor(tensors)
        out = torch.empty(len(tensors), dtype=torch.float64)
        partials = torch.empty(max(reduction_partials(tensors), 1), dtype=torch.float64)
        table = _reduction_table(tensors)
        host.cuda_sum_of_squares_per_tensor(table.buffer_info()[0], len(tensors), DTYPE_CODES[tensors[0].dtype],
                                            partials.data_ptr(), partials.numel(), out.data_ptr(), self.device, 0)
        return out

    def sparse_rows_unsupported(self, dtype: torch.dtype) -> Optional[str]:
        return kernel_dtype_problem(dtype)

    def sparse_adam_update(self, batch, hyper, lr) -> None:
        # As CUDABackend.sparse_adam_update: the same checked arguments, then the workspace,
        # filled with a pattern each call (0xa5 bytes: NaN coefficients, wild addresses), so a
        # record the prologue failed to write cannot pass for a stale good one.
        arguments = cuda_sparse_adam_arguments(HOST_KINDS, batch, hyper, lr)
        workspace = torch.full((host.cuda_sparse_adam_workspace_bytes(len(batch)),), 0xA5, dtype=torch.uint8)
        host.cuda_sparse_adam(*arguments, workspace.data_ptr(), workspace.numel(), self.device, 0)

    def update_factored(self, kind: str, batch, config) -> None:
        # As CUDABackend.update_factored: the same checked arguments, the workspace the native
        # size function asks for, filled with 0xff bytes each call (NaN in every float64 partial,
        # wild addresses in the records), so a value a kernel failed to write cannot pass for a
        # stale good one.
        assert kind == "adafactor"
        size = host.cuda_adafactor_workspace_bytes(batch.table_address(), len(batch))
        workspace = torch.full((max(size, 1),), 0xFF, dtype=torch.uint8)
        host.cuda_adafactor(*factored_arguments(batch, config), workspace.data_ptr(), size, self.device, 0)
        self.factored_workspace_bytes = size

    def sum_of_squares(self, grads: List[torch.Tensor]) -> torch.Tensor:
        # The clip coefficient must be the CPU backend's, so that only the update differs.
        return fusedopt.backends.get("cpu").sum_of_squares(grads)


def _workspace(tensors: int) -> torch.Tensor:
    return torch.empty((tensors + 1) * host.build_info()["cuda_workspace_bytes_per_tensor"], dtype=torch.uint8)


def register_host_backends(monkeypatch) -> None:
    """Makes backend="cuda_host" / "cuda_host_classic" valid for this test only."""
    monkeypatch.setattr(fusedopt.backends, "BACKEND_NAMES", fusedopt.backends.BACKEND_NAMES + tuple(HOST_BACKENDS))
    for name, device in HOST_BACKENDS.items():
        fusedopt.backends.register(HostCUDABackend(name, device))


# --------------------------------------------------------------------------- guard bytes
GUARD_BYTES = 64


class Guarded:
    """Tensors that live in the middle of bigger buffers whose other bytes hold a known
    pattern; check() asserts that no kernel wrote any of them.

    place(t, shift) returns a copy of t starting `shift` elements past a 64-byte boundary
    (shift 1: no 8- or 16-byte vector access is possible), with GUARD_BYTES guard bytes
    before the alignment padding and after the data.
    """

    def __init__(self):
        self._buffers: List[Tuple[torch.Tensor, int, int, torch.Tensor, torch.Tensor]] = []

    def place(self, t: torch.Tensor, shift: int = 0) -> torch.Tensor:
        size = t.element_size()
        start = GUARD_BYTES // size + shift
        buffer = torch.empty(start + t.numel() + GUARD_BYTES // size, dtype=t.dtype)
        assert buffer.data_ptr() % 64 == 0, "torch's CPU allocator aligns to 64 bytes"
        raw = buffer.view(torch.uint8)
        begin, end = start * size, (start + t.numel()) * size
        head, tail = _pattern(begin, len(self._buffers)), _pattern(raw.numel() - end, len(self._buffers) + 1)
        raw[:begin] = head
        raw[end:] = tail
        view = buffer[start:start + t.numel()].view(t.shape)
        view.copy_(t)
        self._buffers.append((raw, begin, end, head, tail))
        return view

    def check(self) -> None:
        for index, (raw, begin, end, head, tail) in enumerate(self._buffers):
            for name, part, expected in (("before", slice(0, begin), head), ("after", slice(end, None), tail)):
                changed = (raw[part] != expected).nonzero()
                assert changed.numel() == 0, (
                    f"buffer {index}: {changed.numel()} guard bytes {name} the tensor were written "
                    f"(first at byte {int(changed[0]) + (part.start or 0)} of {raw.numel()})")

    def __len__(self) -> int:
        return len(self._buffers)


def _pattern(count: int, seed: int) -> torch.Tensor:
    """Bytes no kernel writes by chance: no run of equal bytes, different per buffer."""
    return ((torch.arange(count, dtype=torch.int32) * 37 + 11 + seed) % 251).to(torch.uint8)


# Which of a tensor's lists sit one element past an aligned address: all, none, or one kind.
ALIGNMENTS = ("aligned", "all_shifted", "param_shifted", "grad_shifted", "state_shifted")


def shifts(alignment: str) -> Dict[str, int]:
    return {kind: int(alignment == "all_shifted" or alignment == f"{kind}_shifted")
            for kind in ("param", "grad", "state")}


def guard_new_state(optimizer: torch.optim.Optimizer, guarded: Guarded, alignment_of: Dict[int, str]) -> None:
    """Every state tensor the optimizer creates (step counters, moments, master copies)
    is moved between guard bytes, at the alignment alignment_of[id(param)] gives, before
    any kernel sees it."""
    make_init = optimizer._init_state

    def init_state(group, dtype, hyper):
        init = make_init(group, dtype, hyper)

        def guarded_init(p, state):
            before = set(state)
            init(p, state)
            shift = shifts(alignment_of[id(p)])["state"]
            for key in [k for k in state if k not in before]:
                state[key] = guarded.place(state[key], shift)

        return guarded_init

    optimizer._init_state = init_state


# --------------------------------------------------------------------------- comparisons
_INT_TYPES = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Identical bit patterns (a NaN matches any NaN: the GPU's conversions give the
    canonical NaN, the CPU kernels' keep the payload)."""
    assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), (
        f"{what}: {actual.dtype} {tuple(actual.shape)} vs {expected.dtype} {tuple(expected.shape)}")
    a, e = actual.detach().contiguous(), expected.detach().contiguous()
    int_type = _INT_TYPES[a.element_size()]
    differs = (a.view(int_type) != e.view(int_type)) & ~(a.isnan() & e.isnan())
    if bool(differs.any()):
        first = tuple(int(i) for i in differs.nonzero()[0])
        raise AssertionError(f"{what}: {int(differs.sum())} of {a.numel()} elements differ, the first at {first}: "
                             f"{a[first].item()!r} vs {e[first].item()!r} expected")
