"""Fixtures shared by the suite; the one place that lists the backends it runs.

Every test that takes the `backend` fixture runs once per name in BACKENDS. The Triton
backend runs in a file of its own (under TRITON_INTERPRET=1, small sizes): that file
overrides the fixture, e.g.

    from test_optimizers import test_matches_torch  # re-collected under this module
    @pytest.fixture(params=["triton"])
    def backend(request): return request.param

or calls the helpers of _compare.py with backend="triton" directly.
"""
import os
import sys

import pytest
import torch

# Without a GPU the Triton kernels can only run in Triton's interpreter, which is chosen
# when they are defined: set it before anything can load fusedopt's Triton backend.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fusedopt.backends  # noqa: E402

BACKENDS = ("reference", "cpu")


def pytest_runtest_setup(item):
    """Once a test module has loaded Triton's interpreter, let it skip its repeated patching
    (tests/_triton_interpreter.py: the same values, in about half the time)."""
    if os.environ.get("TRITON_INTERPRET") == "1" and "triton.runtime.interpreter" in sys.modules:
        from _triton_interpreter import skip_repeated_language_patches
        skip_repeated_language_patches()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _fresh_backend_resolution():
    """`auto` is resolved once per (name, device) and cached; start every test without it."""
    fusedopt.backends._resolved.clear()
    yield
    fusedopt.backends._resolved.clear()


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    """One torch thread: the tensors here are small, and on a loaded 2-core machine
    OpenMP's spinning threads make each matmul many times slower. Tests of the
    multi-threaded kernels ask for threads with the `threads` fixture."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def threads():
    """Sets torch's (and so fusedopt's CPU kernels') thread count for one test."""
    def set_threads(n: int) -> None:
        torch.set_num_threads(n)

    yield set_threads
    torch.set_num_threads(1)
