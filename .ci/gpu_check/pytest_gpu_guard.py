"""pytest plugin of the GPU check (`-p gpu_check.pytest_gpu_guard`, with .ci on sys.path).

FUSEDOPT_GPU_CHECK=1: before any test, stop pytest (exit status 3) unless this process
imports fusedopt and fusedopt._C from FUSEDOPT_GPU_CHECK_ROOT, the CUDA kernels are built
and usable on the GPU, `auto` picks them there, Triton is usable there and TRITON_INTERPRET
is unset; then record what it saw as junit suite properties, which junit.verdict requires.
FUSEDOPT_GPU_CHECK_COLLECTED=PATH: write the collected node ids there, one per line.
FUSEDOPT_GPU_CHECK=audit (CPU machines too): write to FUSEDOPT_GPU_CHECK_AUDIT, as JSON,
`selected`: the tests with the `cuda` or `triton` mark (what `-m "cuda or triton"` runs on
a GPU), and `unmarked`: the tests that skip without a GPU (a skipif reason naming CUDA or a
GPU) but carry neither mark, which that selection would leave out of a GPU run.
"""
import json
import os
import re
from typing import Dict

import pytest

_GPU_REASON = re.compile(r"\bcuda\b|\bgpus?\b", re.IGNORECASE)


def guard_facts(root: str) -> Dict[str, str]:
    """What the GPU run depends on; raises RuntimeError naming the first thing wrong."""
    if os.environ.get("TRITON_INTERPRET"):
        raise RuntimeError("TRITON_INTERPRET is set: the Triton tests would run in the interpreter, not on the GPU")
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA GPU")
    import fusedopt

    try:
        from fusedopt import _C
    except ImportError as error:
        raise RuntimeError(f"fusedopt._C does not import ({error}): the package was not built here") from error
    root = os.path.realpath(root)
    for module in (fusedopt, _C):
        path = os.path.realpath(module.__file__)
        if not path.startswith(root + os.sep):
            raise RuntimeError(f"{module.__name__} comes from {path}, not from the checkout {root}")
    built = _C.build_info()
    if not built.get("cuda"):
        raise RuntimeError(f"fusedopt._C was built without CUDA kernels: {built}")
    reason = _C.cuda_unusable_reason(torch.cuda.current_device())
    if reason:
        raise RuntimeError(f"the CUDA kernels cannot run on this GPU: {reason}")
    info = fusedopt.info()
    device = info["devices"].get(f"cuda:{torch.cuda.current_device()}", {})
    if device.get("auto") != "cuda" or "triton" not in device.get("available", []):
        raise RuntimeError(f"fusedopt.info() on the GPU: auto -> {device.get('auto')!r},"
                           f" available {device.get('available')}; expected auto -> 'cuda' and triton available")
    return {
        "fusedopt_gpu_guard": "ok",
        "fusedopt_file": os.path.realpath(fusedopt.__file__),
        "fusedopt_c_file": os.path.realpath(_C.__file__),
        "cuda_archs": str(built.get("cuda_archs")),
        "device_name": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    mode = os.environ.get("FUSEDOPT_GPU_CHECK")
    if mode == "selftest":  # `.ci/gpu --dry-run`: how properties reach the XML; junit.verdict rejects it
        facts = {"fusedopt_gpu_guard": "selftest", "fusedopt_c_file": "/nowhere/_C.so"}
    elif mode == "1":
        try:
            facts = guard_facts(os.environ.get("FUSEDOPT_GPU_CHECK_ROOT", os.getcwd()))
        except Exception as error:  # any failure to verify is a refusal
            pytest.exit(f"GPU guard: {error}", returncode=3)
    else:
        return
    from _pytest.junitxml import xml_key

    xml = config.stash.get(xml_key, None)
    if xml is not None:
        for name, value in facts.items():
            xml.add_global_property(name, value)


def pytest_collection_finish(session):
    path = os.environ.get("FUSEDOPT_GPU_CHECK_COLLECTED")
    if path:
        with open(path, "w") as file:
            file.writelines(item.nodeid + "\n" for item in session.items)
    if os.environ.get("FUSEDOPT_GPU_CHECK") == "audit":
        selected, unmarked = [], []
        for item in session.items:
            names = {mark.name for mark in item.iter_markers()}
            if names & {"cuda", "triton"}:
                selected.append(item.nodeid)
                continue
            if "no_gpu_needed" in names:  # skips name CUDA, but no GPU is needed (nvcc, no-GPU messages)
                continue
            reasons = [str(mark.kwargs.get("reason", "")) for mark in item.iter_markers("skipif")]
            if any(_GPU_REASON.search(reason) for reason in reasons):
                unmarked.append(item.nodeid)
        with open(os.environ["FUSEDOPT_GPU_CHECK_AUDIT"], "w") as file:
            json.dump({"selected": selected, "unmarked": unmarked}, file)
