"""fusedopt.Adafactor against torch.optim.Adafactor, step by step, on every backend that has
its "factored" kernels (reference, cpu; triton in tests/test_triton_adafactor.py): float64
to rounding, float32 close at every step, 16-bit params against a float32 torch run,
options, param groups, None grads, closures, schedulers, state_dict both ways, and
torch's errors for bad hyper-parameters and grads."""
from __future__ import annotations

import copy
import io

import pytest
import torch

import fusedopt
from fusedopt import backends

SHAPES = ((6, 5), (7,), (3, 4, 5), (), (2, 1, 3), (1,), (9, 1))
FACTORED_BACKENDS = ("reference", "cpu")

OPTIONS = {
    "default": {},
    "weight_decay": dict(weight_decay=0.1),
    "maximize": dict(maximize=True, weight_decay=0.05),
    "beta2_decay": dict(beta2_decay=-0.5),
    "eps1": dict(eps=(1e-3, 1e-3)),
    "eps_none": dict(eps=(None, 1e-2)),
    "d": dict(d=1.5),
    "lr": dict(lr=0.05),
    # torch computes its step sizes in the lr tensor's dtype, fusedopt in float64: a float64
    # tensor makes them the same numbers (a float32 one differs by float32 rounding of alpha)
    "lr_tensor": dict(lr=torch.tensor(0.05, dtype=torch.float64)),
    "lr_tensor_f32": dict(lr=torch.tensor(0.05)),
    "small_lr": dict(lr=1e-3, weight_decay=0.2),  # rho = lr from the first step
}


def usable(backend: str):
    return backends.unusable_reason(backend, torch.device("cpu"), "factored")


@pytest.fixture(params=FACTORED_BACKENDS)
def factored_backend(request) -> str:
    reason = usable(request.param)
    if reason:
        pytest.skip(reason)
    return request.param


def make_values(shapes=SHAPES, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


def make_grads(shapes, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(steps)]


def options_copy(options):
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in options.items()}


def trajectories(backend, options, dtype, steps=22, shapes=SHAPES, torch_dtype=None):
    """(ours, torch's) params after each step, from the same values and grads."""
    values = make_values(shapes)
    grads = make_grads(shapes, steps)
    ours = [torch.nn.Parameter(v.to(dtype).clone()) for v in values]
    theirs = [torch.nn.Parameter(v.to(torch_dtype or dtype).clone()) for v in values]
    opt = fusedopt.Adafactor(ours, backend=backend, **options_copy(options))
    ref = torch.optim.Adafactor(theirs, foreach=False, **options_copy(options))
    history = []
    for step in grads:
        for p, q, g in zip(ours, theirs, step):
            p.grad, q.grad = g.to(p.dtype), g.to(q.dtype)
        opt.step()
        ref.step()
        history.append(([p.detach().clone() for p in ours], [q.detach().clone() for q in theirs]))
    return history, (ours, opt), (theirs, ref)


@pytest.mark.parametrize("name", [name for name in OPTIONS if name != "lr_tensor_f32"])
def test_float64_matches_torch_to_rounding(name, factored_backend):
    history, (ours, opt), (theirs, ref) = trajectories(factored_backend, OPTIONS[name], torch.float64)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)
        assert set(opt.state[p]) == set(ref.state[q])
        for key, value in ref.state[q].items():
            torch.testing.assert_close(opt.state[p][key].double(), value.double().to(p.device), rtol=1e-12,
                                       atol=1e-14, msg=key)
            if key != "step":
                assert opt.state[p][key].dtype == value.dtype and opt.state[p][key].shape == value.shape


@pytest.mark.parametrize("name", ["default", "weight_decay", "maximize", "eps_none", "lr_tensor_f32", "d"])
def test_float32_matches_torch_at_every_step(name, factored_backend):
    history, _, _ = trajectories(factored_backend, OPTIONS[name], torch.float32)
    for step, (ours, theirs) in enumerate(history):
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p, q, rtol=2e-5, atol=2e-6, msg=f"step {step + 1}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_16_bit_params_follow_a_float32_run_as_closely_as_torchs_own(dtype, factored_backend):
    """Computed in float32, rounded once per step: at most about twice the error of torch's
    own run in that dtype, both measured against torch in float32 with the same eps1."""
    options = dict(eps=(torch.finfo(dtype).eps, 1e-3), weight_decay=0.01)
    shapes = ((16, 12), (24,), (2, 8, 6))
    steps = 12
    _, (ours, _), (exact, _) = trajectories(factored_backend, options, dtype, steps, shapes, torch.float32)
    _, (torch_low, _), _ = trajectories("reference", options, dtype, steps, shapes, torch.float32)
    values = make_values(shapes)
    torch_own = [torch.nn.Parameter(v.to(dtype)) for v in values]
    ref = torch.optim.Adafactor(torch_own, foreach=False, **options)
    for step in make_grads(shapes, steps):
        for p, g in zip(torch_own, step):
            p.grad = g.to(dtype)
        ref.step()
    for p, q, t in zip(ours, exact, torch_own):
        assert p.dtype == dtype
        ours_error = (p.float() - q).abs().max().item()
        torch_error = (t.float() - q).abs().max().item()
        assert ours_error <= 2 * torch_error + 1e-3 * q.abs().max().item(), (ours_error, torch_error)
    del torch_low


def test_param_groups_none_grads_and_closure(factored_backend):
    values = make_values()
    ours = [torch.nn.Parameter(v.clone()) for v in values]
    theirs = [torch.nn.Parameter(v.clone()) for v in values]

    def groups(ps):
        return [{"params": ps[:3], "weight_decay": 0.1}, {"params": ps[3:], "lr": 0.03, "maximize": True}]

    opt = fusedopt.Adafactor(groups(ours), backend=factored_backend)
    ref = torch.optim.Adafactor(groups(theirs))
    for step, grads in enumerate(make_grads(SHAPES, 21)):
        def closure(ps, gs):
            def run():
                for i, (p, g) in enumerate(zip(ps, gs)):
                    # param 1 gets no grad on odd steps, param 4 never does
                    p.grad = None if i == 4 or (i == 1 and step % 2) else g.clone()
                return torch.tensor(float(step))
            return run
        assert opt.step(closure(ours, grads)).item() == step
        ref.step(closure(theirs, grads))
    assert not opt.state.get(ours[4]) and not ref.state.get(theirs[4])  # never had a grad: no state
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(opt.state.get(p, {}).get("step"), ref.state.get(q, {}).get("step"))


@pytest.mark.parametrize("tensor_lr", [False, True])
def test_schedulers(tensor_lr, factored_backend):
    values = make_values()
    lr = torch.tensor(0.02, dtype=torch.float64) if tensor_lr else 0.02  # see OPTIONS["lr_tensor"]
    ours = [torch.nn.Parameter(v.clone()) for v in values]
    theirs = [torch.nn.Parameter(v.clone()) for v in values]
    opt = fusedopt.Adafactor(ours, lr=lr.clone() if tensor_lr else lr, weight_decay=0.1, backend=factored_backend)
    ref = torch.optim.Adafactor(theirs, lr=lr.clone() if tensor_lr else lr, weight_decay=0.1)
    schedules = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.8) for o in (opt, ref)]
    for grads in make_grads(SHAPES, 20):
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        for s in schedules:
            s.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)


def _roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("direction", ["torch_to_fusedopt", "fusedopt_to_torch"])
def test_state_dict_moves_both_ways_and_training_continues(direction, factored_backend):
    values = make_values()
    grads = make_grads(SHAPES, 24)
    options = dict(lr=0.02, weight_decay=0.1, eps=(None, 1e-3))
    make_ours = lambda ps: fusedopt.Adafactor(ps, backend=factored_backend, **options)  # noqa: E731
    make_theirs = lambda ps: torch.optim.Adafactor(ps, **options)  # noqa: E731
    first, second = (make_theirs, make_ours) if direction == "torch_to_fusedopt" else (make_ours, make_theirs)
    # the uninterrupted run, in torch
    straight = [torch.nn.Parameter(v.clone()) for v in values]
    straight_opt = make_theirs(straight)
    for step in grads:
        for p, g in zip(straight, step):
            p.grad = g.clone()
        straight_opt.step()
    # 12 steps with one, a checkpoint, 12 with the other
    params = [torch.nn.Parameter(v.clone()) for v in values]
    opt = first(params)
    for step in grads[:12]:
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()
    saved = _roundtrip(opt.state_dict())
    assert set(saved["param_groups"][0]) == {"lr", "beta2_decay", "eps", "d", "weight_decay", "foreach", "maximize",
                                             "params"}
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = second(resumed)
    opt2.load_state_dict(saved)
    for step in grads[12:]:
        for p, g in zip(resumed, step):
            p.grad = g.clone()
        opt2.step()
    for p, q in zip(resumed, straight):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)
    for p, q in zip(resumed, straight):
        for key, value in straight_opt.state[q].items():
            torch.testing.assert_close(opt2.state[p][key].double().cpu(), value.double(), rtol=1e-12, atol=1e-14)


def test_state_dict_keeps_the_backend_out_and_loads_into_itself(factored_backend):
    params = [torch.nn.Parameter(v.clone()) for v in make_values()]
    opt = fusedopt.Adafactor(params, backend=factored_backend)
    for p, g in zip(params, make_grads(SHAPES, 1)[0]):
        p.grad = g
    opt.step()
    state = opt.state_dict()
    assert "backend" not in state["param_groups"][0]
    clone = fusedopt.Adafactor(params, backend=factored_backend)
    clone.load_state_dict(copy.deepcopy(state))
    assert clone.param_groups[0]["backend"] == factored_backend
    opt.step()
    clone.step()


CONSTRUCTION_ERRORS = [
    dict(lr=-0.1),
    dict(lr=torch.tensor([0.1, 0.2])),
    dict(beta2_decay=0.8),
    dict(eps=(-1e-30, 1e-3)),
    dict(eps=(None, -1e-3)),
    dict(d=0.5),
    dict(weight_decay=-0.1),
]


@pytest.mark.parametrize("kwargs", CONSTRUCTION_ERRORS, ids=lambda k: ",".join(k))
def test_bad_hyperparameters_raise_torchs_error(kwargs):
    params = [torch.nn.Parameter(torch.zeros(2, 3))]
    with pytest.raises(Exception) as theirs:
        torch.optim.Adafactor(params, **kwargs)
    with pytest.raises(type(theirs.value)) as ours:
        fusedopt.Adafactor(params, **kwargs)
    assert str(ours.value) == str(theirs.value)
    assert isinstance(ours.value, ValueError)


def test_sparse_grads_are_refused_clearly(factored_backend):
    p = torch.nn.Parameter(torch.zeros(4, 3))
    opt = fusedopt.Adafactor([p], backend=factored_backend)
    p.grad = torch.eye(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match="Adafactor does not support sparse gradients"):
        opt.step()
    assert torch.equal(p, torch.zeros(4, 3))


def test_complex_params_are_refused_as_torch_does(factored_backend):
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.complex64))
    opt = fusedopt.Adafactor([p], backend=factored_backend)
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="Adafactor does not support complex parameters"):
        opt.step()


def test_non_contiguous_params_are_refused_clearly(factored_backend):
    p = torch.nn.Parameter(torch.zeros(3, 4).t())
    opt = fusedopt.Adafactor([p], backend=factored_backend)
    p.grad = torch.ones(3, 4).t()
    with pytest.raises(RuntimeError, match="params must be contiguous"):
        opt.step()


def test_state_of_the_wrong_shape_is_refused_before_any_update(factored_backend):
    params = [torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5))]
    opt = fusedopt.Adafactor(params, backend=factored_backend)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    before = [p.detach().clone() for p in params]
    opt.state[params[0]]["row_var"] = torch.zeros(4, 1)
    with pytest.raises(RuntimeError, match="state 'row_var' of a param has shape"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def _grads_at_one_address(params, flat):
    """New grad tensor objects, each step, over the same memory (a flat grad buffer, as DDP's
    gradient_as_bucket_view gives): the element table's grad row stays valid."""
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view(p.shape)
        offset += p.numel()


@pytest.mark.parametrize("same_grad_objects", [True, False], ids=["same grads", "new grads, same address"])
def test_a_moment_freed_in_place_is_refused_not_written(same_grad_objects, factored_backend):
    """A moment's storage resized to 0 under its tensor (as FSDP-style code frees memory):
    the cached factored table still held its address, and the next step wrote the freed
    memory (heap corruption, or a crash on the reference backend). Its storages are now
    held and compared each step, as the buckets compare their state's."""
    params = [torch.nn.Parameter(torch.randn(64, 32)), torch.nn.Parameter(torch.randn(40))]
    flat = torch.randn(64 * 32 + 40)
    opt = fusedopt.Adafactor(params, lr=0.01, backend=factored_backend)
    for _ in range(2):
        if same_grad_objects:
            for p, g in zip(params, (flat[:2048].view(64, 32), flat[2048:])):
                if p.grad is None:
                    p.grad = g
        else:
            _grads_at_one_address(params, flat)
        opt.step()
    opt.state[params[0]]["row_var"].untyped_storage().resize_(0)
    if not same_grad_objects:
        _grads_at_one_address(params, flat)
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match="state 'row_var' of a param reaches byte"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_a_param_reshaped_in_place_is_refused_as_torch_does(factored_backend):
    """`p.data = p.data.view(4, 2)` keeps the address and the byte count, but the factored
    moments follow the shape: torch.optim.Adafactor raises, and so does fusedopt (it used
    to keep factoring with the old shape when the grads' address did not change)."""
    p = torch.nn.Parameter(torch.randn(2, 4))
    flat = torch.randn(8)
    opt = fusedopt.Adafactor([p], backend=factored_backend)
    for _ in range(2):
        _grads_at_one_address([p], flat)
        opt.step()
    p.data = p.data.view(4, 2)
    _grads_at_one_address([p], flat)
    with pytest.raises(RuntimeError, match="state 'row_var' of a param has shape"):
        opt.step()


def test_empty_params_advance_their_step_only(factored_backend):
    params = [torch.nn.Parameter(torch.zeros(0, 3)), torch.nn.Parameter(torch.zeros(0)),
              torch.nn.Parameter(torch.ones(2, 2))]
    opt = fusedopt.Adafactor(params, backend=factored_backend)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert [opt.state[p]["step"].item() for p in params] == [1.0, 1.0, 1.0]
    assert not torch.equal(params[2], torch.ones(2, 2))


def test_cpu_matches_the_reference_and_is_deterministic_across_threads(threads):
    if usable("cpu"):
        pytest.skip(usable("cpu"))
    shapes = ((300, 257), (5000,), (3, 70, 33), (1, 1))  # several work items per tensor
    results = []
    for backend, n in (("reference", 1), ("cpu", 1), ("cpu", 2), ("cpu", 2)):
        threads(n)
        params = [torch.nn.Parameter(v.float()) for v in make_values(shapes)]
        opt = fusedopt.Adafactor(params, backend=backend, weight_decay=0.1)
        for step in make_grads(shapes, 5):
            for p, g in zip(params, step):
                p.grad = g.float()
            opt.step()
        results.append([p.detach().clone() for p in params] + [t for p in params for t in opt.state[p].values()])
    for a, b in zip(results[0], results[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b, c in zip(*results[1:]):
        assert torch.equal(a, b) and torch.equal(b, c)


def test_a_backend_without_factored_kernels_is_refused_by_name_and_skipped_by_auto(monkeypatch):
    device = torch.device("cpu")
    # Every backend has them now (cuda since csrc/cuda/factored.cu): take them from one.
    monkeypatch.setattr(backends.get("cuda"), "kernels", ("elementwise",))
    lacking = [name for name in backends.BACKEND_NAMES[1:]
               if backends.get(name).kernel_missing_reason("factored") is not None]
    assert lacking == ["cuda"]
    for name in lacking:
        with pytest.raises(RuntimeError, match="factored kernels|cannot run on"):
            fusedopt.Adafactor([torch.nn.Parameter(torch.zeros(2, 2))], backend=name)
    chosen = backends.choose("auto", device, "factored").name
    assert chosen not in lacking and chosen in backends.available(device, "factored")
    support = next(iter(fusedopt.info()["devices"]["cpu"]["kernels"].values()))
    assert support["auto"] == chosen and "cuda" in support["without_kernels"]


def test_gradscaler_unscales_for_it_as_for_torch():
    """GradScaler hands its scale only to optimizers that take it; torch's Adafactor does not."""
    assert fusedopt.Adafactor([torch.nn.Parameter(torch.zeros(2))])._step_supports_amp_scaling is False
