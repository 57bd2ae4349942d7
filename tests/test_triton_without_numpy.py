"""The Triton backend needs torch and triton, not numpy (torch does not require numpy).

A child process hides numpy (`sys.modules["numpy"] = None` makes every `import numpy`
fail) before importing fusedopt. With a GPU it runs real Triton steps and compares them
with the reference backend. Without one the kernels could only run under Triton's
interpreter, which itself needs numpy, so the child runs the backend's host side (address
tables, work map, step counters) with the launch replaced by a check that the work map
gives every element of every tensor to exactly one program.
"""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")
import fusedopt  # noqa: E402

pytestmark = pytest.mark.triton

_CHILD = r"""
import sys
sys.modules["numpy"] = None  # from here on, `import numpy` raises ImportError
import torch
import fusedopt
from fusedopt._layout import NUMEL_ROW
from fusedopt.backends import triton as triton_backend

GPU = torch.cuda.is_available()
device = "cuda" if GPU else "cpu"
sizes = [0, 1, 1023, 1024, 5000, 40000]
params = [torch.randn(n, device=device).requires_grad_() for n in sizes]
twins = [p.detach().clone().requires_grad_() for p in params]
covered = []

if not GPU:
    # No interpreter here (it needs numpy): accept CPU tensors and check the launch plan
    # instead of running the kernel.
    triton_backend._interpreted = lambda: True

    def check_launch(kind, tables, batch, config):
        n = len(batch)
        numels = batch.table[NUMEL_ROW * n:(NUMEL_ROW + 1) * n]
        work = tables.work.tolist()
        assert len(work) == tables.programs
        for column, numel in enumerate(numels):
            starts = sorted(start for c, start in work if c == column)
            assert starts == list(range(0, numel, tables.chunk)), (column, numel, starts)
        covered.append(sum(numels))

    triton_backend._launch = check_launch

optimizer = fusedopt.Adam(params, lr=0.1, backend="triton")
reference = fusedopt.Adam(twins, lr=0.1, backend="reference")
for step in range(3):
    for p, q in zip(params, twins):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    optimizer.step()
    reference.step()
for p in params:
    assert float(optimizer.state[p]["step"]) == 3
if GPU:
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
else:
    assert covered == [sum(sizes)] * 3, covered
assert "numpy" not in {name.split(".")[0] for name, module in sys.modules.items() if module is not None}
print("ok", "gpu" if GPU else "host side")
"""


def test_triton_backend_runs_without_numpy(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fusedopt.__file__)))
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
    # From an empty folder, so the child imports the same fusedopt as this process.
    run = subprocess.run([sys.executable, "-c", _CHILD], cwd=tmp_path, env=environment, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[:2] == ["ok", "gpu" if torch.cuda.is_available() else "host"]
