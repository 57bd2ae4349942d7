"""fusedopt.info(): what was built, which backend `auto` picks on each visible device, and
why a backend (or a GPU) is refused."""
from __future__ import annotations

import os
import platform
import warnings
from typing import Any, Dict, List, Optional

import torch

from . import backends
from ._native import build_info, load_error, native


def _devices() -> List[torch.device]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return devices


def _refusals(device: torch.device) -> Dict[str, str]:
    """Why each compiled backend that could serve `device` cannot (the sentence the backend
    gives, e.g. a driver too old for this build); empty when all can."""
    names = ("cuda", "triton") if device.type == "cuda" else ("cpu",)
    reasons = {name: backends.unusable_reason(name, device) for name in names}
    return {name: reason for name, reason in reasons.items() if reason}


def _gpu_status(built: Dict[str, Any]) -> Optional[str]:
    """None when torch sees a GPU; else why none is used, in the CUDA kernels' words when
    they were built (no driver, a driver too old, ...)."""
    if torch.cuda.is_available():
        return None
    if built.get("cuda"):
        reason = native.cuda_unusable_reason(0)
        if reason:
            return reason
    if torch.version.cuda is None:
        return "this torch build has no CUDA support (a CPU-only wheel)"
    return "torch sees no CUDA device (torch.cuda.is_available() is False)"


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _arch_name(cmake_arch: str) -> str:
    """CMake's "90-real" / "90-virtual" as nvcc names them: sm_90 machine code, compute_90 PTX."""
    number, _, kind = cmake_arch.partition("-")
    if kind == "virtual":
        return f"compute_{number} (PTX)"
    return f"sm_{number}" if kind == "real" else f"sm_{number} + compute_{number} (PTX)"


def _other_kernels() -> Dict[str, List[str]]:
    """{kernel shape: [optimizer classes]} for the shapes besides the element-wise one
    (OptimizerSpec.kernel: Adafactor's "factored"), which fewer backends run."""
    from .optim import _spec

    shapes: Dict[str, List[str]] = {}
    for kind, spec in _spec.registered().items():
        if spec.kernel != backends.ELEMENTWISE:
            shapes.setdefault(spec.kernel, []).append(_spec._CLASSES[kind].__name__)
    return shapes


def _kernel_support(device: torch.device, kernel: str) -> Dict[str, Any]:
    """Which backend `auto` picks for optimizers of this kernel shape on `device`, which can
    run them, and why each other backend cannot."""
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        try:
            chosen = backends.choose("auto", device, kernel).name
        except RuntimeError as error:
            chosen = f"none ({error})"
    missing = {name: backends.get(name).kernel_missing_reason(kernel) for name in backends.BACKEND_NAMES[1:]
               if name != "triton" or backends.unusable_reason("triton", device) is None}
    return {"auto": chosen, "available": backends.available(device, kernel),
            "without_kernels": {name: reason for name, reason in missing.items() if reason}}


def info() -> Dict[str, Any]:
    """A dict describing this installation (also printed by ``python -m fusedopt``)."""
    from . import __version__

    built = build_info()
    auto: Dict[str, Any] = {}
    for device in _devices():
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            try:
                chosen = backends.choose("auto", device).name
            except RuntimeError as error:
                chosen = f"none ({error})"
        auto[str(device)] = {
            "auto": chosen,
            "available": backends.available(device),
            "refused": _refusals(device),
            "name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
            or platform.machine(),
            # Optimizers of other kernel shapes (Adafactor), which not every backend has.
            "kernels": {f"{shape} ({', '.join(classes)})": _kernel_support(device, shape)
                        for shape, classes in _other_kernels().items()},
        }
    return {
        "version": __version__,
        "native_module": "loaded" if not load_error else f"not loaded: {load_error}",
        # instruction_set: the variant in use (FUSEDOPT_CPU_ISA may pick a lesser built one);
        # instruction_sets_built: every variant compiled in; table_gathers: whether 8-bit
        # states' lookups use gather instructions (Intel CPUs; FUSEDOPT_CPU_GATHER=0|1 overrides)
        "cpu_kernels": {"built": not load_error, "instruction_set": built.get("cpu_isa"),
                        "instruction_sets_built": built["cpu_isas_built"].split(",") if "cpu_isas_built" in built
                        else [],
                        "table_gathers": built.get("cpu_gathers")},
        "cuda_kernels": {
            "built": bool(built.get("cuda")),
            "architectures": [_arch_name(a) for a in built.get("cuda_archs", "").split(",")] if built.get("cuda") else [],
            "nvcc_version": built.get("cuda_compiler_version"),
            "default_chunk_bytes": built.get("cuda_default_chunk_bytes"),
        },
        "gpus_unused_because": _gpu_status(built),
        "triton": _triton_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "backend_env": os.environ.get(backends.ENV_VARIABLE),
        "devices": auto,
    }


def _cuda_line(cuda: Dict[str, Any]) -> str:
    if not cuda["built"]:
        return "not built"
    return (f"built for {', '.join(cuda['architectures'])} (nvcc {cuda['nvcc_version']}; "
            f"chunks of {cuda['default_chunk_bytes']} bytes per list)")


def format_info(data: Dict[str, Any]) -> str:
    cuda = data["cuda_kernels"]
    lines = [
        f"fusedopt {data['version']}",
        f"  native module : {data['native_module']}",
        f"  CPU kernels   : {'built, ' + str(data['cpu_kernels']['instruction_set']) if data['cpu_kernels']['built'] else 'not built'}",
        f"  CUDA kernels  : {_cuda_line(cuda)}",
        f"  Triton        : {data['triton'] or 'not installed'}",
        f"  torch         : {data['torch']} (CUDA {data['torch_cuda'] or 'none'})",
        f"  {backends.ENV_VARIABLE}: {data['backend_env'] or '(unset)'}",
        "  devices:",
    ]
    if data.get("gpus_unused_because"):
        lines.insert(-1, f"  GPUs          : none used: {data['gpus_unused_because']}")
    for device, d in data["devices"].items():
        lines.append(f"    {device:8s} {d['name']}: auto -> {d['auto']}; available: {', '.join(d['available'])}")
        for name, reason in d.get("refused", {}).items():
            lines.append(f"      {name} refused: {reason}")
        for shape, support in d.get("kernels", {}).items():
            lines.append(f"      {shape}: auto -> {support['auto']}; available: {', '.join(support['available'])}"
                         + "".join(f"; {name}: none yet" for name in support["without_kernels"]))
    return "\n".join(lines)
