"""fusedopt: fused multi-tensor optimizers for PyTorch.

Swap ``torch.optim.AdamW`` for ``fusedopt.AdamW`` and get the same numbers from one kernel
call per param group: CUDA kernels on NVIDIA GPUs, Triton where those are unusable, and
compiled C++ on the CPU.
"""
from ._info import info
from .clip import clip_grad_norm_
from .backends import available as available_backends
from . import optim
from .optim import *  # noqa: F401,F403  (every registered optimizer class)
from .optim._torch_state import to_torch_state_dict

__version__ = "0.1.0"

__all__ = [*optim.__all__, "available_backends", "clip_grad_norm_", "info", "to_torch_state_dict", "__version__"]
