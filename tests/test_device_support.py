"""Why a GPU or a backend is refused, as `python -m fusedopt` says it (issue 9, part 3).

The CUDA kernels decide whether they can run on a GPU by loading an update kernel
(csrc/cuda/device_support.cu), not by comparing the driver's CUDA version with the
toolkit's: minor-version compatibility lets an older driver run the machine code. The
sentence they return must reach the user: here checked on the CPU by standing in for the
GPU, and, in a build with CUDA kernels on a machine without a driver, with the real one.
"""
import subprocess
import sys

import pytest
import torch

import fusedopt
import fusedopt._info as info_module
import fusedopt.backends
from fusedopt._native import build_info, native

TOO_OLD = ("the NVIDIA driver (CUDA 12.2) is too old to compile the PTX of fusedopt (CUDA 12.8) for GPU 0 "
           "(compute capability 10.0), and there is no machine code for it")


@pytest.fixture
def pretend_gpu(monkeypatch):
    """A visible cuda:0 whose CUDA kernels are refused with TOO_OLD."""
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(info_module, "_devices", lambda: [torch.device("cpu"), cuda])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Pretend GPU")
    monkeypatch.setattr(fusedopt.backends.get("cuda"), "unusable_reason", lambda device: TOO_OLD)
    return cuda


def test_info_says_why_the_cuda_kernels_are_refused(pretend_gpu):
    data = fusedopt.info()
    device = data["devices"]["cuda:0"]
    assert device["refused"]["cuda"] == TOO_OLD
    assert "cuda" not in device["available"]
    assert device["auto"] != "cuda"
    text = info_module.format_info(data)
    assert f"      cuda refused: {TOO_OLD}" in text.splitlines()


def test_info_lists_no_refusal_where_every_backend_runs():
    data = fusedopt.info()
    assert data["devices"]["cpu"]["refused"] == {}
    assert "refused" not in info_module.format_info(data)


@pytest.mark.no_gpu_needed
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_info_says_why_no_gpu_is_used():
    data = fusedopt.info()
    reason = data["gpus_unused_because"]
    assert reason
    if build_info().get("cuda"):  # the CUDA kernels' own check, here with no driver
        assert reason == native.cuda_unusable_reason(0) != ""
    assert f"  GPUs          : none used: {reason}" in info_module.format_info(data).splitlines()


@pytest.mark.no_gpu_needed
@pytest.mark.skipif(torch.cuda.is_available() or not build_info().get("cuda"),
                    reason="needs a build with CUDA kernels on a machine without a usable GPU")
def test_cuda_kernels_say_why_they_cannot_run_here():
    reason = native.cuda_unusable_reason(0)
    assert reason  # no driver, or no device: a sentence, not a crash
    assert "driver" in reason or "GPU" in reason or "device" in reason


def test_python_m_fusedopt_prints_the_gpu_line():
    output = subprocess.run([sys.executable, "-m", "fusedopt"], capture_output=True, text=True, timeout=120,
                            check=True).stdout
    if not torch.cuda.is_available():
        assert "GPUs          : none used: " in output
