"""state_dict round trips mid-run, deepcopy and torch.save, and checkpoints crossing
between torch.optim and fusedopt in both directions."""
import copy
import io
import pickle

import pytest
import torch

import fusedopt
from _compare import (REPRESENTATIVE_CASES, assert_params_close, assert_same_state, clone_params, gradients, initial_values, make_params)

HALF = 10  # steps before and after the checkpoint
DTYPE = torch.float32


def steps(optimizer, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.to(p.dtype)
        optimizer.step()


def torch_optimizer(case, params):
    return case.torch_plain_form().expected(params)


def through_bytes(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer)  # weights_only: a checkpoint must need no pickled classes


SAVERS = {"deepcopy": copy.deepcopy, "torch.save": through_bytes}


@pytest.mark.parametrize("save", SAVERS)
@pytest.mark.parametrize("case", REPRESENTATIVE_CASES, ids=str)
def test_round_trip_mid_run(case, save, backend):
    """Save after 10 steps, load into a fresh optimizer over copies of the params, run 10
    more: exactly the uninterrupted run."""
    grads = gradients(steps=2 * HALF)
    params = make_params(initial_values(), DTYPE)
    opt = case.fused(params, backend)
    steps(opt, params, grads[:HALF])
    checkpoint = SAVERS[save](opt.state_dict())
    resumed_params = clone_params(params)
    resumed = case.fused(resumed_params, backend)
    resumed.load_state_dict(checkpoint)
    steps(opt, params, grads[HALF:])
    steps(resumed, resumed_params, grads[HALF:])
    for p, q in zip(resumed_params, params):
        assert torch.equal(p, q)
    assert_same_state(resumed, opt, resumed_params, params, DTYPE)
    assert resumed.param_groups[0]["backend"] == backend


@pytest.mark.parametrize("case", REPRESENTATIVE_CASES, ids=str)
def test_deepcopy_of_params_and_optimizer(case, backend):
    """deepcopy((params, optimizer)) mid-run continues like the original."""
    grads = gradients(steps=2 * HALF)
    params = make_params(initial_values(), DTYPE)
    opt = case.fused(params, backend)
    steps(opt, params, grads[:HALF])
    params_copy, opt_copy = copy.deepcopy((params, opt))
    assert all(p is not q for p, q in zip(params, params_copy))
    steps(opt, params, grads[HALF:])
    steps(opt_copy, params_copy, grads[HALF:])
    for p, q in zip(params_copy, params):
        assert torch.equal(p, q)


@pytest.mark.parametrize("direction", ["torch->fusedopt", "fusedopt->torch"])
@pytest.mark.parametrize("case", [c for c in REPRESENTATIVE_CASES if c.torch_expressible], ids=str)
def test_cross_loading_continues_torchs_trajectory(case, direction, backend):
    """A checkpoint written by one library loads into the other (through torch.save), and
    the continued run matches the uninterrupted torch.optim run."""
    grads = gradients(steps=2 * HALF)
    reference_params = make_params(initial_values(), DTYPE)
    reference = torch_optimizer(case, reference_params)
    steps(reference, reference_params, grads)

    first_params = make_params(initial_values(), DTYPE)
    second_params = make_params(initial_values(), DTYPE)
    if direction == "torch->fusedopt":
        first, second = torch_optimizer(case, first_params), case.fused(second_params, backend)
    else:
        first, second = case.fused(first_params, backend), torch_optimizer(case, second_params)
    steps(first, first_params, grads[:HALF])
    with torch.no_grad():
        for p, q in zip(second_params, first_params):
            p.copy_(q)
    second.load_state_dict(through_bytes(first.state_dict()))
    steps(second, second_params, grads[HALF:])
    assert_params_close(second_params, reference_params, DTYPE)
    assert_same_state(second, reference, second_params, reference_params, DTYPE)
    if direction == "torch->fusedopt":
        assert second.param_groups[0]["backend"] == backend
        sd, reference_sd = second.state_dict(), reference.state_dict()
        assert set(sd["param_groups"][0]) >= set(reference_sd["param_groups"][0])


@pytest.mark.parametrize("case", REPRESENTATIVE_CASES, ids=str)
def test_state_dict_layout_matches_torch(case, backend):
    """Same state entries, keys, dtypes and shapes in state_dict() as torch.optim's after
    the same steps; param_groups keys a superset of torch's with torch's values."""
    grads = gradients(steps=3)
    params, reference_params = make_params(initial_values(), DTYPE), make_params(initial_values(), DTYPE)
    opt, reference = case.fused(params, backend), torch_optimizer(case, reference_params)
    steps(opt, params, grads)
    steps(reference, reference_params, grads)
    sd, reference_sd = opt.state_dict(), reference.state_dict()
    assert sd["state"].keys() == reference_sd["state"].keys()
    for index, entry in reference_sd["state"].items():
        assert entry.keys() == sd["state"][index].keys()
        for key, value in entry.items():
            ours = sd["state"][index][key]
            assert isinstance(ours, torch.Tensor)
            assert (ours.dtype, ours.shape, ours.device) == (value.dtype, value.shape, value.device), key
    group, reference_group = sd["param_groups"][0], reference_sd["param_groups"][0]
    assert group["params"] == reference_group["params"]
    for key in reference_group.keys() - {"foreach", "fused", "params"}:
        assert group[key] == reference_group[key], key


def test_load_keeps_this_processes_backend():
    """The backend is how this process runs the step, not training state: a checkpoint
    from a `reference` optimizer loaded into a `cpu` one keeps `cpu`."""
    params = make_params(initial_values(), DTYPE)
    source = fusedopt.Adam(params, backend="reference")
    steps(source, params, gradients(steps=2))
    target = fusedopt.Adam(clone_params(params), backend="cpu")
    target.load_state_dict(source.state_dict())
    assert target.param_groups[0]["backend"] == "cpu"


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop"])
def test_load_mismatched_state_shape_fails_at_step(name, backend):
    """A checkpoint whose state tensors do not fit the params loads (torch does not check)
    but the next step raises RuntimeError and leaves the params as they were."""
    source_params = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3, 4))]
    source = getattr(fusedopt, name)(source_params, backend=backend)
    steps(source, source_params, [[torch.randn(5), torch.randn(3, 4)]])
    params = [torch.nn.Parameter(torch.randn(6)), torch.nn.Parameter(torch.randn(3, 4))]
    opt = getattr(fusedopt, name)(params, backend=backend)
    opt.load_state_dict(source.state_dict())
    for p in params:
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match="shape"):
        opt.step()
    for p, b in zip(params, before):
        assert torch.equal(p, b)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop"])
def test_checkpoint_with_step_as_a_number(name, backend):
    """Older torch checkpoints keep `step` as a Python number: it loads and counts on,
    and the update uses it, as in torch."""
    results = []
    for make in (lambda ps: getattr(torch.optim, name)(ps, lr=0.1),
                 lambda ps: getattr(fusedopt, name)(ps, lr=0.1, backend=backend)):
        params = make_params(initial_values(), DTYPE)
        opt = make(params)
        steps(opt, params, gradients(steps=2))
        checkpoint = copy.deepcopy(opt.state_dict())
        for entry in checkpoint["state"].values():
            entry["step"] = 7.0 if name != "RMSprop" else 7
        resumed = make(params)
        resumed.load_state_dict(checkpoint)
        steps(resumed, params, gradients(steps=2, seed=9))
        assert all(resumed.state[p]["step"].item() == 9 for p in params)
        assert all(isinstance(resumed.state[p]["step"], torch.Tensor) for p in params)
        results.append(params)
    assert_params_close(results[1], results[0], DTYPE)


@pytest.mark.parametrize("name", ["Adam", "SGD", "RMSprop"])
def test_named_parameters(name, backend):
    """torch.optim accepts model.named_parameters() and keeps param_names in its groups;
    so does fusedopt, and its checkpoints load into torch.optim."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    opt = getattr(fusedopt, name)(model.named_parameters(), lr=0.1, backend=backend,
                                  **({"momentum": 0.9} if name == "SGD" else {}))
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["param_names"] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    reference = getattr(torch.optim, name)(model.named_parameters(), lr=0.1,
                                           **({"momentum": 0.9} if name == "SGD" else {}))
    reference.load_state_dict(through_bytes(sd))
    assert reference.state_dict()["param_groups"][0]["param_names"] == sd["param_groups"][0]["param_names"]


def test_adagrad_state_exists_before_the_first_step_as_torchs(backend):
    """torch.optim.Adagrad creates `step` and `sum` in its constructor (complex(v, v) for a
    complex param), so state_dict() holds them before any step and share_memory() has a
    `sum` to share."""
    values = [torch.randn(3), torch.randn(2, 2, dtype=torch.complex64), torch.randn(5, dtype=torch.float64),
              torch.randn(4)]
    ours = fusedopt.Adagrad([torch.nn.Parameter(v.clone()) for v in values], initial_accumulator_value=0.3,
                            backend=backend)
    theirs = torch.optim.Adagrad([torch.nn.Parameter(v.clone()) for v in values], initial_accumulator_value=0.3)
    sd, reference_sd = ours.state_dict(), theirs.state_dict()
    assert {i: list(s) for i, s in sd["state"].items()} == {i: list(s) for i, s in reference_sd["state"].items()}
    for index, entry in reference_sd["state"].items():
        for key, value in entry.items():
            assert sd["state"][index][key].dtype == value.dtype
            torch.testing.assert_close(sd["state"][index][key], value, rtol=0, atol=0)
    ours.share_memory()
    theirs.share_memory()
    assert all(ours.state[p]["sum"].is_shared() for p in ours.param_groups[0]["params"])
    for p, q in zip(ours.param_groups[0]["params"], theirs.param_groups[0]["params"]):  # and steps on as torch
        p.grad = torch.ones_like(p)
        q.grad = torch.ones_like(q)
    ours.step()
    theirs.step()
    for p, q in zip(ours.param_groups[0]["params"], theirs.param_groups[0]["params"]):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("name", sorted(fusedopt.optim.__all__))
def test_loads_again_after_a_load_a_deepcopy_or_a_pickle(name, backend):
    """torch.optim.Optimizer.__setstate__, which every load_state_dict, deepcopy and unpickle
    runs, adds `differentiable` to the defaults, also of optimizers that never take it
    (Adafactor, SparseAdam): a checkpoint without it still loads afterwards, as into torch's,
    and training goes on as without the reloads."""
    def make():
        torch.manual_seed(0)
        embedding = torch.nn.Embedding(6, 4, sparse=name == "SparseAdam")
        return embedding, getattr(fusedopt, name)(embedding.parameters(), backend=backend)

    def train(embedding, optimizer, count):
        for i in range(count):
            embedding(torch.tensor([i % 6, (i + 2) % 6])).square().sum().backward()
            optimizer.step()
            optimizer.zero_grad()

    (embedding, optimizer), (twin_embedding, twin) = make(), make()
    train(embedding, optimizer, 3)
    train(twin_embedding, twin, 3)
    checkpoint = copy.deepcopy(optimizer.state_dict())
    optimizer.load_state_dict(checkpoint)
    optimizer.load_state_dict(checkpoint)
    for copied in (copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))):
        copied.load_state_dict(checkpoint)
    train(embedding, optimizer, 3)
    train(twin_embedding, twin, 3)
    assert torch.equal(embedding.weight, twin_embedding.weight)
