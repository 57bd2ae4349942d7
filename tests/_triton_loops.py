"""The Triton backend's place in the comparison tests that loop over backends.

.ci/sanitize sets FUSEDOPT_TESTS_NO_TRITON=1: there the suite checks the compiled CPU kernels'
memory accesses, and the Triton kernels, pure Python under TRITON_INTERPRET=1, touch no native
code while taking minutes. (Tests marked `triton` are deselected there with -m.)"""
import os


def triton_backends() -> tuple:
    """("triton",), or () where FUSEDOPT_TESTS_NO_TRITON=1."""
    return () if os.environ.get("FUSEDOPT_TESTS_NO_TRITON") == "1" else ("triton",)
