"""What the numbers were measured on: machine, library versions, command line, date."""
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
from typing import Dict, Optional, Sequence

import torch

import fusedopt
import fusedopt.backends
from fusedopt._native import build_info


def describe_environment(device: torch.device, program: str, argv: Sequence[str]) -> Dict[str, object]:
    """``program`` and ``argv`` make up the command line recorded with the results."""
    return {
        "device": str(device),
        "device_name": gpu_name(device) or cpu_model(),
        "cpu_model": cpu_model(),
        "gpu_name": gpu_name(device),
        "num_threads": torch.get_num_threads(),
        "load_average_start": load_average(),  # the caller adds load_average_end
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "triton_version": _installed_version("triton"),
        "fusedopt_version": fusedopt.__version__,
        "fusedopt_info": _fusedopt_info(),
        "cuda_chunk_bytes": cuda_chunk_bytes(),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "command_line": " ".join([program, *map(shlex.quote, argv)]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def cuda_chunk_bytes() -> Optional[int]:
    """The chunk size fusedopt's CUDA kernels run with (None without them)."""
    return fusedopt.backends.get("cuda").chunk_bytes or build_info().get("cuda_default_chunk_bytes")


def load_average() -> float:
    """The 1-minute load average: other work on the machine distorts CPU timings."""
    return os.getloadavg()[0]


def busy_machine_warning(environment: Dict[str, object]) -> Optional[str]:
    """A warning when other work already loads the CPU, or None.

    Parallel CPU ops then wait for descheduled threads, and their times grow
    many-fold and erratic; one thread per op suffers far less.
    """
    cores = os.cpu_count() or 1
    if environment["device"] != "cpu" or environment["load_average_start"] < cores / 2:
        return None
    return (
        f"warning: load average {environment['load_average_start']:.1f} on {cores} cores before"
        " starting: CPU timings will be noisy (--threads 1 is less affected)"
    )


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name(device: torch.device) -> Optional[str]:
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_name(device)


def _installed_version(distribution: str) -> Optional[str]:
    # Read from package metadata: importing triton just for its version is slow.
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _fusedopt_info() -> Dict[str, object]:
    # Keep the JSON serialisable whatever info() puts in its values.
    return json.loads(json.dumps(fusedopt.info(), default=repr))
