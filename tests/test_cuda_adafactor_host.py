"""Adafactor's CUDA kernels (csrc/cuda/factored.cu) run on the CPU through fusedopt._cuda_host
(the CUDA sources compiled as host C++, tests/_host_cuda.py): the cpu backend's bits
(csrc/cpu/factored_cpu.cpp) for params, row_var, col_var, variance and step counters after
every step, with params and states between guard bytes and a workspace filled with 0xff
bytes (NaN partials, wild record addresses) each call, so a value a kernel does not write
shows; the launches per step (the prologues, then passes A, tensor, B, scale and C with the
CPU kernel's items); refusals before any launch."""
from __future__ import annotations

import array
import math

import pytest
import torch

import fusedopt
from _host_cuda import (
    ALIGNMENTS, CLASSIC_BLOCKS_DEVICE, LARGE_BLOCKS_DEVICE, Guarded, assert_same_bits, guard_new_state, host,
    register_host_backends, shifts,
)
from fusedopt import backends
from fusedopt._factored import FACTORED_ROWS, is_factored, tensor_shape

LIMITS = {LARGE_BLOCKS_DEVICE: 32764, CLASSIC_BLOCKS_DEVICE: 4096}
ITEM = 1 << 15  # kFactoredItem of fusedopt/factored.h
PROLOGUE_COLUMNS = 19  # factored.cu's Column count
ORDERS = [("cuda_host", False), ("cuda_host_classic", True)]

# One bucket: a vector over three items, odd vectors, a 0-dim param, 2-D params over several
# items per slice and with a row longer than an item, 3-D and 4-D params (lead dims), 1xN and
# Nx1, and zero-size params of both kinds (R = 0 reads as a vector; C = 0).
SHAPES = [(70000,), (7,), (), (300, 250), (2, 40000), (3, 40, 70), (1, 50), (50, 1), (2, 3, 4, 5), (0,), (0, 5),
          (5, 0), (17, 33)]

OPTIONS = {
    "defaults": dict(lr=1e-2),
    "weight_decay-maximize": dict(lr=0.05, beta2_decay=-0.6, eps=(1e-20, 2e-3), d=1.2, weight_decay=0.1,
                                  maximize=True),
    "lr-tensor": dict(lr="tensor", eps=(1e-4, 1e-3), d=1.5, weight_decay=0.02),
}
SCHEDULE = [0.02 * 0.9 ** k for k in range(30)]


@pytest.fixture(autouse=True)
def host_backends(monkeypatch):
    register_host_backends(monkeypatch)
    # CUDABackend reads a tensor lr on the device (reads_lr_tensor); so does its stand-in here.
    for name in ("cuda_host", "cuda_host_classic"):
        monkeypatch.setattr(backends.get(name), "reads_lr_tensor", True)
    host.host_clear_launch_log()
    yield
    host.host_set_reverse_order(False)


def expected_items(shape) -> int:
    """factored_cpu.cpp's work items of a param of `shape`."""
    numel = math.prod(shape)
    if numel == 0:
        return 0
    lead, rows, cols = tensor_shape(torch.empty(shape))
    if rows == 0:
        return -(-numel // ITEM)
    block = max(1, ITEM // cols)
    return lead * -(-rows // block)


def expected_units(shape) -> int:
    numel = math.prod(shape)
    return 0 if numel == 0 else tensor_shape(torch.empty(shape))[0] if len(shape) > 1 else 1


class Twins:
    """Adafactor on the cpu backend, the same on a host CUDA backend whose params, grads and
    states sit between guard bytes (tensor i at alignment ALIGNMENTS[i % 5])."""

    def __init__(self, shapes, dtype, backend, options, seed=5):
        torch.manual_seed(seed)
        self.shapes, self.dtype = shapes, dtype
        values = [torch.randn(shape, dtype=torch.float64).to(dtype) for shape in shapes]
        self.alignments = [ALIGNMENTS[i % len(ALIGNMENTS)] for i in range(len(shapes))]
        self.guarded = Guarded()
        self.cpu_params = [torch.nn.Parameter(v.clone()) for v in values]
        self.host_params = [torch.nn.Parameter(self.guarded.place(v, shifts(a)["param"]))
                            for v, a in zip(values, self.alignments)]
        options = dict(options)
        self.lr_tensors = []
        if options.get("lr") == "tensor":
            self.lr_tensors = [torch.tensor(SCHEDULE[0], dtype=torch.float64) for _ in range(2)]
        self.cpu = fusedopt.Adafactor(self.cpu_params, **{**options, "lr": self.lr_tensors[0]} if self.lr_tensors
                                      else options, backend="cpu")
        self.host = fusedopt.Adafactor(self.host_params, **{**options, "lr": self.lr_tensors[1]} if self.lr_tensors
                                       else options, backend=backend)
        guard_new_state(self.host, self.guarded, {id(p): a for p, a in zip(self.host_params, self.alignments)})

    def step(self, step: int):
        g = torch.Generator().manual_seed(100 + step)
        for p, q, a in zip(self.cpu_params, self.host_params, self.alignments):
            grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(self.dtype)
            if step % 5 == 3 and grad.numel():
                grad.view(-1)[0] = 0.0  # exact zeros in the sums
            p.grad = grad.clone()
            q.grad = self.guarded.place(grad, shifts(a)["grad"])
        for t in self.lr_tensors:
            t.fill_(SCHEDULE[step])
        self.cpu.step()
        self.host.step()

    def check(self, what: str):
        for i, (pc, ph) in enumerate(zip(self.cpu_params, self.host_params)):
            assert_same_bits(ph, pc, f"{what}: param {i} {tuple(pc.shape)}")
            sc, sh = self.cpu.state[pc], self.host.state[ph]
            assert set(sh) == set(sc), f"{what}: param {i}: state keys {sorted(sh)} vs {sorted(sc)}"
            for key in sc:
                assert_same_bits(sh[key], sc[key], f"{what}: param {i} {tuple(pc.shape)} state {key!r}")
        self.guarded.check()
        for entry in host.host_launch_log():
            assert entry["error"] == "cudaSuccess", entry
            assert entry["parameter_bytes"] <= LIMITS[entry["device"]], entry


def prologue_capacity(device: int) -> int:
    return (LIMITS[device] - 256 - 16) // (8 * PROLOGUE_COLUMNS)


def launches():
    """(prologue launches, grids of the other launches) of the log since it was cleared."""
    log = host.host_launch_log()
    prologues = [e for e in log if "PrologueArgs" in e["parameters"]]
    return prologues, [e["grid"][0] for e in log if "PrologueArgs" not in e["parameters"]]


@pytest.mark.parametrize("backend, reverse", ORDERS, ids=["device0-forward", "device1-reverse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=["f32", "f64", "f16", "bf16"])
@pytest.mark.parametrize("options", list(OPTIONS))
def test_adafactor_same_bits_as_the_cpu_backend(options, dtype, backend, reverse):
    """22 steps over one bucket of every kind of shape: the cpu backend's bits after every
    step; each step is one prologue launch, then passes A, tensor, B, scale and C over the
    CPU kernel's items (one block each), slices and tensors."""
    host.host_set_reverse_order(reverse)
    twins = Twins(SHAPES, dtype, backend, OPTIONS[options])
    items = sum(expected_items(s) for s in SHAPES)
    units = sum(expected_units(s) for s in SHAPES)
    for step in range(22):
        host.host_clear_launch_log()
        twins.step(step)
        twins.check(f"step {step}")
        prologues, grids = launches()
        assert len(prologues) == 1
        assert grids == [items, units, items, 1, items]
    assert all(int(twins.host.state[p]["step"]) == 22 for p in twins.host_params)


@pytest.mark.parametrize("backend", ["cuda_host", "cuda_host_classic"], ids=["device0", "device1"])
def test_adafactor_more_tensors_than_one_prologue_launch_holds(backend):
    """More tensors than one prologue launch carries (32 KB blocks on device 0, 4 KB on device
    1): several prologue launches, still one launch per pass, the CPU kernel's bits."""
    device = LARGE_BLOCKS_DEVICE if backend == "cuda_host" else CLASSIC_BLOCKS_DEVICE
    capacity = prologue_capacity(device)
    shapes = [[(3 + i % 4, 2), (5,), (2, 1, 3)][i % 3] for i in range(capacity + 4)]
    twins = Twins(shapes, torch.float32, backend, dict(lr=0.03, weight_decay=0.1))
    for step in range(3):
        host.host_clear_launch_log()
        twins.step(step)
        twins.check(f"step {step}")
        prologues, grids = launches()
        assert len(prologues) == 2
        if device == LARGE_BLOCKS_DEVICE:
            assert prologues[0]["parameter_bytes"] > 4096
        items = sum(expected_items(s) for s in shapes)
        assert grids == [items, sum(expected_units(s) for s in shapes), items, -(-len(shapes) // 128), items]


def test_a_bucket_of_zero_size_params_only_counts_steps():
    twins = Twins([(0,), (0, 5), (5, 0), (2, 0, 3)], torch.float32, "cuda_host", dict(lr=0.01))
    for step in range(3):
        host.host_clear_launch_log()
        twins.step(step)
        twins.check(f"step {step}")
        prologues, grids = launches()
        assert len(prologues) == 1 and grids == []
    assert all(int(twins.host.state[p]["step"]) == 3 for p in twins.host_params)


def _table(params, grads, steps, moments, cols):
    n = len(params)
    columns = [
        [p.numel() for p in params], [p.data_ptr() for p in params], [g.data_ptr() for g in grads],
        [s.data_ptr() for s in steps], [tensor_shape(p)[1] for p in params], [tensor_shape(p)[2] for p in params],
        [m.data_ptr() for m in moments], [0 if c is None else c.data_ptr() for c in cols],
    ]
    assert len(columns) == FACTORED_ROWS
    return array.array("q", [v for column in columns for v in column]), n


def test_refused_calls_change_nothing():
    """A workspace too small or misaligned, or a table whose sizes disagree: ValueError from
    the native call before any launch (the step counter stays)."""
    p, g = torch.randn(6, 4), torch.randn(6, 4)
    step = torch.zeros(())
    row, col = torch.zeros(6, 1), torch.zeros(1, 4)
    table, n = _table([p], [g], [step], [row], [col])
    address = table.buffer_info()[0]
    needed = host.cuda_adafactor_workspace_bytes(address, n)
    workspace = torch.zeros(needed + 16, dtype=torch.uint8)
    arguments = (address, n, 0, 0.01, 0, -0.8, 1e-30, 1e-3, 1.0, 0.0, False)
    host.host_clear_launch_log()
    with pytest.raises(ValueError, match="workspace"):
        host.cuda_adafactor(*arguments, workspace.data_ptr(), needed - 8, 0, 0)
    with pytest.raises(ValueError, match="workspace"):
        host.cuda_adafactor(*arguments, workspace.data_ptr() + 8, needed, 0, 0)
    table[4 * n] = 5  # R = 5 does not divide 24 elements of 4 columns
    with pytest.raises(ValueError, match="multiple"):
        host.cuda_adafactor(*arguments, workspace.data_ptr(), needed, 0, 0)
    table[4 * n] = 0  # a vector whose columns are not its numel
    with pytest.raises(ValueError, match="element count"):
        host.cuda_adafactor(*arguments, workspace.data_ptr(), needed, 0, 0)
    assert host.host_launch_log() == [] and float(step) == 0.0
    table[4 * n] = 6
    host.cuda_adafactor(*arguments, workspace.data_ptr(), needed, 0, 0)
    assert float(step) == 1.0 and bool(row.ne(0).all())


def test_cuda_backend_declares_the_factored_shape():
    """backend='cuda' runs Adafactor where the build has the kernels, so 'auto' takes it on a
    GPU ahead of Triton (backends/__init__.py tries cuda first)."""
    cuda = backends.get("cuda")
    assert "factored" in cuda.kernels
    assert hasattr(host, "cuda_adafactor") and hasattr(host, "cuda_adafactor_workspace_bytes")
    assert cuda.kernel_missing_reason("factored") is None
