"""Sparse (COO) grads to SGD and Adagrad, which torch.optim's for-loop updates (an
nn.Embedding(sparse=True)): those params take torch's own update, the others the fused
step, so the numbers, the state and checkpoints are torch's; what torch's update cannot do
for them is refused before any param moves."""
import copy

import pytest
import torch

import fusedopt

CASES = {
    "SGD": dict(lr=0.1),
    "SGD-momentum": dict(lr=0.1, momentum=0.9),
    "SGD-nesterov": dict(lr=0.1, momentum=0.9, nesterov=True),
    "SGD-dampening-maximize": dict(lr=0.1, momentum=0.9, dampening=0.3, maximize=True),
    "Adagrad": dict(lr=0.1),
    "Adagrad-options": dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.2, eps=1e-8, maximize=True),
}


def _name(case):
    return case.split("-")[0]


def _model(seed):
    torch.manual_seed(seed)
    # a float64 dense param first: its own bucket, prepared (and its state made) before the
    # embedding's bucket finds the sparse grad
    return torch.nn.ModuleDict(dict(scale=torch.nn.Linear(3, 1).double(), embedding=torch.nn.Embedding(30, 4, sparse=True),
                                    head=torch.nn.Linear(4, 3)))


def _loss(model, indices, extra):
    embedded = model["embedding"](indices)
    return (model["head"](embedded).tanh().sum() + model["scale"](extra).sum().float()) * 0.1


def _steps(models_and_optimizers, count, generator, uncoalesced=False):
    for _ in range(count):
        indices = torch.randint(0, 30, (12,), generator=generator)  # repeated rows included
        extra = torch.randn(2, 3, dtype=torch.float64, generator=generator)
        for model, opt in models_and_optimizers:
            opt.zero_grad()
            _loss(model, indices, extra).backward()
            if uncoalesced:
                assert not model["embedding"].weight.grad.is_coalesced()
            opt.step()


def _tolerance(backend):
    # reference: torch's own ops, the same bits; the cpu kernels round without fused multiply-adds
    return dict(rtol=0, atol=0) if backend == "reference" else dict(rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_sparse_grads_follow_torchs_trajectory_and_state(case, backend):
    name, kwargs = _name(case), CASES[case]
    ours_model, theirs_model = _model(0), _model(0)
    ours = getattr(fusedopt, name)(ours_model.parameters(), backend=backend, **kwargs)
    theirs = getattr(torch.optim, name)(theirs_model.parameters(), foreach=False, **kwargs)
    generator = torch.Generator().manual_seed(1)
    _steps([(ours_model, ours), (theirs_model, theirs)], 12, generator, uncoalesced=True)
    for p, q in zip(ours_model.parameters(), theirs_model.parameters()):
        torch.testing.assert_close(p, q, **_tolerance(backend))
    sd, reference_sd = ours.state_dict(), theirs.state_dict()
    assert {i: list(s) for i, s in sd["state"].items()} == {i: list(s) for i, s in reference_sd["state"].items()}
    for index, entry in reference_sd["state"].items():
        for key, value in entry.items():
            assert sd["state"][index][key].layout == value.layout, key  # SGD's buffer stays sparse, as torch's
            torch.testing.assert_close(sd["state"][index][key].to_dense(), value.to_dense(), **_tolerance(backend))


@pytest.mark.parametrize("case", ["SGD-momentum", "Adagrad-options"])
def test_sparse_grad_checkpoints_move_both_ways(case, backend):
    name, kwargs = _name(case), CASES[case]
    ours_model, theirs_model = _model(0), _model(0)
    ours = getattr(fusedopt, name)(ours_model.parameters(), backend=backend, **kwargs)
    theirs = getattr(torch.optim, name)(theirs_model.parameters(), foreach=False, **kwargs)
    generator = torch.Generator().manual_seed(2)
    _steps([(ours_model, ours), (theirs_model, theirs)], 4, generator)
    ours_saved, theirs_saved = copy.deepcopy(ours.state_dict()), copy.deepcopy(theirs.state_dict())
    ours.load_state_dict(theirs_saved)
    theirs.load_state_dict(ours_saved)
    _steps([(ours_model, ours), (theirs_model, theirs)], 6, generator)
    for p, q in zip(ours_model.parameters(), theirs_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


REFUSED = [
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.1), "weight_decay"),
    ("Adagrad", dict(lr=0.1, weight_decay=0.1), "weight_decay option is not compatible with sparse gradients"),
    ("SGD", dict(lr=0.1, max_grad_norm=1.0), "max_grad_norm"),
    ("Adagrad", dict(lr=0.1, clip_grad_value=0.5), "clip_grad_value"),
    ("SGD", dict(lr=0.1, momentum=0.9, clip_grad_norm_per_tensor=1.0), "clip_grad_norm_per_tensor"),
]


@pytest.mark.parametrize("name, kwargs, message", REFUSED, ids=lambda v: v if isinstance(v, str) else None)
def test_what_torchs_update_cannot_do_is_refused_before_anything_moves(name, kwargs, message, backend):
    model = _model(0)
    opt = getattr(fusedopt, name)(model.parameters(), backend=backend, **kwargs)
    dense_only = torch.Generator().manual_seed(3)
    for _ in range(2):  # state first, from dense grads only
        opt.zero_grad()
        _loss(model, torch.arange(4), torch.randn(2, 3, dtype=torch.float64, generator=dense_only)).backward()
        model["embedding"].weight.grad = model["embedding"].weight.grad.to_dense()
        opt.step()
    opt.zero_grad()
    _loss(model, torch.arange(4), torch.randn(2, 3, dtype=torch.float64, generator=dense_only)).backward()
    grads = [p.grad for p in model.parameters()]
    params_before = [p.detach().clone() for p in model.parameters()]
    state_before = copy.deepcopy(opt.state_dict())
    with pytest.raises(RuntimeError, match=message):
        opt.step()
    for p, before, grad in zip(model.parameters(), params_before, grads):
        assert torch.equal(p, before)
        assert p.grad is grad  # the sparse grad handed back
    after = opt.state_dict()
    for index, entry in state_before["state"].items():
        for key, value in entry.items():
            assert torch.equal(after["state"][index][key], value), key


def test_dense_grads_to_sparse_only_optimizers_still_refused():
    """Optimizers whose torch namesake refuses sparse grads still do (Adam: use lazy_mode)."""
    model = _model(0)
    opt = fusedopt.Adam(model.parameters())
    _loss(model, torch.arange(4), torch.randn(2, 3, dtype=torch.float64)).backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
