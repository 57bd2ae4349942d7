"""Per-param scalar states (ASGD's eta and mu, NAdam's mu_product): float32 0-dim tensors
beside each param, as torch.optim keeps them, advanced once per tensor per step on every
backend with no host sync, left alone by a step GradScaler skips, different per tensor
where the tensors' histories differ, and taken from any checkpoint torch writes or loads."""
from __future__ import annotations

import copy

import pytest
import torch

import fusedopt
from _compare import TOLERANCES, assert_params_close, gradients, initial_values, make_params

# Options under which each scalar state changes within a few steps (t0=2: mu < 1 from step 4).
CASES = {
    "ASGD": dict(lr=0.05, lambd=0.1, alpha=0.6, t0=2.0, weight_decay=0.1),
    "NAdam": dict(lr=0.01, weight_decay=0.1, momentum_decay=0.1),
}
KEYS = {"ASGD": ("eta", "mu"), "NAdam": ("mu_product",)}
SHAPES = ((0,), (1,), (17,), (5, 7))


def triton_reason():
    try:
        return fusedopt.backends.unusable_reason("triton", torch.device("cpu"))
    except Exception as error:  # triton missing or broken
        return str(error)


@pytest.fixture(params=["reference", "cpu", "triton"])
def any_backend(request):
    reason = (triton_reason() if request.param == "triton"
              else fusedopt.backends.unusable_reason(request.param, torch.device("cpu")))
    if reason:
        pytest.skip(f"backend {request.param!r} cannot run here: {reason}")
    return request.param


def steps(optimizer, params, grads, present=None):
    """One step per entry of `grads`; present[s][i] False leaves param i without a grad."""
    for s, step_grads in enumerate(grads):
        for i, (p, g) in enumerate(zip(params, step_grads)):
            p.grad = g.to(p.dtype) if present is None or present[s][i] else None
        optimizer.step()


def assert_scalars_equal(ours, theirs, params, expected_params, name, exact=True):
    for i, (p, q) in enumerate(zip(params, expected_params)):
        for key in ("step", *KEYS[name]):
            mine, torchs = ours.state[p][key], theirs.state[q][key]
            assert mine.dim() == 0 and mine.dtype == torch.float32 and mine.device == p.device, (i, key)
            if exact:
                assert mine.item() == torchs.item(), (i, key, mine.item(), torchs.item())
            else:
                torch.testing.assert_close(mine.cpu(), torchs.to(torch.float32).cpu(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", CASES)
def test_scalar_states_differ_per_tensor_as_torchs(name, any_backend):
    """Params whose grads come and go take different numbers of steps: each tensor's scalars
    follow its own step count, exactly torch's (float64 params, so only the scalars' own
    float32 rounding is involved)."""
    grads = [[g.double() for g in step] for step in gradients(steps=8, shapes=SHAPES)]
    present = [[s % (i + 1) == 0 for i in range(len(SHAPES))] for s in range(8)]
    params = make_params(initial_values(shapes=SHAPES), torch.float64)
    expected = make_params(initial_values(shapes=SHAPES), torch.float64)
    ours = getattr(fusedopt, name)(params, backend=any_backend, **CASES[name])
    theirs = getattr(torch.optim, name)(expected, foreach=False, **CASES[name])
    steps(ours, params, grads, present)
    steps(theirs, expected, grads, present)
    assert len({ours.state[p]["step"].item() for p in params}) > 1
    # Triton computes the powers as exp2(e * log2(b)): the float32 scalars may round the other way.
    assert_scalars_equal(ours, theirs, params, expected, name, exact=any_backend != "triton")
    assert_params_close(params, expected, torch.float64)


@pytest.mark.parametrize("name", CASES)
def test_a_skipped_step_leaves_the_scalar_states(name, any_backend):
    """GradScaler's found_inf skips the whole step: step, scalar states, params unchanged."""
    params = make_params(initial_values(shapes=SHAPES), torch.float32)
    optimizer = getattr(fusedopt, name)(params, backend=any_backend, **CASES[name])
    grads = gradients(steps=4, shapes=SHAPES)
    steps(optimizer, params, grads[:3])
    before = copy.deepcopy(optimizer.state_dict()["state"])
    values = [p.detach().clone() for p in params]
    optimizer.grad_scale = torch.tensor(1.0)
    optimizer.found_inf = torch.tensor(1.0)
    steps(optimizer, params, grads[3:])
    for i, p in enumerate(params):
        assert torch.equal(p, values[i])
        for key in ("step", *KEYS[name]):
            assert optimizer.state[p][key].item() == before[i][key].item(), (i, key)
    optimizer.found_inf = torch.tensor(0.0)
    steps(optimizer, params, grads[3:])
    assert all(optimizer.state[p]["step"].item() == 4 for p in params)
    changed = [optimizer.state[p][key].item() != before[i][key].item()
               for i, p in enumerate(params) for key in KEYS[name]]
    assert all(changed)


@pytest.mark.parametrize("name", CASES)
def test_torchs_float64_checkpoint_continues_torchs_trajectory(name, backend):
    """torch.optim's load_state_dict casts every state but `step` to the param's dtype, so a
    torch checkpoint loaded into fusedopt brings float64 scalars (and a numbers-only one,
    Python floats): fusedopt keeps them as float32 on the param's device, which is what
    torch's own uninterrupted run keeps, and continues that run."""
    grads = [[g.double() for g in step] for step in gradients(steps=12, shapes=SHAPES)]
    expected = make_params(initial_values(shapes=SHAPES), torch.float64)
    theirs = getattr(torch.optim, name)(expected, foreach=False, **CASES[name])
    steps(theirs, expected, grads[:6])
    checkpoint = copy.deepcopy(theirs.state_dict())
    for as_numbers in (False, True):
        saved = copy.deepcopy(checkpoint)
        if as_numbers:
            for entry in saved["state"].values():
                for key in KEYS[name]:
                    entry[key] = entry[key].item()
        params = [torch.nn.Parameter(q.detach().clone()) for q in expected]
        ours = getattr(fusedopt, name)(params, backend=backend, **CASES[name])
        ours.load_state_dict(saved)
        steps(ours, params, grads[6:])
        results = params, ours
        assert not as_numbers or isinstance(ours.state[params[0]][KEYS[name][0]], torch.Tensor)
        if not as_numbers:
            first = results
    steps(theirs, expected, grads[6:])
    for params, ours in (first, results):
        assert_scalars_equal(ours, theirs, params, expected, name)
        assert_params_close(params, expected, torch.float64)


@pytest.mark.parametrize("name", CASES)
def test_16_bit_params_resume_on_their_float32_scalars(name, backend):
    """torch's load casts the scalar states to a bf16 param's dtype too (mu_product 0.091214
    became 0.091309); fusedopt takes them from the checkpoint again, as it takes the master
    copy, so a resumed run with master weights is the uninterrupted one, bit for bit."""
    grads = gradients(steps=10, shapes=SHAPES)
    start = initial_values(shapes=SHAPES)
    params = make_params(start, torch.bfloat16)
    uninterrupted = getattr(fusedopt, name)(params, backend=backend, master_weights=True, **CASES[name])
    steps(uninterrupted, params, grads[:5])
    checkpoint = copy.deepcopy(uninterrupted.state_dict())
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = getattr(fusedopt, name)(resumed_params, backend=backend, master_weights=True, **CASES[name])
    resumed.load_state_dict(checkpoint)
    for p in resumed_params:
        assert all(resumed.state[p][key].dtype == torch.float32 for key in KEYS[name])
    steps(uninterrupted, params, grads[5:])
    steps(resumed, resumed_params, grads[5:])
    assert_scalars_equal(resumed, uninterrupted, resumed_params, params, name)
    for p, q in zip(resumed_params, params):
        assert torch.equal(p, q)
        assert torch.equal(resumed.state[p]["master_param"], uninterrupted.state[q]["master_param"])


@pytest.mark.parametrize("name", CASES)
def test_fusedopt_checkpoint_loads_into_torch(name, backend):
    """The other way: fusedopt's state_dict has torch's keys and 0-dim float32 scalars, and
    torch.optim continues fusedopt's run from it."""
    grads = gradients(steps=10, shapes=SHAPES)
    params = make_params(initial_values(shapes=SHAPES), torch.float32)
    ours = getattr(fusedopt, name)(params, backend=backend, **CASES[name])
    steps(ours, params, grads[:5])
    saved = copy.deepcopy(ours.state_dict())  # torch's load keeps tensors it need not cast: no sharing
    for entry in saved["state"].values():
        for key in ("step", *KEYS[name]):
            assert entry[key].dim() == 0 and entry[key].dtype == torch.float32
    expected = [torch.nn.Parameter(p.detach().clone()) for p in params]
    theirs = getattr(torch.optim, name)(expected, foreach=False, **CASES[name])
    theirs.load_state_dict(saved)
    steps(ours, params, grads[5:])
    steps(theirs, expected, grads[5:])
    torch.testing.assert_close(params, expected, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("name", CASES)
def test_scalar_states_of_new_params_start_like_torchs(name, backend):
    """eta starts at the group's lr (a tensor lr too) and mu, mu_product at 1, in float32."""
    lr = torch.tensor(0.05)
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = getattr(fusedopt, name)([p], backend=backend, **{**CASES[name], "lr": lr})
    reference = getattr(torch.optim, name)([torch.nn.Parameter(torch.ones(3))], foreach=False,
                                           **{**CASES[name], "lr": lr})
    init = optimizer._init_state(optimizer.param_groups[0], torch.float32,
                                 optimizer.spec.coerce(optimizer.hyper(optimizer.param_groups[0])))
    state = {}
    init(p, state)
    q = reference.param_groups[0]["params"][0]
    q.grad = torch.zeros(3)
    reference._init_group(reference.param_groups[0], *([] for _ in range(6)))  # torch's lazy state
    for key in KEYS[name]:
        assert state[key].dtype == torch.float32 and state[key].dim() == 0
        assert state[key].item() == reference.state[q][key].item(), key
