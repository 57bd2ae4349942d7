"""The Triton backend against torch.optim, the reference backend and float64 formulas.

Without a GPU the kernels run on CPU tensors under Triton's interpreter, which
@triton.jit selects when fusedopt's kernels are defined: TRITON_INTERPRET must be set
before fusedopt (and with it triton) is first imported. `import torch` does not import
triton, so this module sets it right after asking torch whether there is a GPU. Should
another test module have imported fusedopt first (pytest imports every test module
before running any), the fixture `interpreted_kernels` rebuilds the kernels for the
interpreter for this module's tests and rebuilds them as they were afterwards. With a
GPU the same tests run the compiled kernels on CUDA tensors.

The interpreter is slow (tens of milliseconds per program), so sizes are small and
options are combined so that each is tested on and off rather than crossed exhaustively.
"""
from __future__ import annotations

import importlib
import math
import os
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()
_INTERPRET_BEFORE = os.environ.get("TRITON_INTERPRET")
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # before anything below imports triton

pytest.importorskip("triton")

import fusedopt  # noqa: E402
from fusedopt import backends  # noqa: E402
from fusedopt.backends import triton as triton_backend  # noqa: E402
from _compare import ONE_ULP, TOLERANCES  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = torch.device("cuda" if CUDA else "cpu")

# Odd sizes, an empty tensor, one that needs four full blocks and a tail (BLOCK=1024).
SIZES = (1, 3, 0, 17, 1000, 4097)
MISALIGNED = 33  # one more param: elements 1..33 of a 34-element allocation

# The suite's tolerance table (_compare.py): float32/float64 against torch.optim (torch's
# CPU kernels fuse some multiply-adds, the kernels do not: a few ulps after 10 steps), and
# one ulp of a 16-bit dtype against the reference backend.
TOLERANCE = {**TOLERANCES, **ONE_ULP}
STEPS = 10


def _rebuild_kernels() -> None:
    # Every module of the package re-runs its @triton.jit decorators under the current
    # environment: drop them all, so the reload imports the skeleton and kinds afresh.
    for name in [m for m in sys.modules if m.startswith(triton_backend.__name__ + ".")]:
        del sys.modules[name]
    importlib.reload(triton_backend)
    backends.register(triton_backend.TritonBackend())
    for key in [k for k, b in backends._resolved.items() if b.name == "triton"]:
        del backends._resolved[key]


@pytest.fixture(scope="module", autouse=True)
def interpreted_kernels():
    rebuilt = not CUDA and not triton_backend._interpreted()
    if rebuilt:
        _rebuild_kernels()
    yield
    if _INTERPRET_BEFORE is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _INTERPRET_BEFORE
    if rebuilt:  # give the rest of the session the module it had
        _rebuild_kernels()


# ----------------------------------------------------------------------------- helpers
def make_params(dtype, sizes=SIZES, misaligned=MISALIGNED, seed=0):
    """Params with the same values on every call; the last one is a misaligned view."""
    generator = torch.Generator().manual_seed(seed)
    values = [torch.randn(n, generator=generator, dtype=torch.float64) for n in sizes]
    params = [v.to(DEVICE, dtype) for v in values]
    if misaligned:
        storage = torch.randn(misaligned + 1, generator=generator, dtype=torch.float64).to(DEVICE, dtype)
        params.append(storage[1:])  # a view of a tensor without grad is a leaf
    for p in params:
        p.requires_grad_()
    return params


def grads_for(params, step):
    """The same gradients for every run, in the params' dtype."""
    generator = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(DEVICE, p.dtype) for p in params]


def train(make_optimizer, dtype, steps=STEPS, **param_kwargs):
    params = make_params(dtype, **param_kwargs)
    optimizer = make_optimizer(params)
    for step in range(steps):
        for p, g in zip(params, grads_for(params, step)):
            p.grad = g
        optimizer.step()
    return params, optimizer


def fused_run(name, kwargs, backend, dtype, **train_kwargs):
    return train(lambda ps: getattr(fusedopt, name)(ps, backend=backend, **kwargs), dtype, **train_kwargs)


def torch_run(name, kwargs, dtype, fused=None, **train_kwargs):
    kwargs = {k: v for k, v in kwargs.items() if k != "optimized_update"}
    if fused:
        kwargs["fused"] = True
    return train(lambda ps: getattr(torch.optim, name)(ps, **kwargs), dtype, **train_kwargs)


def state_tensors(optimizer, params):
    """Every param's state in a fixed order (steps included), for comparisons."""
    return [optimizer.state[p][k] for p in params for k in sorted(optimizer.state[p])]


def assert_all_close(actual, expected, **tolerance):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.detach().cpu(), e.detach().cpu(), **tolerance)


def case_id(case):
    name, kwargs = case
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items())


# ----------------------------------------------------------------------------- float32, every option
CASES = [
    ("Adam", {}),
    ("Adam", dict(amsgrad=True)),
    ("Adam", dict(maximize=True, weight_decay=0.1)),
    ("Adam", dict(amsgrad=True, maximize=True, weight_decay=0.1, betas=(0.8, 0.99), lr=0.01)),
    ("AdamW", {}),
    ("AdamW", dict(amsgrad=True, weight_decay=0.1)),
    ("AdamW", dict(maximize=True, weight_decay=0.0)),
    ("AdamW", dict(amsgrad=True, maximize=True, lr=0.01, eps=1e-3)),
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.5)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.8, dampening=0.3, weight_decay=0.1, maximize=True)),
    ("SGD", dict(lr=0.1, weight_decay=0.1, maximize=True)),
    ("RMSprop", {}),
    ("RMSprop", dict(centered=True)),
    ("RMSprop", dict(momentum=0.9)),
    ("RMSprop", dict(weight_decay=0.1, maximize=True)),
    ("RMSprop", dict(centered=True, momentum=0.9, weight_decay=0.1, maximize=True, alpha=0.9, lr=1e-3)),
]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_float32_matches_torch_and_reference(case):
    name, kwargs = case
    params, optimizer = fused_run(name, kwargs, "triton", torch.float32)
    expected, torch_optimizer = torch_run(name, kwargs, torch.float32)
    reference, reference_optimizer = fused_run(name, kwargs, "reference", torch.float32)
    assert_all_close(params, expected, **TOLERANCE[torch.float32])
    assert_all_close(state_tensors(optimizer, params), state_tensors(torch_optimizer, expected),
                     **TOLERANCE[torch.float32])
    assert_all_close(params, reference, **TOLERANCE[torch.float32])
    assert_all_close(state_tensors(optimizer, params), state_tensors(reference_optimizer, reference),
                     **TOLERANCE[torch.float32])


@pytest.mark.parametrize("name,kwargs", [
    ("Adam", dict(amsgrad=True, weight_decay=0.1)),
    ("AdamW", dict(maximize=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("RMSprop", dict(centered=True, momentum=0.9, weight_decay=0.1)),
], ids=["Adam", "AdamW", "SGD", "RMSprop"])
def test_float64_matches_torch(name, kwargs):
    sizes = (1, 17, 1000, 0)
    params, optimizer = fused_run(name, kwargs, "triton", torch.float64, sizes=sizes)
    expected, torch_optimizer = torch_run(name, kwargs, torch.float64, sizes=sizes)
    assert_all_close(params, expected, **TOLERANCE[torch.float64])
    assert_all_close(state_tensors(optimizer, params), state_tensors(torch_optimizer, expected),
                     **TOLERANCE[torch.float64])


# ----------------------------------------------------------------------------- 16-bit params
LOW_PRECISION_CASES = [
    ("Adam", dict(lr=0.05, weight_decay=0.1)),
    ("AdamW", dict(lr=0.05, amsgrad=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5)),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=case_id)
def test_low_precision(case, dtype):
    """16-bit params compute in float32 and round once per step, like torch's fused kernels.

    Two checks. (1) Against the reference backend, which does the same float32 math:
    TOLERANCE[dtype], one ulp of the dtype. (2) flash-attention's rule, against a float32
    trajectory from the same start and gradients: the error is at most twice
    torch.optim's own in this dtype (fused=True where torch has a fused kernel, which also
    rounds once; RMSprop has none and rounds every operation). Learning rates are large
    enough for the updates to survive the rounding.
    """
    name, kwargs = case
    sizes = (1, 17, 1000, 0)
    params, _ = fused_run(name, kwargs, "triton", dtype, sizes=sizes)
    reference, _ = fused_run(name, kwargs, "reference", dtype, sizes=sizes)
    assert_all_close(params, reference, **TOLERANCE[dtype])

    fused = name != "RMSprop"
    torch_params, _ = torch_run(name, kwargs, dtype, fused=fused, sizes=sizes)
    start = make_params(dtype, sizes=sizes)
    # The float32 run starts from the 16-bit values and sees the 16-bit gradients.
    truth = _float32_trajectory(name, kwargs, start)

    def error(ps):
        return max((p.float() - t).abs().max().item() for p, t in zip(ps, truth) if p.numel())

    ulp = torch.finfo(dtype).eps  # at the params' scale
    moved = max((p.float() - s.float()).abs().max().item() for p, s in zip(params, start) if p.numel())
    assert moved > 10 * ulp  # the test means something: params moved by many ulps
    assert error(params) <= 2 * error(torch_params) + ulp, (error(params), error(torch_params))


def _float32_trajectory(name, kwargs, start):
    params = [s.detach().float().requires_grad_() for s in start]
    optimizer = getattr(torch.optim, name)(params, **kwargs)
    for step in range(STEPS):
        for p, g in zip(params, grads_for(start, step)):
            p.grad = g.float()
        optimizer.step()
    return params


# ----------------------------------------------------------------------------- Adam's two forms
def _adam_float64(params, kwargs, optimized_update, decoupled, steps=STEPS):
    """Kingma & Ba, Algorithm 1, in float64: with optimized_update the "efficient" form
    of section 2 (eps added to sqrt(v) before the bias correction); else torch's."""
    lr, eps, wd = kwargs.get("lr", 1e-3), kwargs.get("eps", 1e-8), kwargs.get("weight_decay", 0.0)
    beta1, beta2 = kwargs.get("betas", (0.9, 0.999))
    ps = [p.detach().double().clone() for p in params]
    ms = [torch.zeros_like(p) for p in ps]
    vs = [torch.zeros_like(p) for p in ps]
    for t in range(1, steps + 1):
        for p, m, v, g in zip(ps, ms, vs, grads_for(params, t - 1)):
            g = g.double()
            if decoupled:
                p.mul_(1 - lr * wd)
            else:
                g = g + wd * p
            m.mul_(beta1).add_((1 - beta1) * g)
            v.mul_(beta2).add_((1 - beta2) * g * g)
            if optimized_update:
                step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                p.sub_(step_size * m / (v.sqrt() + eps))
            else:
                p.sub_(lr / (1 - beta1**t) * m / (v.sqrt() / math.sqrt(1 - beta2**t) + eps))
    return ps


@pytest.mark.parametrize("optimized_update", [False, True], ids=["torch-form", "optimized-form"])
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_forms_match_float64_formula(name, optimized_update):
    """eps=1e-3 makes the two forms differ by far more than the tolerance."""
    kwargs = dict(lr=0.01, eps=1e-3, weight_decay=0.1, optimized_update=optimized_update)
    sizes = (1, 17, 1000, 0)
    params, _ = fused_run(name, kwargs, "triton", torch.float32, sizes=sizes)
    reference, _ = fused_run(name, kwargs, "reference", torch.float32, sizes=sizes)
    start = make_params(torch.float32, sizes=sizes)
    expected = _adam_float64(start, kwargs, optimized_update, decoupled=name == "AdamW")
    other_form = _adam_float64(start, kwargs, not optimized_update, decoupled=name == "AdamW")
    assert_all_close([p.double() for p in params], expected, rtol=1e-5, atol=1e-6)
    assert_all_close(params, reference, **TOLERANCE[torch.float32])
    gap = max((e - o).abs().max().item() for e, o in zip(expected, other_form) if e.numel())
    assert gap > 1e-3


# ----------------------------------------------------------------------------- GradScaler, clipping, master weights
# What every optimizer does to a grad first (g / grad_scale * clip_coef), GradScaler's skip
# (found_inf != 0: params, states and step counters unchanged) and fp32 master weights for
# 16-bit params, against the reference backend, which implements them as the spec.
AMP_CASES = [
    ("Adam", dict(lr=0.05, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.05, weight_decay=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5, maximize=True)),
]
AMP_SIZES = (1, 17, 1000, 0)
AMP_STEPS = 6
# found_inf on the skipped steps: the first (states just created), and a later one with a
# value other than 1 (GradScaler sums the flags of several devices).
SKIPPED = {0: 1.0, 3: 2.0}
GRAD_SCALE = 3.0  # not a power of two: dividing by it rounds, so the division's order matters
MAX_GRAD_NORM = 5.0  # the grads' (unscaled) norm is ~30: the clip is active on every step


def amp_run(name, kwargs, backend, dtype, *, grad_scale=None, found_inf=False, max_grad_norm=None,
            master_weights=False):
    """Steps given GradScaler's inputs as GradScaler hands them over (optimizer.grad_scale,
    optimizer.found_inf); the grads are the usual ones times grad_scale. Checks that every
    skipped step leaves params, states and step counters as they were."""
    params = make_params(dtype, sizes=AMP_SIZES)
    optimizer = getattr(fusedopt, name)(params, backend=backend, master_weights=master_weights,
                                        max_grad_norm=max_grad_norm, **kwargs)
    for step in range(AMP_STEPS):
        for p, g in zip(params, grads_for(params, step)):
            p.grad = g if grad_scale is None else (g.double() * grad_scale).to(dtype)
        if grad_scale is not None:
            optimizer.grad_scale = torch.tensor(grad_scale, dtype=torch.float32, device=DEVICE)
        if found_inf:
            optimizer.found_inf = torch.tensor(SKIPPED.get(step, 0.0), dtype=torch.float32, device=DEVICE)
        before = [t.detach().clone() for t in params + state_tensors(optimizer, params)]
        optimizer.step()
        if found_inf and step in SKIPPED:
            after = params + state_tensors(optimizer, params)
            if step == 0 and optimizer.spec.first_step_rule:  # SGD returns before creating any state
                assert all(len(optimizer.state[p]) == 0 for p in params)
                after = after[:len(params)]
            elif step == 0:  # the state was created by this step: zeros, step 0, the master a copy of the param
                master_copies = [optimizer.state[p]["master_param"] for p in params] if master_weights else []
                assert all(torch.equal(t, torch.zeros_like(t)) for t in after[len(params):]
                           if all(t is not m for m in master_copies))
                assert all(torch.equal(m, p.float()) for m, p in zip(master_copies, params))
                after = after[:len(params)]
            assert all(torch.equal(b, a) for b, a in zip(before, after)), f"skipped step {step} changed something"
    return params, optimizer


def assert_same_run(params, optimizer, reference, reference_optimizer, dtype):
    """Params and every state (step counters included) as the reference backend's."""
    state_dtypes = {t.dtype for t in state_tensors(optimizer, params) if t.dim()}
    assert state_dtypes == {t.dtype for t in state_tensors(reference_optimizer, reference) if t.dim()}
    assert_all_close(params, reference, **TOLERANCE[dtype])
    state_dtype = state_dtypes.pop() if len(state_dtypes) == 1 else dtype
    assert_all_close(state_tensors(optimizer, params), state_tensors(reference_optimizer, reference),
                     **TOLERANCE.get(state_dtype, TOLERANCE[torch.float32]))


@pytest.mark.parametrize("transform", ["scale-skip-clip", "clip"])
@pytest.mark.parametrize("case", AMP_CASES, ids=case_id)
def test_grad_transform_matches_reference(case, transform):
    """grad_scale, found_inf (zero on most steps, nonzero on SKIPPED) and the clip coefficient
    together; and the clip coefficient alone, without found_inf."""
    name, kwargs = case
    options = dict(max_grad_norm=MAX_GRAD_NORM)
    if transform == "scale-skip-clip":
        options.update(grad_scale=GRAD_SCALE, found_inf=True)
    params, optimizer = amp_run(name, kwargs, "triton", torch.float32, **options)
    reference, reference_optimizer = amp_run(name, kwargs, "reference", torch.float32, **options)
    assert_same_run(params, optimizer, reference, reference_optimizer, torch.float32)
    if optimizer.has_step_counter:  # skipped steps are not counted
        counted = AMP_STEPS - (len(SKIPPED) if transform == "scale-skip-clip" else 0)
        assert {optimizer.state[p]["step"].item() for p in params} == {float(counted)}
    # the transform did something: a plain run ends elsewhere
    plain, _ = fused_run(name, kwargs, "reference", torch.float32, sizes=AMP_SIZES, misaligned=MISALIGNED,
                         steps=AMP_STEPS)
    assert max((p - q).abs().max().item() for p, q in zip(params, plain) if p.numel()) > 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("case", AMP_CASES, ids=case_id)
def test_master_weights_match_reference(case, dtype):
    """16-bit params with fp32 master copies and fp32 states, under GradScaler and
    max_grad_norm as in mixed-precision training: the kernels update the master and the
    states in float32 and write the master, rounded once, into the param."""
    name, kwargs = case
    options = dict(master_weights=True, grad_scale=GRAD_SCALE, found_inf=True, max_grad_norm=MAX_GRAD_NORM)
    params, optimizer = amp_run(name, kwargs, "triton", dtype, **options)
    reference, reference_optimizer = amp_run(name, kwargs, "reference", dtype, **options)
    for p in params:
        state = optimizer.state[p]
        assert "master_param" in state
        assert all(t.dtype == torch.float32 for k, t in state.items())
        assert torch.equal(p.detach(), state["master_param"].to(dtype))  # the master, rounded to nearest even
    assert_same_run(params, optimizer, reference, reference_optimizer, dtype)
    # the masters hold what the 16-bit params cannot: they are the float32 copies the math updates
    masters = [optimizer.state[p]["master_param"] for p in params if p.numel()]
    assert all(not torch.equal(m, m.to(dtype).float()) for m in masters)


def test_grad_scaler_trains_like_the_reference():
    """torch.amp.GradScaler end to end (it sets optimizer.grad_scale and found_inf, since the
    optimizers declare _step_supports_amp_scaling): an inf in one step's grads skips that
    step, halves the scale, and the step counters do not count it."""
    def run(backend):
        params = make_params(torch.float16, sizes=AMP_SIZES)
        optimizer = fusedopt.AdamW(params, lr=0.05, backend=backend, master_weights=True, max_grad_norm=MAX_GRAD_NORM)
        scaler = torch.amp.GradScaler(DEVICE.type, init_scale=2.0**8)
        for step in range(4):
            scaler.scale(torch.ones((), device=DEVICE))  # initialises the scale, as scaler.scale(loss) does
            for p, g in zip(params, grads_for(params, step)):
                p.grad = (g.float() * scaler.get_scale()).half()
            if step == 1:
                params[1].grad[3] = float("inf")
            scaler.step(optimizer)
            scaler.update()
        assert scaler.get_scale() == 2.0**7
        assert {optimizer.state[p]["step"].item() for p in params} == {3.0}
        return params, optimizer

    params, optimizer = run("triton")
    reference, reference_optimizer = run("reference")
    assert_same_run(params, optimizer, reference, reference_optimizer, torch.float16)


def test_grad_transform_tensors_are_checked():
    """The kernels read grad_scale, found_inf and clip_coef through raw pointers as one
    float32 each: anything else is refused before the launch (the optimizers always pass
    float32; the torch.library op passes what it is given)."""
    from fusedopt import _ops

    params = make_params(torch.float32, sizes=(5,), misaligned=0)
    grads = [torch.ones_like(p) for p in params]
    fields = dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False)
    wrong = torch.zeros((), dtype=torch.float64, device=DEVICE)
    with pytest.raises(RuntimeError, match="found_inf must be a one-element float32 tensor"):
        _ops.update_("sgd", [p.detach() for p in params], grads, [], [], "", ",".join(fields),
                     [float(v) for v in fields.values()], False, False, None, wrong, None, "triton")


# ----------------------------------------------------------------------------- mechanics
def test_chunks_and_blocks_cover_every_element(monkeypatch):
    """A small geometry: tensors spanning several programs and partial chunks and blocks."""
    monkeypatch.setattr(triton_backend, "LAUNCH_CONFIG", triton_backend.LaunchConfig(block=64, blocks_per_program=2))
    sizes = (0, 1, 127, 128, 129, 300)
    kwargs = dict(amsgrad=True, weight_decay=0.1)
    params, _ = fused_run("AdamW", kwargs, "triton", torch.float32, sizes=sizes, steps=3)
    expected, _ = torch_run("AdamW", kwargs, torch.float32, sizes=sizes, steps=3)
    assert_all_close(params, expected, **TOLERANCE[torch.float32])


def _counting(monkeypatch, kind):
    """The launches of optimizer `kind`'s update: (programs, tensors) each."""
    calls = []
    launch = triton_backend._launch

    def counted(launched, tables, batch, config):
        if launched == kind:
            calls.append((tables.programs, len(batch)))
        return launch(launched, tables, batch, config)

    monkeypatch.setattr(triton_backend, "_launch", counted)
    return calls


@pytest.mark.parametrize("name,kind", [("Adam", "adam"), ("SGD", "sgd"), ("RMSprop", "rmsprop")])
def test_one_launch_per_batch(monkeypatch, name, kind):
    calls = _counting(monkeypatch, kind)
    params = make_params(torch.float32)
    optimizer = getattr(fusedopt, name)(params, lr=0.01, backend="triton")
    for step in range(2):
        for p, g in zip(params, grads_for(params, step)):
            p.grad = g
        optimizer.step()
    chunk = triton_backend.LAUNCH_CONFIG.chunk
    programs = sum(-(-p.numel() // chunk) for p in params)
    assert calls == [(programs, len(params))] * 2


def test_one_launch_per_bucket(monkeypatch):
    """Two dtypes in one group and a second group: three batches, three launches a step."""
    calls = _counting(monkeypatch, "adam")
    first = make_params(torch.float32, sizes=(3, 5)) + make_params(torch.bfloat16, sizes=(7,), misaligned=0)
    second = make_params(torch.float32, sizes=(11,), misaligned=0)
    optimizer = fusedopt.Adam([{"params": first}, {"params": second, "lr": 0.1}], backend="triton")
    for p in first + second:
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert [n for _, n in calls] == [3, 1, 1]


def test_steps_and_grads_set_to_none():
    """Each step counter moves once per step of its param; params without a grad are skipped."""
    params = make_params(torch.float32, sizes=(5, 7), misaligned=0)
    expected = [p.detach().clone().requires_grad_() for p in params]
    optimizer = fusedopt.Adam(params, lr=0.1, backend="triton")
    torch_optimizer = torch.optim.Adam(expected, lr=0.1)
    for step in range(4):
        for ps in (params, expected):
            ps[0].grad = torch.full_like(ps[0], 0.5 + step)
            ps[1].grad = None if step < 2 else torch.full_like(ps[1], -1.0)
        optimizer.step()
        torch_optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch_optimizer.zero_grad(set_to_none=True)
    assert [optimizer.state[p]["step"].item() for p in params] == [4.0, 2.0]
    assert all(optimizer.state[p]["step"].dtype == torch.float32 for p in params)
    assert_all_close(params, expected, **TOLERANCE[torch.float32])


def test_empty_tensors_only(monkeypatch):
    """Nothing to launch, but the step counters still move."""
    calls = _counting(monkeypatch, "adam")
    params = make_params(torch.float32, sizes=(0, 0), misaligned=0)
    optimizer = fusedopt.Adam(params, backend="triton")
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert calls == []
    assert [optimizer.state[p]["step"].item() for p in params] == [1.0, 1.0]


def test_sgd_first_step_with_new_buffers():
    """A param whose grad appears later starts its momentum buffer from that grad."""
    params = make_params(torch.float32, sizes=(5, 7), misaligned=0)
    expected = [p.detach().clone().requires_grad_() for p in params]
    kwargs = dict(lr=0.1, momentum=0.9, dampening=0.2)
    optimizer, torch_optimizer = fusedopt.SGD(params, backend="triton", **kwargs), torch.optim.SGD(expected, **kwargs)
    for step in range(3):
        for ps in (params, expected):
            ps[0].grad = torch.full_like(ps[0], 1.0 + step)
            ps[1].grad = None if step == 0 else torch.full_like(ps[1], 2.0 - step)
        optimizer.step()
        torch_optimizer.step()
    assert_all_close(params, expected, **TOLERANCE[torch.float32])


def test_device_tables_are_cached_and_alignment_is_detected():
    params = make_params(torch.float32, sizes=(5, 7), misaligned=0)
    optimizer = fusedopt.SGD(params, lr=0.1, momentum=0.9, backend="triton")
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    cached = len(triton_backend._tables)
    optimizer.step()  # same grads, same table version: nothing new to upload
    assert len(triton_backend._tables) == cached
    assert next(reversed(triton_backend._tables.values())).aligned

    misaligned = make_params(torch.float32, sizes=(5,), misaligned=MISALIGNED)
    optimizer = fusedopt.SGD(misaligned, lr=0.1, backend="triton")
    for p in misaligned:
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert not next(reversed(triton_backend._tables.values())).aligned


def test_each_stream_gets_its_own_device_tables(monkeypatch):
    """Device tables and work maps are cached per stream: an entry is only read on the stream
    it was allocated on, so freeing an evicted one cannot hand its memory to new work while
    a kernel on another stream still reads it. (No second stream exists on the CPU: the
    stream the keys read is replaced by a label.) The results are torch's either way."""
    stream = ["first"]
    monkeypatch.setattr(triton_backend._factored, "_current_stream", lambda device: stream[0])
    monkeypatch.setattr(triton_backend, "_tables", triton_backend._LRU(capacity=64))
    monkeypatch.setattr(triton_backend, "_work_maps", triton_backend._LRU(capacity=64))
    params = make_params(torch.float32, sizes=(5, 7), misaligned=0)
    expected = [p.detach().clone().requires_grad_() for p in params]
    optimizer = fusedopt.SGD(params, lr=0.1, momentum=0.9, backend="triton")
    torch_optimizer = torch.optim.SGD(expected, lr=0.1, momentum=0.9)
    for ps in (params, expected):
        for p in ps:
            p.grad = torch.ones_like(p)  # kept: one table version throughout
    for label in ["first", "first", "second", "first"]:
        stream[0] = label
        optimizer.step()
        torch_optimizer.step()
    assert sorted(key[-1] for key in triton_backend._tables) == ["first", "second"]
    assert sorted(key[-1] for key in triton_backend._work_maps) == ["first", "second"]
    tables = list(triton_backend._tables.values())
    assert tables[0].table is not tables[1].table and tables[0].work is not tables[1].work
    assert_all_close(params, expected, **TOLERANCE[torch.float32])


# ----------------------------------------------------------------------------- selection
def test_backend_triton_and_environment_route_to_the_kernels(monkeypatch):
    calls = _counting(monkeypatch, "sgd")
    assert backends.resolve("triton", DEVICE).name == "triton"
    params = make_params(torch.float32, sizes=(5,), misaligned=0)
    params[0].grad = torch.ones_like(params[0])
    fusedopt.SGD(params, lr=0.1, backend="triton").step()
    assert len(calls) == 1

    monkeypatch.setenv("FUSEDOPT_BACKEND", "triton")
    assert backends.resolve("auto", DEVICE).name == "triton"
    fusedopt.SGD(params, lr=0.1).step()
    assert len(calls) == 2


def test_unusable_reasons(monkeypatch):
    backend = backends.get("triton")
    assert backend.unusable_reason(DEVICE) is None
    assert "CUDA" in backend.unusable_reason(torch.device("meta"))
    if not CUDA:
        assert "TRITON_INTERPRET" in backend.unusable_reason(torch.device("cuda"))
    monkeypatch.delenv("FUSEDOPT_BACKEND", raising=False)
    assert backends.resolve("auto", torch.device("cpu")).name != "triton"  # usable, but never auto's pick


# ----------------------------------------------------------------------------- the GPU build
_COMPILE_FOR_SM90 = r"""
import re
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fusedopt._layout import UpdateConfig
from fusedopt.backends import triton as backend
from fusedopt.backends.triton import _kernel

kernel = _kernel.multi_tensor_kernel
FLOAT_POINTERS = {"grad_scale_ptr", "found_inf_ptr", "clip_coef_ptr", "tensor_clip_ptr"}
DEFAULTS = dict(COMPUTE=tl.float32, MASTER=False, GRAD_SCALE=False, FOUND_INF=False, CLIP_COEF=False,
                CLIP_VALUE=False, LR_TENSOR=False, ALIGNED=True, BLOCK=1024, CHUNK=16384, NUM_SCALARS=0,
                TENSOR_CLIP=False, TENSOR_SCALE=False, STOCHASTIC=False, INT8=False, SIGNED=0)
HYPER = {
    "adam": dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
                 decoupled_weight_decay=False, optimized_update=False, absolute_weight_decay=False),
    "sgd": dict(momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False),
    "rmsprop": dict(alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False),
    "asgd": dict(lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0, maximize=False),
    "nadam": dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                  decoupled_weight_decay=False, maximize=False, absolute_weight_decay=False),
    "lamb": dict(beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01, maximize=False, bias_correction=True,
                 grad_averaging=True, optimized_update=False),
}

def ptx(kind, num_states, hyper=(), **constexprs):
    module = backend.kind_module(kind)
    scalars, options = module.arguments(UpdateConfig(hyper={**HYPER[kind], **dict(hyper)}, lr=0.1))
    constexprs = {**DEFAULTS, "STATE": constexprs["DTYPE"], **constexprs, "COEFFICIENTS": module.coefficients,
                  "UPDATE": module.update, "SLOT": backend._slots(type(scalars)), "OPTIONS": options,
                  "NUM_STATES": num_states, "COUNTER": kind != "sgd"}
    signature = {name: "constexpr" if name in constexprs else "*fp32" if name in FLOAT_POINTERS
                 else "*fp64" if name in ("lr_ptr", "tensor_scale_ptr") else "*i32" if name == "tables_ptr"
                 else "*i64" if name.endswith("_ptr")
                 else "i32" if name == "n" else "i64" if name == "seed" else "fp64"
                 for name in kernel.arg_names}
    compiled = triton.compile(ASTSource(kernel, signature=signature, constexprs=constexprs),
                              target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, enable_fp_fusion=False))
    return compiled.asm["ptx"]

def scalar_state_ptx(kind, num_states, num_scalars, **constexprs):
    # The launch that stores each tensor's next scalar states (ASGD's eta and mu).
    module = backend.kind_module(kind)
    scalars, options = module.arguments(UpdateConfig(hyper=HYPER[kind], lr=0.1))
    advance = _kernel.scalar_state_kernel
    constexprs = dict(ADVANCE=module.advance_scalars, SLOT=backend._slots(type(scalars)), OPTIONS=options,
                      NUM_STATES=num_states, MASTER=False, NUM_SCALARS=num_scalars, FOUND_INF=True, LR_TENSOR=True,
                      **constexprs)
    signature = {name: "constexpr" if name in constexprs else "*fp32" if name == "found_inf_ptr"
                 else "*fp64" if name == "lr_ptr" else "*i64" if name.endswith("_ptr") else "i32" if name == "n"
                 else "fp64"
                 for name in advance.arg_names}
    compiled = triton.compile(ASTSource(advance, signature=signature, constexprs=constexprs),
                              target=GPUTarget("cuda", 90, 32), options=dict(num_warps=1, enable_fp_fusion=False))
    return compiled.asm["ptx"]

amp = dict(GRAD_SCALE=True, FOUND_INF=True, CLIP_COEF=True)
kernels = {
    "adam": ptx("adam", 3, dict(weight_decay=0.1, amsgrad=True, optimized_update=True), DTYPE=tl.float32),
    "sgd": ptx("sgd", 1, dict(weight_decay=0.1, nesterov=True), DTYPE=tl.bfloat16),
    "rmsprop": ptx("rmsprop", 3, dict(weight_decay=0.1, centered=True, momentum=0.9), DTYPE=tl.float16),
    "adam-f64": ptx("adam", 2, dict(weight_decay=0.1, decoupled_weight_decay=True), DTYPE=tl.float64,
                    COMPUTE=tl.float64, ALIGNED=False),
    # bf16/fp16 params with fp32 master weights and states, GradScaler and max_grad_norm
    # (the grads written back), a learning rate read from a tensor
    "adam-master": ptx("adam", 3, dict(weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True),
                       DTYPE=tl.bfloat16, STATE=tl.float32, MASTER=True, LR_TENSOR=True, **amp),
    "sgd-master": ptx("sgd", 1, dict(weight_decay=0.1), DTYPE=tl.float16, STATE=tl.float32, MASTER=True,
                      LR_TENSOR=True, **amp),
    "rmsprop-master": ptx("rmsprop", 3, dict(centered=True, momentum=0.9), DTYPE=tl.bfloat16, STATE=tl.float32,
                          MASTER=True, LR_TENSOR=True, **amp),
    # kinds whose coefficients read per-tensor scalar states (rows after the states and master copy)
    "asgd": ptx("asgd", 1, dict(weight_decay=0.1), DTYPE=tl.float32, NUM_SCALARS=2),
    "nadam-master": ptx("nadam", 2, dict(weight_decay=0.1), DTYPE=tl.bfloat16, STATE=tl.float32, MASTER=True,
                        LR_TENSOR=True, NUM_SCALARS=1, **amp),
    # clip_grad_norm_per_tensor's coefficient per tensor; LAMB's update with its trust ratio
    "adam-tensor-clip": ptx("adam", 2, DTYPE=tl.float32, CLIP_COEF=True, TENSOR_CLIP=True),
    "lamb": ptx("lamb", 2, DTYPE=tl.bfloat16, STATE=tl.float32, MASTER=True, TENSOR_SCALE=True, **amp),
    # bf16_stochastic_round: bf16 params (no master copy) stored rounded stochastically
    "sgd-stochastic": ptx("sgd", 1, dict(weight_decay=0.1, nesterov=True), DTYPE=tl.bfloat16, STOCHASTIC=True),
    # 8-bit states (codes and block absmax; exp_avg signed, the others unsigned), with float32
    # params, and with bf16 params, a master copy and the grad transform
    "adam-int8": ptx("adam", 3, dict(weight_decay=0.1, amsgrad=True), DTYPE=tl.float32, STATE=tl.uint8, INT8=True,
                     SIGNED=0b001),
    "rmsprop-int8-master": ptx("rmsprop", 3, dict(centered=True, momentum=0.9), DTYPE=tl.bfloat16, STATE=tl.uint8,
                               MASTER=True, LR_TENSOR=True, INT8=True, SIGNED=0b110, **amp),
    "asgd-scalars": scalar_state_ptx("asgd", 1, 2),
    "nadam-scalars": scalar_state_ptx("nadam", 2, 1),
}
for name, text in kernels.items():
    found = sorted(set(re.findall(r"(?:ld|st)\.global\.v4\.b32|div\.rn\.f32|fma\.rn\.f32|sqrt\.approx", text)))
    print(name, *found)
"""


@pytest.mark.skipif(CUDA, reason="with a GPU the tests above run the compiled kernels")
def test_kernels_compile_for_h100():
    """The interpreter accepts code the compiler would reject: compile every kernel for
    sm_90 (no GPU needed) and check the instructions that matter: 16-byte vector loads and
    stores in aligned full blocks, IEEE division, no approximate square root, and no
    multiply-add contraction."""
    from _compiled_triton import run_compiler

    found = {line.split()[0]: set(line.split()[1:]) for line in run_compiler(_COMPILE_FOR_SM90).splitlines()}
    vectors = {"ld.global.v4.b32", "st.global.v4.b32"}
    assert found["adam"] == vectors | {"div.rn.f32"}
    assert found["sgd"] == vectors
    assert found["rmsprop"] == vectors | {"div.rn.f32"}
    assert found["adam-f64"] == set()
    # Master weights and the grad transform keep the vector accesses (the bf16/fp16 params
    # and grads included); dividing by GradScaler's scale is IEEE division.
    for name in ("adam-master", "sgd-master", "rmsprop-master", "nadam-master"):
        assert found[name] == vectors | {"div.rn.f32"}, name
    assert found["asgd"] == vectors  # no division in ASGD's element update
    # the per-tensor clip coefficient and LAMB's per-tensor ratio keep the vector accesses,
    # with IEEE division and no contraction
    assert found["adam-tensor-clip"] == vectors | {"div.rn.f32"}
    assert found["lamb"] >= vectors and "fma.rn.f32" not in found["lamb"] and "sqrt.approx" not in found["lamb"]
    assert found["asgd-scalars"] == found["nadam-scalars"] == set()  # float64 math, no float32 fma
    assert found["sgd-stochastic"] == vectors  # the hash is integer work: the accesses stay vectors
    # 8-bit states: q = x / absmax is IEEE division, nothing contracted; the params' and grads'
    # accesses stay vectors (the codes' are 4-byte vectors of 16 codes, the table reads gathers)
    for name in ("adam-int8", "rmsprop-int8-master"):
        assert found[name] == vectors | {"div.rn.f32"}, name
