"""fusedopt's torch.library ops live in fusedopt/optim/_ops.py, beside the optimizers; this
name stays importable for code that registers them by importing it."""
from .optim._ops import compiled_step, sum_of_squares, update_  # noqa: F401
