"""fusedopt.Adafactor on the Triton backend (fusedopt/backends/triton/_factored*.py) against
torch.optim.Adafactor step by step, against the reference backend, and run to run.

Without a GPU the kernels run on CPU tensors under Triton's interpreter (see test_triton.py
for how TRITON_INTERPRET is set before fusedopt imports triton); with one, on CUDA tensors.
The interpreter costs about a second per step here, so runs are short and the launch
geometry is shrunk (4 x 8 tiles, items of 32 elements) so that the small shapes still
span several column tiles, several blocks of rows and several items per tensor.
"""
from __future__ import annotations

import io
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # before anything below imports triton

pytest.importorskip("triton")

import fusedopt  # noqa: E402
from fusedopt import backends  # noqa: E402
from test_triton import interpreted_kernels  # noqa: E402,F401  (module fixture: kernels built for the interpreter)

pytestmark = pytest.mark.triton
DEVICE = torch.device("cuda" if CUDA else "cpu")
# 2-D, 1-D, 3-D (three slices), 0-dim, one-row slices, one-element vector, one column, and
# a param of 5 column tiles x 2 blocks of rows.
SHAPES = ((6, 5), (7,), (3, 4, 5), (), (2, 1, 3), (1,), (9, 1), (5, 37))
STEPS = 4


@pytest.fixture(autouse=True)
def small_geometry(monkeypatch, interpreted_kernels):  # noqa: F811
    from fusedopt.backends.triton import _factored

    monkeypatch.setattr(_factored, "FACTORED_LAUNCH_CONFIG", _factored.FactoredLaunchConfig(rows=4, cols=8, item=32))
    _factored._cache.plans.clear()
    _factored._cache.tables.clear()


def values(shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def grads(shapes=SHAPES, steps=STEPS, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(steps)]


def run(backend, options, dtype, shapes=SHAPES, steps=STEPS, device=DEVICE, torch_optim=False):
    """Params after each step, and the optimizer; torch.optim.Adafactor when torch_optim."""
    params = [torch.nn.Parameter(v.to(dtype).to(device)) for v in values(shapes)]
    kwargs = {k: (v.clone().to(device) if isinstance(v, torch.Tensor) else v) for k, v in options.items()}
    if torch_optim:
        opt = torch.optim.Adafactor(params, foreach=False, **kwargs)
    else:
        opt = fusedopt.Adafactor(params, backend=backend, **kwargs)
    history = []
    for step in grads(shapes, steps):
        for p, g in zip(params, step):
            p.grad = g.to(dtype).to(device)
        opt.step()
        history.append([p.detach().clone() for p in params])
    return history, params, opt


OPTIONS = {
    "default": {},
    "weight_decay_maximize": dict(weight_decay=0.1, maximize=True),
    "eps_d_beta2_decay": dict(eps=(1e-3, 1e-2), d=1.5, beta2_decay=-0.5, lr=0.05),
    "lr_tensor": dict(lr=torch.tensor(0.05, dtype=torch.float64), weight_decay=0.05),
    "small_lr": dict(lr=1e-3, weight_decay=0.2),  # rho = lr from the first step
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_float64_matches_torch_to_rounding(name):
    ours, params, opt = run("triton", OPTIONS[name], torch.float64)
    theirs, tparams, topt = run(None, OPTIONS[name], torch.float64, device="cpu", torch_optim=True)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for p, q in zip(a, b):
            torch.testing.assert_close(p.cpu(), q, rtol=1e-12, atol=1e-13, msg=f"step {step + 1}")
    for p, q in zip(params, tparams):
        assert set(opt.state[p]) == set(topt.state[q])
        for key, value in topt.state[q].items():
            mine = opt.state[p][key]
            assert mine.dtype == value.dtype and mine.shape == value.shape, key
            torch.testing.assert_close(mine.cpu().double(), value.double(), rtol=1e-12, atol=1e-14, msg=key)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_twenty_five_steps_match_torch(dtype):
    """The issue's 20+ steps, on fewer shapes (the interpreter is slow): a matrix, a vector
    and a 3-D param, weight decay and maximize, every step against torch.optim.Adafactor
    (float64 to rounding, float32 within float32 rounding)."""
    shapes, options = ((6, 5), (7,), (2, 3, 4)), dict(weight_decay=0.1, maximize=True, lr=0.02)
    ours, _, _ = run("triton", options, dtype, shapes=shapes, steps=25)
    theirs, _, _ = run(None, options, dtype, shapes=shapes, steps=25, device="cpu", torch_optim=True)
    tolerance = dict(rtol=1e-12, atol=1e-13) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for p, q in zip(a, b):
            torch.testing.assert_close(p.cpu(), q, **tolerance, msg=f"step {step + 1}")
    assert not torch.equal(ours[-1][0].cpu(), values(shapes)[0].to(dtype))  # it moved


@pytest.mark.parametrize("name", ["default", "weight_decay_maximize"])
def test_float32_matches_torch_at_every_step(name):
    ours, _, _ = run("triton", OPTIONS[name], torch.float32)
    theirs, _, _ = run(None, OPTIONS[name], torch.float32, device="cpu", torch_optim=True)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for p, q in zip(a, b):
            torch.testing.assert_close(p.cpu(), q, rtol=2e-5, atol=2e-6, msg=f"step {step + 1}")


def test_float32_tensor_lr_as_torch():
    """A float32 lr tensor is read as float64 (see fusedopt.Adafactor): float32 closeness."""
    options = dict(lr=torch.tensor(0.05), weight_decay=0.1)
    ours, _, _ = run("triton", options, torch.float32, steps=3)
    theirs, _, _ = run(None, options, torch.float32, steps=3, device="cpu", torch_optim=True)
    for p, q in zip(ours[-1], theirs[-1]):
        torch.testing.assert_close(p.cpu(), q, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dtype,ulps", [(torch.float32, 100), (torch.bfloat16, 2), (torch.float16, 2)],
                         ids=["f32", "bf16", "f16"])
def test_matches_the_reference_backend(dtype, ulps):
    """Same math, same roundings of what is stored, params and every state tensor: float32
    within the tolerance the CPU kernel meets against the reference (test_adafactor.py: the
    kernels add squares in float64, the reference in float32, which moves the step sizes by
    float32 roundings), 16-bit values within a rounding flip or two."""
    options = dict(weight_decay=0.05, eps=(torch.finfo(dtype).eps, 1e-3))
    _, ours, opt = run("triton", options, dtype, steps=3)
    _, theirs, ref = run("reference", options, dtype, steps=3, device="cpu")
    ulp = torch.finfo(dtype).eps
    for p, q in zip(ours, theirs):
        assert p.dtype == dtype
        pairs = [(p, q)] + [(opt.state[p][k], ref.state[q][k]) for k in ref.state[q]]
        for a, b in pairs:
            torch.testing.assert_close(a.cpu().double(), b.double(), rtol=ulps * ulp, atol=ulps * ulp * 1e-3)


def test_the_same_bits_run_to_run_and_across_geometries(monkeypatch):
    """Fixed-order sums: a second run gives identical bits; one item per tensor (no partial
    sums to add) agrees to float64 rounding."""
    from fusedopt.backends.triton import _factored

    first = run("triton", dict(weight_decay=0.1), torch.float64, steps=2)
    second = run("triton", dict(weight_decay=0.1), torch.float64, steps=2)
    for a, b in zip(first[0][-1], second[0][-1]):
        assert torch.equal(a, b)
    monkeypatch.setattr(_factored, "FACTORED_LAUNCH_CONFIG", _factored.FactoredLaunchConfig(rows=16, cols=64,
                                                                                           item=1 << 16))
    whole = run("triton", dict(weight_decay=0.1), torch.float64, steps=2)
    for a, b in zip(first[0][-1], whole[0][-1]):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def _roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("direction", ["torch_to_triton", "triton_to_torch"])
def test_state_dict_moves_both_ways_and_training_continues(direction):
    options = dict(lr=0.02, weight_decay=0.1)
    all_grads = grads(steps=6)
    straight = [torch.nn.Parameter(v.clone()) for v in values()]
    straight_opt = torch.optim.Adafactor(straight, **options)
    for step in all_grads:
        for p, g in zip(straight, step):
            p.grad = g.clone()
        straight_opt.step()

    def make(ps, torch_side):
        return torch.optim.Adafactor(ps, **options) if torch_side else fusedopt.Adafactor(ps, backend="triton",
                                                                                          **options)

    first_device = torch.device("cpu") if direction == "torch_to_triton" else DEVICE
    params = [torch.nn.Parameter(v.clone().to(first_device)) for v in values()]
    opt = make(params, direction == "torch_to_triton")
    for step in all_grads[:3]:
        for p, g in zip(params, step):
            p.grad = g.to(first_device)
        opt.step()
    saved = _roundtrip(opt.state_dict())
    second_device = DEVICE if direction == "torch_to_triton" else torch.device("cpu")
    resumed = [torch.nn.Parameter(p.detach().clone().to(second_device)) for p in params]
    opt2 = make(resumed, direction == "triton_to_torch")
    opt2.load_state_dict(saved)
    for step in all_grads[3:]:
        for p, g in zip(resumed, step):
            p.grad = g.to(second_device)
        opt2.step()
    for p, q in zip(resumed, straight):
        torch.testing.assert_close(p.cpu(), q, rtol=1e-12, atol=1e-13)
        for key, value in straight_opt.state[q].items():
            torch.testing.assert_close(opt2.state[p][key].double().cpu(), value.double(), rtol=1e-12, atol=1e-14)


def test_each_stream_gets_its_own_workspaces(monkeypatch):
    """Workspaces are cached per stream: steps of two same-shaped buckets on two streams must
    not write one workspace at once. (No second stream exists on the CPU: the stream the key
    reads is replaced by a label.) The same stream reuses its plan; another gets its own; the
    results are the same either way."""
    from fusedopt.backends.triton import _factored

    stream = ["first"]
    monkeypatch.setattr(_factored, "_current_stream", lambda device: stream[0])
    params = [torch.nn.Parameter(v.to(DEVICE)) for v in values(SHAPES[:3])]
    opt = fusedopt.Adafactor(params, backend="triton", weight_decay=0.1)
    planned = []
    real_plan = _factored._plan
    monkeypatch.setattr(_factored, "_plan", lambda *args: planned.append(real_plan(*args)) or planned[-1])
    reference = [torch.nn.Parameter(v.clone()) for v in values(SHAPES[:3])]
    torch_opt = torch.optim.Adafactor(reference, foreach=False, weight_decay=0.1)
    for step, label in zip(grads(SHAPES[:3], 4), ["first", "first", "second", "first"]):
        stream[0] = label
        for p, q, g in zip(params, reference, step):
            p.grad, q.grad = g.to(DEVICE), g.clone()
        opt.step()
        torch_opt.step()
    assert len(planned) == 2  # one plan per stream, kept across steps
    assert planned[0].means is not planned[1].means
    for p, q in zip(params, reference):
        torch.testing.assert_close(p.cpu(), q, rtol=1e-12, atol=1e-13)


def test_empty_params_advance_their_step_only():
    params = [torch.nn.Parameter(torch.zeros(0, 3, device=DEVICE)), torch.nn.Parameter(torch.zeros(0, device=DEVICE)),
              torch.nn.Parameter(torch.ones(2, 2, device=DEVICE))]
    opt = fusedopt.Adafactor(params, backend="triton")
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert [opt.state[p]["step"].item() for p in params] == [1.0, 1.0, 1.0]
    assert not torch.equal(params[2].cpu(), torch.ones(2, 2))
    only_empty = [torch.nn.Parameter(torch.zeros(0, 4, device=DEVICE))]
    opt = fusedopt.Adafactor(only_empty, backend="triton")
    only_empty[0].grad = torch.zeros(0, 4, device=DEVICE)
    opt.step()
    assert opt.state[only_empty[0]]["step"].item() == 1.0


def test_triton_declares_factored_kernels_and_info_lists_it():
    assert backends.get("triton").kernel_missing_reason("factored") is None
    assert "triton" in backends.available(DEVICE, "factored")
    support = next(iter(fusedopt.info()["devices"][str(DEVICE) if CUDA else "cpu"]["kernels"].values()))
    assert "triton" not in support["without_kernels"]
    if CUDA:  # auto picks the CUDA kernels on a GPU where the build has them, else Triton
        from fusedopt._native import build_info
        expected = "cuda" if build_info().get("cuda") else "triton"
        assert backends.choose("auto", DEVICE, "factored").name == expected


_COMPILE_CHILD = r"""
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fusedopt.backends.triton import _factored_kernel as K

P, I = "*fp64", "*i64"
base = dict(table_ptr=I, n="i64", items_ptr=I)
tile = dict(DTYPE=tl.bfloat16, COMPUTE=tl.float32, ROWS=8, COLS=256)
jobs = [
    (K.pass_a_kernel, dict(base, param_partial_ptr=P, col_partial_ptr=P, row_partial_ptr=P, beta2_decay="fp64"), tile),
    (K.slice_kernel, dict(base, slices_ptr=I, col_partial_ptr=P, row_partial_ptr=P, means_ptr=P, beta2_decay="fp64",
                          eps1="fp64"), tile),
    (K.pass_b_kernel, dict(base, means_ptr=P, update_partial_ptr=P, grad_sign="fp64", eps1="fp64"), tile),
    (K.tensor_kernel, dict(table_ptr=I, n="i64", tensors_ptr=I, param_partial_ptr=P, update_partial_ptr=P,
                           coefficient_ptr=P, lr_ptr=P, lr="fp64", eps2="fp64", d="fp64"),
     dict(COMPUTE=tl.float32, LR_TENSOR=True, BLOCK=2048)),
    (K.pass_c_kernel, dict(base, means_ptr=P, coefficient_ptr=P, lr_ptr=P, lr="fp64", weight_decay="fp64",
                           grad_sign="fp64", eps1="fp64"), dict(tile, LR_TENSOR=False, WEIGHT_DECAY=True)),
]
for fn, types, constants in jobs:
    signature = {name: types.get(name, "constexpr") for name in fn.arg_names}
    constexprs = {(fn.arg_names.index(name),): value for name, value in constants.items()}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                              target=GPUTarget("cuda", 90, 32), options=dict(enable_fp_fusion=False, num_warps=4))
    assert ".entry" in compiled.asm["ptx"], fn.__name__
print("compiled")
"""


@pytest.mark.skipif(CUDA, reason="with a GPU the tests above run the compiled kernels")
def test_the_kernels_compile_for_a_gpu():
    """The interpreter runs Python, not Triton's compiler, which refuses more (non-constexpr
    globals, an if whose branches give one name two types): compile every kernel for sm_90
    (bfloat16, both LR_TENSOR and WEIGHT_DECAY branches between them) without a GPU."""
    from _compiled_triton import run_compiler

    assert "compiled" in run_compiler(_COMPILE_CHILD)
