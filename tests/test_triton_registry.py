"""The Triton backend's registry side: every `fusedopt/backends/triton/<kind>.py` follows the
contract of fusedopt/backends/triton/__init__.py, an unknown kind is refused by name, and
the bias corrections are right per tensor.

The kernels run in a child process (TRITON_INTERPRET=1 without a GPU, set before triton is
imported), so this module does not depend on which other test module imported fusedopt
first. The child checks:
- `_math.step_power` (fusedopt::step_power restated) against exact rational powers: it is
  the correctly rounded `base ** n`;
- Adam over float64 tensors whose step counters differ (0, 4 and 99 before the first step)
  against torch.optim.Adam, so each tensor gets its own bias corrections.
"""
import os
import pkgutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")
import fusedopt  # noqa: E402

pytestmark = pytest.mark.triton

_CHILD = r"""
import array
import math
from fractions import Fraction

import torch
import triton
import triton.language as tl

from fusedopt._layout import TensorBatch, UpdateConfig
from fusedopt.backends import triton as backend
from fusedopt.backends.triton import _math

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@triton.jit
def _powers(base_ptr, step_ptr, out_ptr):
    i = tl.program_id(0)
    tl.store(out_ptr + i, _math.step_power(tl.load(base_ptr + i), tl.load(step_ptr + i).to(tl.float64)))


pairs = [(b, n) for b in (0.0, 0.5, 0.9, 0.95, 0.999, 0.1234567) for n in (0, 1, 2, 3, 7, 10, 100, 1000, 4321)]
bases = torch.tensor([b for b, _ in pairs], dtype=torch.float64, device=device)
steps = torch.tensor([n for _, n in pairs], dtype=torch.float32, device=device)
out = torch.empty_like(bases)
_powers[(len(pairs),)](bases, steps, out)
for (b, n), got in zip(pairs, out.tolist()):
    assert got == float(Fraction(b) ** n), (b, n, got, float(Fraction(b) ** n))

# Adam, float64, counters that differ between tensors.
hyper = dict(beta1=0.8, beta2=0.99, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
             decoupled_weight_decay=False, optimized_update=False, absolute_weight_decay=False)
starts = (0.0, 4.0, 99.0)
generator = torch.Generator().manual_seed(0)
params = [torch.randn(n, generator=generator, dtype=torch.float64).to(device) for n in (5, 1000, 33)]
expected = [p.clone().requires_grad_() for p in params]
states = [[torch.zeros_like(p) for p in params] for _ in range(2)]
counters = [torch.tensor(s, dtype=torch.float32, device=device) for s in starts]
reference = torch.optim.Adam(expected, lr=0.01, betas=(0.8, 0.99), foreach=False)
for p, s in zip(expected, starts):
    reference.state[p] = dict(step=torch.tensor(s), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
for step in range(3):
    grads = [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(device) for p in params]
    rows = [[p.numel() for p in params], [p.data_ptr() for p in params], [g.data_ptr() for g in grads],
            [c.data_ptr() for c in counters]] + [[t.data_ptr() for t in ts] for ts in states]
    table = array.array("q", [v for row in rows for v in row])
    batch = TensorBatch(params, grads, counters, states, device, torch.float64, table, 10**9 + step)
    backend.TritonBackend().update("adam", batch, UpdateConfig(hyper=hyper, lr=0.01))
    for p, g in zip(expected, grads):
        p.grad = g.clone()
    reference.step()
assert [c.item() for c in counters] == [s + 3 for s in starts]
for p, e in zip(params, expected):
    torch.testing.assert_close(p, e.detach(), rtol=1e-13, atol=1e-15)
print("ok")
"""


def test_bias_corrections_per_tensor_and_exact_powers(tmp_path):
    environment = dict(os.environ)
    if torch.cuda.is_available():
        environment.pop("TRITON_INTERPRET", None)
    else:
        environment["TRITON_INTERPRET"] = "1"
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fusedopt.__file__)))
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, "-c", _CHILD], cwd=tmp_path, env=environment, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["ok"]


def _kinds():
    from fusedopt.backends import triton as backend
    return sorted(m.name for m in pkgutil.iter_modules(backend.__path__) if not m.name.startswith("_"))


def test_every_kind_module_follows_the_contract():
    from fusedopt.backends import triton as backend

    kinds = _kinds()
    assert {"adam", "sgd", "rmsprop"} <= set(kinds)
    for kind in kinds:
        module = backend.kind_module(kind)
        for name in ("arguments", "coefficients", "update"):
            assert callable(getattr(module, name)), (kind, name)
        assert module.update.arg_names[:4] == ["param", "grad", "states", "coefficients"], kind
        assert module.coefficients.arg_names[:3] == ["step", "lr", "hyper"], kind


def test_unknown_kind_is_refused_by_name():
    from fusedopt.backends import triton as backend

    with pytest.raises(ValueError, match=r"fusedopt/backends/triton/no_such_optimizer\.py is missing"):
        backend.kind_module("no_such_optimizer")
    with pytest.raises(ValueError, match="invalid optimizer kind"):
        backend.kind_module("_kernel")
