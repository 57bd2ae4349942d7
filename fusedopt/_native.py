"""Loads the compiled module fusedopt._C without ever breaking `import fusedopt`.

When the extension is missing or fails to load, `native` is a stand-in whose attribute
access raises a RuntimeError carrying the original reason and how to fix it (the
pattern bitsandbytes uses), so only code that needs compiled kernels fails.
"""
from __future__ import annotations

from typing import Any, Optional


class _MissingNative:
    def __init__(self, reason: str):
        self.reason = reason

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            f"fusedopt's compiled kernels are not available ({self.reason}). "
            "Reinstall from source with a C++ compiler present (`pip install .`), "
            "or pass backend='reference' (pure PyTorch) or backend='triton' (GPUs)."
        )


def _load() -> tuple[Any, Optional[str]]:
    try:
        from fusedopt import _C  # type: ignore[attr-defined]
    except ImportError as error:  # not built, or built for another Python
        return _MissingNative(f"importing fusedopt._C failed: {error}"), str(error)
    return _C, None


native, load_error = _load()
"""The fusedopt._C module, or a stand-in that explains why it could not be loaded."""


def build_info() -> dict:
    """What fusedopt._C was compiled with; {} when it is not loaded."""
    return {} if load_error else dict(native.build_info())

