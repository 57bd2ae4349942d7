"""Runs Python code that compiles Triton kernels for a GPU target (no GPU needed) in a child
process: the tests' own process has TRITON_INTERPRET=1 set, under which Triton never runs
its compiler. The child imports the fusedopt under test (its package root first on
PYTHONPATH) and must print what the test checks."""
import os
import subprocess
import sys

import pytest

import fusedopt


def run_compiler(code: str, timeout: int = 600) -> str:
    """The child's stdout. Skips when Triton's CUDA toolchain (ptxas) is missing; fails with
    the child's stderr when it exits non-zero for any other reason."""
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fusedopt.__file__)))
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True,
                         timeout=timeout)
    if run.returncode and "ptxas" in run.stderr and "not found" in run.stderr.lower():
        pytest.skip("triton's CUDA toolchain (ptxas) is missing here")
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout
