"""Backend registry and the resolution of backend names, "auto" included.

`auto` (the default; the FUSEDOPT_BACKEND environment variable overrides it) picks per
device: CUDA tensors -> compiled CUDA kernels, else Triton, else the reference; CPU
tensors -> compiled C++ kernels, else the reference. Each fallback warns once, saying
why. A backend asked for by name that cannot run raises RuntimeError saying why.

Every question takes the kernel shape the optimizer needs (OptimizerSpec.kernel, default
"elementwise"): a backend without that shape (Backend.kernels) cannot run it, so naming it
raises and "auto" passes it over (Adafactor's "factored" kernels are on fewer backends).
"""
from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Tuple

import torch

from .base import Backend, TensorBatch, UpdateConfig
from .native import CPUBackend, CUDABackend
from .reference import ReferenceBackend

ELEMENTWISE = "elementwise"  # OptimizerSpec.kernel's default (fusedopt/optim/_spec.py)
BACKEND_NAMES = ("auto", "cuda", "triton", "cpu", "reference")
ENV_VARIABLE = "FUSEDOPT_BACKEND"

_REGISTRY: Dict[str, Backend] = {}


def register(backend: Backend) -> None:
    _REGISTRY[backend.name] = backend


register(ReferenceBackend())
register(CPUBackend())
register(CUDABackend())
_triton_import_error: Optional[str] = None


def _load_triton() -> None:
    """Import the Triton backend on first use: Triton is optional, costs a noticeable
    import time, and reads TRITON_INTERPRET when its kernels are defined."""
    global _triton_import_error
    if "triton" in _REGISTRY or _triton_import_error is not None:
        return
    try:
        from .triton import TritonBackend
    except ImportError as error:
        _triton_import_error = str(error)
        return
    register(TritonBackend())


def get(name: str) -> Backend:
    if name == "triton":
        _load_triton()
        if name not in _REGISTRY:
            raise RuntimeError(f"backend 'triton' is unavailable: {_triton_import_error}; `pip install triton`")
    return _REGISTRY[name]


def check_name(name: object) -> str:
    if not isinstance(name, str) or name not in BACKEND_NAMES:
        raise ValueError(f"Invalid backend: {name!r}; expected one of {', '.join(BACKEND_NAMES)}")
    return name


def _environment_choice() -> str:
    """The backend FUSEDOPT_BACKEND names for `auto` (unset or empty: auto itself)."""
    name = os.environ.get(ENV_VARIABLE, "auto") or "auto"
    if name not in BACKEND_NAMES:
        raise ValueError(f"Invalid backend in the environment, {ENV_VARIABLE}={name!r}; expected one of "
                         f"{', '.join(BACKEND_NAMES)}, or unset it")
    return name


def unusable_reason(name: str, device: torch.device, kernel: str = ELEMENTWISE) -> Optional[str]:
    if name == "triton":
        _load_triton()
    if name == "triton" and name not in _REGISTRY:
        return f"triton is not installed ({_triton_import_error}); `pip install triton`"
    return _REGISTRY[name].unusable_reason(device) or _REGISTRY[name].kernel_missing_reason(kernel)


def _auto_candidates(device: torch.device) -> Tuple[str, ...]:
    if device.type == "cuda":
        return ("cuda", "triton", "reference")
    if device.type == "cpu":
        return ("cpu", "reference")
    return ("reference",)


_resolved: Dict[Tuple[str, str, Optional[int], str], Backend] = {}


def resolve(name: str, device: torch.device, kernel: str = ELEMENTWISE) -> Backend:
    """The backend that runs `name` on `device` for kernels of shape `kernel`; cached, so
    warnings come once."""
    if name == "auto":
        name = _environment_choice()
    key = (name, device.type, device.index, kernel)
    backend = _resolved.get(key)
    if backend is None:
        backend = choose(name, device, kernel)
        _resolved[key] = backend
    return backend


def choose(name: str, device: torch.device, kernel: str = ELEMENTWISE) -> Backend:
    """The backend `name` resolves to on `device`, decided afresh (resolve() caches it)."""
    if name != "auto":
        reason = unusable_reason(name, device, kernel)
        if reason:
            raise RuntimeError(f"fusedopt backend {name!r} cannot run on {device}: {reason}")
        return get(name)
    skipped: List[str] = []
    for candidate in _auto_candidates(device):
        reason = unusable_reason(candidate, device, kernel)
        if reason is None:
            if skipped:
                warnings.warn(
                    f"fusedopt: backend 'auto' uses {candidate!r} on {device} because " + "; ".join(skipped),
                    RuntimeWarning,
                    stacklevel=4,
                )
            return get(candidate)
        skipped.append(f"{candidate!r} is unusable ({reason})")
    raise RuntimeError(f"fusedopt: no backend can run on {device}: " + "; ".join(skipped))


def resolve_sparse_rows(name: str, device: torch.device, dtype: torch.dtype) -> Backend:
    """The backend that runs lazy (sparse-row) Adam for `name` on params of `device` and
    `dtype`: one named explicitly must implement it (RuntimeError saying which do); `auto`
    takes the first of its usual candidates that does (the reference always does)."""
    if name == "auto":
        name = _environment_choice()
    candidates = _auto_candidates(device)
    if name != "auto":
        backend = resolve(name, device)
        reason = backend.sparse_rows_unsupported(dtype)
        if reason:
            capable = [c for c in candidates if unusable_reason(c, device) is None
                       and get(c).sparse_rows_unsupported(dtype) is None]
            raise RuntimeError(f"fusedopt backend {name!r} cannot run lazy (sparse-row) Adam on {dtype} params on "
                               f"{device}: {reason}; backend='auto' picks one that can ({', '.join(capable)})")
        return backend
    for candidate in candidates:
        if unusable_reason(candidate, device) is None and get(candidate).sparse_rows_unsupported(dtype) is None:
            return get(candidate)
    return get("reference")


def available(device, kernel: str = ELEMENTWISE) -> List[str]:
    """Names of the backends that can update tensors on `device` with kernels of shape
    `kernel` (excluding 'auto')."""
    device = torch.device(device)
    return [n for n in BACKEND_NAMES[1:] if unusable_reason(n, device, kernel) is None]


__all__ = [
    "Backend", "BACKEND_NAMES", "TensorBatch", "UpdateConfig",
    "available", "check_name", "choose", "get", "register", "resolve", "resolve_sparse_rows", "unusable_reason",
]
