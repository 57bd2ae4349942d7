"""The multi-tensor per-tensor reduction (Backend.sum_of_squares_per_tensor, issue 12) on every
backend, and clip_grad_norm_per_tensor (paddle's ClipGradByNorm, fused) on every optimizer."""
import copy
import inspect
import math

import pytest
import torch

import fusedopt
import fusedopt.backends

SHAPES = ((0,), (1,), (17,), (65537,), (7, 13))


def _usable(backend):
    reason = fusedopt.backends.unusable_reason(backend, torch.device("cpu"))
    if reason:
        pytest.skip(f"backend {backend!r} cannot run here: {reason}")


def _tensors(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=generator, dtype=torch.float64) * (i + 1)).to(dtype)
            for i, s in enumerate(SHAPES)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_per_tensor_sums_equal_float64_sums(backend, dtype):
    _usable(backend)
    tensors = _tensors(dtype)
    got = fusedopt.backends.get(backend).sum_of_squares_per_tensor(tensors)
    expected = torch.stack([t.double().square().sum() for t in tensors])
    assert got.dtype == torch.float64 and got.shape == (len(tensors),)
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=0)


def test_cpu_sums_do_not_depend_on_threads_or_runs(threads):
    # Blocks of unequal sizes (partial last blocks, small tensors), shared by teams of every
    # size up to more threads than the machine has cores (csrc/cpu/multi_tensor_cpu.h,
    # for_each_block).
    tensors = _tensors(torch.float32) + [torch.randn(300_000), torch.randn(50_000), torch.randn(70_001)]
    cpu = fusedopt.backends.get("cpu")
    threads(1)
    first = cpu.sum_of_squares_per_tensor(tensors)
    for count in (2, 3, 7):
        threads(count)
        for _ in range(2):
            assert torch.equal(cpu.sum_of_squares_per_tensor(tensors), first), count


def test_triton_sums_are_deterministic():
    _usable("triton")
    tensors = _tensors(torch.float32)
    triton = fusedopt.backends.get("triton")
    first = triton.sum_of_squares_per_tensor(tensors)
    assert torch.equal(triton.sum_of_squares_per_tensor(tensors), first)


def test_cuda_kernel_built_for_the_host_equals_the_cpu_kernel_bit_for_bit():
    host = pytest.importorskip("fusedopt._cuda_host", reason="fusedopt._cuda_host is not built")
    if not hasattr(host, "cuda_sum_of_squares_per_tensor"):
        pytest.skip("fusedopt._cuda_host predates the per-tensor reduction; rebuild it")
    from fusedopt.backends.native import DTYPE_CODES, _reduction_table, reduction_partials
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        tensors = _tensors(dtype) + [torch.randn(140_000).to(dtype)]
        out = torch.empty(len(tensors), dtype=torch.float64)
        partials = torch.empty(reduction_partials(tensors), dtype=torch.float64)
        table = _reduction_table(tensors)
        host.cuda_sum_of_squares_per_tensor(table.buffer_info()[0], len(tensors), DTYPE_CODES[dtype],
                                            partials.data_ptr(), partials.numel(), out.data_ptr(), 0, 0)
        assert torch.equal(out, fusedopt.backends.get("cpu").sum_of_squares_per_tensor(tensors))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_global_norm_is_the_sum_of_the_per_tensor_sums(backend):
    tensors = _tensors(torch.float32)
    b = fusedopt.backends.get(backend)
    assert torch.equal(b.sum_of_squares(tensors), b.sum_of_squares_per_tensor(tensors).sum())


# --------------------------------------------------------------------------- clip_grad_norm_per_tensor
def paddle_clip_by_norm(g: torch.Tensor, max_norm: float) -> torch.Tensor:
    """phi's clip_by_norm kernel, written out: g unchanged where ||g|| <= max_norm, else
    g * max_norm / (||g|| + eps), eps = 1e-6 only where ||g|| <= 1e-30."""
    norm = g.double().norm().item()
    if norm <= max_norm:
        return g.clone()
    eps = 1e-6 if norm <= 1e-30 else 0.0
    return g * (max_norm / (norm + eps))


CLIP_SHAPES = ((7, 5), (33,), (1,), (0,))


def _clip_params(seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=generator).to(dtype)) for s in CLIP_SHAPES]


def _clip_grads(step):
    generator = torch.Generator().manual_seed(50 + step)
    # scales 0.05 (never clipped) to 3 (clipped): both sides of the bound
    return [torch.randn(s, generator=generator) * scale for s, scale in zip(CLIP_SHAPES, (3.0, 0.05, 2.0, 1.0))]


# The optimizers that take the option (not Adafactor, which takes none of fusedopt's
# clipping options, nor SparseAdam, whose grads are sparse).
OPTIMIZERS = sorted(name for name in fusedopt.optim.__all__
                    if "clip_grad_norm_per_tensor" in inspect.signature(getattr(fusedopt.optim, name)).parameters)
LR = {"Adadelta": 1.0, "Rprop": 1e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_clip_per_tensor_equals_a_torch_loop(backend, name, dtype, max_norm=0.5):
    """Each grad clipped by its own norm (the hand-written loop, then the optimizer without
    the option) equals the option, step by step, for every registered optimizer; float64
    grads to float64's tolerance (their coefficients are float64, as the loop's)."""
    ours_params, loop_params = _clip_params(dtype=dtype), _clip_params(dtype=dtype)
    lr = LR.get(name, 1e-2)
    ours = getattr(fusedopt, name)(ours_params, lr=lr, backend=backend, clip_grad_norm_per_tensor=max_norm)
    loop = getattr(fusedopt, name)(loop_params, lr=lr, backend=backend)
    tolerance = dict(rtol=2e-6, atol=2e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    for step in range(5):
        grads = [g.to(dtype) for g in _clip_grads(step)]
        for p, q, g in zip(ours_params, loop_params, grads):
            p.grad = g.clone()
            q.grad = paddle_clip_by_norm(g, max_norm)
        ours.step()
        loop.step()
        for p, q, g in zip(ours_params, loop_params, grads):
            torch.testing.assert_close(p, q, **tolerance)
            assert torch.equal(p.grad, g)  # without GradScaler the grads are left as they were


@pytest.mark.parametrize("name", ["AdamW", "SGD", "LAMB"])
def test_clip_per_tensor_on_triton_equals_cpu(name):
    _usable("triton")
    params = {b: _clip_params() for b in ("cpu", "triton")}
    opts = {b: getattr(fusedopt, name)(ps, lr=1e-2, backend=b, clip_grad_norm_per_tensor=0.5, max_grad_norm=3.0)
            for b, ps in params.items()}
    for step in range(3):
        for b in params:
            for p, g in zip(params[b], _clip_grads(step)):
                p.grad = g.clone()
            opts[b].step()
    for p, q in zip(params["cpu"], params["triton"]):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_clip_per_tensor_after_gradscaler_and_global_clip(backend):
    """GradScaler's unscale, then max_grad_norm (torch's clip_grad_norm_), then each tensor's
    own clip: the grads written back are what those torch calls leave."""
    ours_params, torch_params = _clip_params(), _clip_params()
    ours = fusedopt.SGD(ours_params, lr=1e-2, momentum=0.9, backend=backend, max_grad_norm=4.0,
                        clip_grad_norm_per_tensor=0.5)
    theirs = torch.optim.SGD(torch_params, lr=1e-2, momentum=0.9, foreach=False)
    scalers = [torch.amp.GradScaler("cpu", init_scale=4.0, growth_interval=1000) for _ in range(2)]
    for step in range(3):
        given = [g * 4.0 for g in _clip_grads(step)]
        for params, optimizer, scaler in ((ours_params, ours, scalers[0]), (torch_params, theirs, scalers[1])):
            scaler.scale(torch.ones(()))
            for p, g in zip(params, given):
                p.grad = g.clone()
            if optimizer is theirs:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, 4.0)
                for p in params:
                    p.grad.copy_(paddle_clip_by_norm(p.grad, 0.5))
            scaler.step(optimizer)
            scaler.update()
        for p, q in zip(ours_params, torch_params):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, True, "1"])
def test_bad_clip_grad_norm_per_tensor_is_a_value_error(value):
    with pytest.raises(ValueError, match="clip_grad_norm_per_tensor"):
        fusedopt.Adam(_clip_params(), clip_grad_norm_per_tensor=value)


def test_state_dict_leaves_the_default_out_and_keeps_a_value():
    opt = fusedopt.SGD(_clip_params(), lr=0.1)
    assert "clip_grad_norm_per_tensor" not in opt.state_dict()["param_groups"][0]
    clipped = fusedopt.SGD(_clip_params(), lr=0.1, clip_grad_norm_per_tensor=0.5)
    saved = copy.deepcopy(clipped.state_dict())
    assert saved["param_groups"][0]["clip_grad_norm_per_tensor"] == 0.5
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["clip_grad_norm_per_tensor"] == 0.5
    fresh = fusedopt.SGD(_clip_params(), lr=0.1, clip_grad_norm_per_tensor=0.5)
    fresh.load_state_dict(fusedopt.SGD(_clip_params(), lr=0.1).state_dict())  # a checkpoint without the key
    assert fresh.param_groups[0]["clip_grad_norm_per_tensor"] is None
