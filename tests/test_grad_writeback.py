"""p.grad after the step, with torch.amp.GradScaler and max_grad_norm (issue 9, part 3).

torch's fused optimizers, given GradScaler's scale, store grad / scale back into p.grad;
a step skipped for an inf or NaN returns before touching the grads. torch's
`scaler.unscale_` + `clip_grad_norm_` leave the grads unscaled and clipped. fusedopt's
kernels, given GradScaler's scale, unscale (and clip) on every backend and write that grad
back, so p.grad after `scaler.step(optimizer)` is torch's, bit for bit where torch's
arithmetic is the same; max_grad_norm alone writes nothing back.

The grads are handed to both sides as given tensors (not from a backward pass), so that
the two runs see the same bits whatever their params' rounding.
"""
import pytest
import torch

import fusedopt

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BACKENDS = {"cpu": ("reference", "cpu", "triton"), "cuda": ("cuda", "triton")}
CASES = [(device, backend) for device in DEVICES for backend in BACKENDS[device]]
CASE_IDS = [f"{device}-{backend}" for device, backend in CASES]
SHAPES = [(7, 5), (33,), (1,)]
HYPER = {"Adam": {"lr": 1e-2}, "AdamW": {"lr": 1e-2}, "SGD": {"lr": 1e-2, "momentum": 0.9},
         "RMSprop": {"lr": 1e-3, "centered": True, "momentum": 0.5}}


def _params(device, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).to(device, dtype).requires_grad_() for shape in SHAPES]


def _grads(params, scale, step, inf=False):
    """Scaled grads (as a scaler.scale(loss).backward() would leave them), the same every run."""
    generator = torch.Generator().manual_seed(100 + step)
    grads = [(torch.randn(p.shape, generator=generator) * scale).to(p.device, p.dtype) for p in params]
    if inf:
        grads[0].view(-1)[3] = float("inf")
    return grads


def _scaler(device, scale):
    scaler = torch.amp.GradScaler(device, init_scale=scale, growth_interval=1000)
    scaler.scale(torch.ones((), device=device))  # sets up the scale, as scaling a loss does
    return scaler


def _step(optimizer, params, grads, scaler):
    for p, g in zip(params, grads):
        p.grad = g.clone()
    scaler.step(optimizer)
    scaler.update()
    return [p.grad for p in params]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD"])
@pytest.mark.parametrize("device,backend", CASES, ids=CASE_IDS)
def test_grads_after_scaler_step_are_torch_fused_ones(device, backend, name, dtype):
    """A scale of 3 (not a power of two): torch's fused kernels divide by it, so must we."""
    if dtype == torch.float16 and device == "cpu":
        pytest.skip("torch's fused CPU optimizers take no float16 params")
    ours_params, torch_params = _params(device, dtype), _params(device, dtype)
    ours = getattr(fusedopt, name)(ours_params, backend=backend, **HYPER[name])
    theirs = getattr(torch.optim, name)(torch_params, fused=True, **HYPER[name])
    scalers = _scaler(device, 3.0), _scaler(device, 3.0)
    for step in range(3):
        skipped = step == 1
        given = _grads(ours_params, scalers[0].get_scale(), step, inf=skipped)
        ours_grads = _step(ours, ours_params, given, scalers[0])
        torch_grads = _step(theirs, torch_params, given, scalers[1])
        for mine, torchs, g in zip(ours_grads, torch_grads, given):
            assert torch.equal(mine, torchs), f"step {step}: p.grad differs from torch's fused {name}"
            if skipped:  # untouched: still scaled, the inf included
                assert torch.equal(mine, g)
            else:
                assert not torch.equal(mine, g)


@pytest.mark.parametrize("device,backend", CASES, ids=CASE_IDS)
def test_rmsprop_grads_after_scaler_step_are_unscaled(device, backend):
    """torch has no fused RMSprop; its scaler then unscales in place (times 1/scale, the same
    bits as / scale for a power of two). fusedopt leaves a skipped step's grads scaled, as
    torch's fused optimizers do."""
    ours_params, torch_params = _params(device, torch.float32), _params(device, torch.float32)
    ours = fusedopt.RMSprop(ours_params, backend=backend, **HYPER["RMSprop"])
    theirs = torch.optim.RMSprop(torch_params, **HYPER["RMSprop"])
    scalers = _scaler(device, 2.0**10), _scaler(device, 2.0**10)
    for step in range(3):
        skipped = step == 1
        given = _grads(ours_params, scalers[0].get_scale(), step, inf=skipped)
        ours_grads = _step(ours, ours_params, given, scalers[0])
        torch_grads = _step(theirs, torch_params, given, scalers[1])
        for mine, torchs, g in zip(ours_grads, torch_grads, given):
            assert torch.equal(mine, g if skipped else torchs), f"step {step}"


@pytest.mark.parametrize("name", ["Adam", "SGD", "RMSprop"])
@pytest.mark.parametrize("device,backend", CASES, ids=CASE_IDS)
def test_grads_after_clipped_step_are_torch_clip_grad_norm_ones(device, backend, name):
    """max_grad_norm with GradScaler against torch's recipe, scaler.unscale_ then
    clip_grad_norm_: p.grad ends unscaled and clipped on both sides (to rounding: the two
    norms are summed in different orders)."""
    ours_params, torch_params = _params(device, torch.float32), _params(device, torch.float32)
    ours = getattr(fusedopt, name)(ours_params, backend=backend, max_grad_norm=0.5, **HYPER[name])
    theirs = getattr(torch.optim, name)(torch_params, **HYPER[name])
    scalers = _scaler(device, 2.0**8), _scaler(device, 2.0**8)
    for step in range(2):
        given = _grads(ours_params, scalers[0].get_scale(), step)
        ours_grads = _step(ours, ours_params, given, scalers[0])
        for p, g in zip(torch_params, given):
            p.grad = g.clone()
        scalers[1].unscale_(theirs)
        assert torch.nn.utils.clip_grad_norm_(torch_params, 0.5) > 0.5  # the clip is active
        scalers[1].step(theirs)
        scalers[1].update()
        for mine, p in zip(ours_grads, torch_params):
            torch.testing.assert_close(mine, p.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("device,backend", CASES, ids=CASE_IDS)
def test_grads_after_clipped_step_without_scaler(device, backend):
    """max_grad_norm alone leaves p.grad as it was: the clip is applied while the grads are
    read, and writing them back would cost a write of every grad element in a memory-bound
    step (torch's fused optimizers write back only GradScaler's unscaled grads)."""
    params = _params(device, torch.float32)
    optimizer = fusedopt.AdamW(params, backend=backend, max_grad_norm=0.5)
    given = _grads(params, 1.0, 0)
    for p, g in zip(params, given):
        p.grad = g.clone()
    optimizer.step()
    for p, g in zip(params, given):
        assert torch.equal(p.grad, g)


@pytest.mark.parametrize("device,backend", CASES, ids=CASE_IDS)
def test_expanded_grad_with_scaler_is_refused_before_any_write(device, backend):
    """The unscaled grad cannot be written back into an expanded view; torch's unscale_
    refuses it too. Nothing may change before the error."""
    param = torch.randn(3, 4, device=device, requires_grad=True)
    before = param.detach().clone()
    param.grad = torch.randn(4, device=device).expand(3, 4)
    optimizer = fusedopt.Adam([param], backend=backend)
    with pytest.raises(RuntimeError, match="single memory location"):  # torch's GradScaler refuses it first
        _scaler(device, 4.0).step(optimizer)
    optimizer.grad_scale = torch.tensor(4.0, device=device)  # as GradScaler hands it over
    optimizer.found_inf = torch.tensor(0.0, device=device)
    with pytest.raises(RuntimeError, match="expanded"):
        optimizer.step()
    assert torch.equal(param.detach(), before)
    assert all(not value.any() for value in optimizer.state[param].values())  # as lazily created: no step taken


@pytest.mark.parametrize("device,backend", CASES, ids=CASE_IDS)
def test_grads_laid_out_unlike_their_params_get_the_values(device, backend):
    """A grad with other strides than its param is read through a copy in the param's
    layout; the unscaled values must still reach the user's p.grad, the same tensor.
    (Against torch's for-loop Adam: torch's fused Adam, given such a grad, pairs the
    wrong elements in torch 2.13. A power-of-two scale: the for-loop path multiplies by
    1/scale.)"""
    param = torch.randn(6, 4).to(device).t().requires_grad_()  # dense, not contiguous
    twin = param.detach().clone().requires_grad_()
    ours = fusedopt.Adam([param], backend=backend)
    theirs = torch.optim.Adam([twin], foreach=False)
    scalers = _scaler(device, 4.0), _scaler(device, 4.0)
    grad = torch.randn(4, 6, device=device) * 4.0  # contiguous: strides unlike the param's
    assert grad.stride() != param.stride()
    param.grad = grad
    twin.grad = grad.clone()
    for optimizer, scaler in zip((ours, theirs), scalers):
        scaler.step(optimizer)
    assert param.grad is grad
    assert torch.equal(param.grad, twin.grad)
    torch.testing.assert_close(param.detach(), twin.detach(), rtol=1e-6, atol=1e-7)


def test_update_op_writes_grads_declared_mutable():
    """The torch.library op declares the grads it writes: torch.compile must know."""
    import fusedopt._ops  # noqa: F401  (registers the op)

    schema = torch.ops.fusedopt.update_.default._schema
    mutable = {a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write}
    assert "grads" in mutable
