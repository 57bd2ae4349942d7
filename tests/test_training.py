"""Training loops as users write them, fusedopt against torch.optim: schedulers,
closures, param groups, add_param_group, params without grads, zero_grad, GradScaler,
and a small MLP trained to the same loss."""
import pytest
import torch

import fusedopt
from _compare import (LR, REPRESENTATIVE_CASES, Case, KingmaBaAdam, assert_params_close, assert_same_state,
                      gradients, initial_values, make_params)

DTYPE = torch.float32


def pair(case: Case, backend: str, values=None):
    """(fusedopt params, optimizer), (torch params, optimizer) from the same values."""
    values = initial_values() if values is None else values
    params, reference_params = make_params(values, DTYPE), make_params(values, DTYPE)
    return (params, case.fused(params, backend)), (reference_params, case.expected(reference_params))


def set_grads(params, step_grads):
    for p, g in zip(params, step_grads):
        p.grad = None if g is None else g.to(p.dtype)


# --------------------------------------------------------------------------- schedulers
SCHEDULERS = {
    "StepLR": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5),
    "CosineAnnealingLR": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10),
    "ReduceLROnPlateau": lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1),
}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("case", [Case("AdamW", (("weight_decay", 0.1),)), Case("SGD", (("momentum", 0.9),)),
                                  Case("RMSprop", (("centered", True),))], ids=str)
def test_scheduler_trajectory(case, scheduler, backend):
    (params, opt), (reference_params, reference) = pair(case, backend)
    schedulers = SCHEDULERS[scheduler](opt), SCHEDULERS[scheduler](reference)
    lrs, reference_lrs = [], []
    for step, step_grads in enumerate(gradients(steps=16)):
        for ps, o, s, record in ((params, opt, schedulers[0], lrs), (reference_params, reference, schedulers[1],
                                                                     reference_lrs)):
            set_grads(ps, step_grads)
            o.step()
            if scheduler == "ReduceLROnPlateau":
                s.step(1.0 if step < 8 else 1.0 - 0.01 * step)  # a plateau, then progress
            else:
                s.step()
            record.append(o.param_groups[0]["lr"])
    assert lrs == reference_lrs
    assert len(set(lrs)) > 2  # the schedule did change the lr
    assert_params_close(params, reference_params, DTYPE)


# --------------------------------------------------------------------------- closure
@pytest.mark.parametrize("case", REPRESENTATIVE_CASES, ids=str)
def test_step_with_closure(case, backend):
    """step(closure) calls the closure once with grad enabled and returns its loss."""
    (params, opt), (reference_params, reference) = pair(case, backend)
    targets = initial_values(seed=5)
    for _ in range(5):
        for ps, o in ((params, opt), (reference_params, reference)):
            calls = []

            def closure():
                calls.append(torch.is_grad_enabled())
                o.zero_grad()
                loss = sum(((p - t.to(p.dtype)) ** 2).sum() for p, t in zip(ps, targets))
                loss.backward()
                return loss

            with torch.no_grad():
                loss = o.step(closure)
            assert calls == [True]
            assert isinstance(loss, torch.Tensor) and loss.requires_grad
    assert_params_close(params, reference_params, DTYPE)


def test_step_returns_none_without_closure(backend):
    (params, opt), _ = pair(REPRESENTATIVE_CASES[0], backend)
    set_grads(params, gradients(steps=1)[0])
    assert opt.step() is None


# --------------------------------------------------------------------------- param groups
GROUP_OPTIONS = {
    "Adam": [dict(lr=0.1, weight_decay=0.1, amsgrad=True), dict(), dict(lr=1e-3, amsgrad=False, maximize=True)],
    "AdamW": [dict(lr=0.05, weight_decay=0.0), dict(amsgrad=True, betas=(0.8, 0.9)), dict(weight_decay=0.3)],
    "SGD": [dict(momentum=0.9, nesterov=True), dict(lr=0.1), dict(momentum=0.5, dampening=0.3, weight_decay=0.1)],
    "RMSprop": [dict(centered=True), dict(momentum=0.9, alpha=0.9), dict(lr=1e-3, weight_decay=0.1, maximize=True)],
}


def grouped(params, options):
    return [dict(params=params[i::len(options)], **o) for i, o in enumerate(options)]


@pytest.mark.parametrize("name", GROUP_OPTIONS)
def test_param_groups_with_own_options(name, backend):
    values, grads = initial_values(), gradients()
    params, reference_params = make_params(values, DTYPE), make_params(values, DTYPE)
    opt = getattr(fusedopt, name)(grouped(params, GROUP_OPTIONS[name]), lr=LR[name], backend=backend)
    reference = getattr(torch.optim, name)(grouped(reference_params, GROUP_OPTIONS[name]), lr=LR[name],
                                           foreach=False)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in reference.param_groups]
    for step_grads in grads:
        for ps, o in ((params, opt), (reference_params, reference)):
            set_grads(ps, step_grads)
            o.step()
    assert_params_close(params, reference_params, DTYPE)
    assert_same_state(opt, reference, params, reference_params, DTYPE)


@pytest.mark.parametrize("name", GROUP_OPTIONS)
def test_add_param_group_mid_training(name, backend):
    values, grads = initial_values(), gradients()
    params, reference_params = make_params(values, DTYPE), make_params(values, DTYPE)
    first, later = {"lr": LR[name], **GROUP_OPTIONS[name][0]}, GROUP_OPTIONS[name][2]
    opt = getattr(fusedopt, name)(params[:3], backend=backend, **first)
    reference = getattr(torch.optim, name)(reference_params[:3], foreach=False, **first)
    for step, step_grads in enumerate(grads):
        if step == 8:
            opt.add_param_group(dict(params=params[3:], **later))
            reference.add_param_group(dict(params=reference_params[3:], **later))
            assert opt.param_groups[1]["backend"] == backend
        for ps, o in ((params, opt), (reference_params, reference)):
            set_grads(ps, step_grads)  # params of the later group get grads before they join it
            o.step()
    assert_params_close(params, reference_params, DTYPE)
    assert_same_state(opt, reference, params, reference_params, DTYPE)


# --------------------------------------------------------------------------- grads that are None
@pytest.mark.parametrize("case", REPRESENTATIVE_CASES, ids=str)
def test_params_without_grad_are_skipped_then_join(case, backend):
    """A param whose grad is None is left alone with no state (as torch: Adagrad's is made up
    front); when its grad appears later
    it starts from fresh state (SGD's first-step rule: the buffer starts as the grad), the
    others keep theirs (per-param step counts then differ)."""
    (params, opt), (reference_params, reference) = pair(case, backend)
    late = 3  # index of the param whose grad appears at step 6 (the 4097-element one)
    untouched = params[late].detach().clone()
    for step, step_grads in enumerate(gradients()):
        step_grads = [None if (i == late and step < 6) or (i == 0 and step % 3 == 1) else g
                      for i, g in enumerate(step_grads)]
        for ps, o in ((params, opt), (reference_params, reference)):
            set_grads(ps, step_grads)
            o.step()
        if step < 6:  # no state, unless torch.optim creates it in its constructor (Adagrad)
            assert (params[late] in opt.state) == (reference_params[late] in reference.state)
            assert torch.equal(params[late], untouched)
    assert_params_close(params, reference_params, DTYPE)
    assert_same_state(opt, reference, params, reference_params, DTYPE)


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("case", REPRESENTATIVE_CASES, ids=str)
def test_zero_grad(case, set_to_none, backend):
    """zero_grad(set_to_none=...) leaves what torch leaves; stepping right after it is a
    no-op with None grads and a zero-gradient update with zeroed grads."""
    (params, opt), (reference_params, reference) = pair(case, backend)
    for step_grads in gradients(steps=6):
        for ps, o in ((params, opt), (reference_params, reference)):
            for p, g in zip(ps, step_grads):
                if p.grad is None:
                    p.grad = g.to(p.dtype).clone()
                else:
                    p.grad.copy_(g)  # the same grad tensors every step, as backward() does
            o.step()
            o.zero_grad(set_to_none=set_to_none)
            for p in ps:
                assert (p.grad is None) if set_to_none else torch.equal(p.grad, torch.zeros_like(p))
            o.step()
    assert_params_close(params, reference_params, DTYPE)
    assert_same_state(opt, reference, params, reference_params, DTYPE)


def test_step_hooks_run(backend):
    (params, opt), _ = pair(REPRESENTATIVE_CASES[0], backend)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", o.state.get(params[1], {}).get("step"))))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", o.state[params[1]]["step"].item())))
    set_grads(params, gradients(steps=1)[0])
    opt.step()
    assert calls == [("pre", None), ("post", 1.0)]


def test_empty_param_group(backend):
    """A group with no params (torch allows one) is skipped; the others step as usual."""
    (params, opt), (reference_params, reference) = pair(REPRESENTATIVE_CASES[0], backend)
    opt.add_param_group({"params": []})
    reference.add_param_group({"params": []})
    for step_grads in gradients(steps=3):
        for ps, o in ((params, opt), (reference_params, reference)):
            set_grads(ps, step_grads)
            o.step()
    assert_params_close(params, reference_params, DTYPE)


# --------------------------------------------------------------------------- GradScaler
@pytest.mark.parametrize("unscale_first", [False, True], ids=["scaled", "unscale_+clip"])
@pytest.mark.parametrize("skip", [0, 3], ids=["inf-at-first-step", "inf-at-step-3"])
@pytest.mark.parametrize("case", REPRESENTATIVE_CASES, ids=str)
def test_grad_scaler(case, skip, unscale_first, backend):
    """torch.amp.GradScaler unscales, skips the step on inf grads and adjusts the scale
    the same way with fusedopt as with torch.optim (optionally with unscale_ and
    clip_grad_norm_ between backward and step)."""
    (params, opt), (reference_params, reference) = pair(case, backend)
    scalers = torch.amp.GradScaler("cpu", init_scale=2.0**8), torch.amp.GradScaler("cpu", init_scale=2.0**8)
    targets = initial_values(seed=7)
    for step in range(8):
        for ps, o, scaler in ((params, opt, scalers[0]), (reference_params, reference, scalers[1])):
            o.zero_grad()
            loss = sum(((p - t.to(p.dtype)) ** 2).sum() for p, t in zip(ps, targets))
            scaler.scale(loss).backward()
            if step == skip:
                ps[2].grad[0] = float("inf")  # this step must be skipped
            if unscale_first:
                scaler.unscale_(o)
                torch.nn.utils.clip_grad_norm_(ps, max_norm=5.0)
            scaler.step(o)
            scaler.update()
    assert scalers[0].get_scale() == scalers[1].get_scale() < 2.0**8
    assert_params_close(params, reference_params, DTYPE)


# --------------------------------------------------------------------------- an MLP
def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(),
                               torch.nn.Linear(32, 1))


def data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(256, 8, generator=g)
    return x, torch.sin(x.sum(dim=1, keepdim=True)) + 0.3 * torch.randn(256, 1, generator=g)


def train(model, optimizer, steps=200):
    x, y = data()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# Hyper-parameters where training is not chaotic: torch.optim's own final loss moves by
# less than 1e-5 relative when the initial params move by one ulp (checked by the test),
# so a few-ulp difference per step (fused multiply-adds) cannot explain a larger gap.
MLP_OPTIMIZERS = {
    "Adam": dict(lr=1e-3),
    "AdamW": dict(lr=1e-3, weight_decay=0.05),
    "AdamW-optimized_update": dict(lr=1e-3, weight_decay=0.05, optimized_update=True),
    "SGD-nesterov": dict(lr=2e-2, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "RMSprop-centered-momentum": dict(lr=1e-4, centered=True, momentum=0.9),
}


def reference_optimizer(name, params, kwargs):
    if kwargs.get("optimized_update"):
        return KingmaBaAdam(params, decoupled=name == "AdamW", **{k: v for k, v in kwargs.items()
                                                                  if k != "optimized_update"})
    return getattr(torch.optim, name)(params, foreach=False, **kwargs)


_mlp_reference_losses = {}


@pytest.mark.parametrize("label", MLP_OPTIMIZERS)
def test_mlp_reaches_torchs_loss(label, backend):
    kwargs, name = MLP_OPTIMIZERS[label], label.split("-")[0]
    if label not in _mlp_reference_losses:  # torch's run, and its sensitivity to one ulp
        reference_model, perturbed = mlp(), mlp()
        with torch.no_grad():
            for p in perturbed.parameters():
                p.copy_(torch.nextafter(p, torch.full_like(p, float("inf"))))
        losses = train(reference_model, reference_optimizer(name, reference_model.parameters(), kwargs))
        perturbed_losses = train(perturbed, reference_optimizer(name, perturbed.parameters(), kwargs))
        assert perturbed_losses[-1] == pytest.approx(losses[-1], rel=1e-5), "premise: training is not chaotic"
        assert losses[-1] < 0.5 * losses[0]  # it did train
        _mlp_reference_losses[label] = losses
    reference_losses = _mlp_reference_losses[label]
    model = mlp()
    losses = train(model, getattr(fusedopt, name)(model.parameters(), backend=backend, **kwargs))
    assert losses[-1] == pytest.approx(reference_losses[-1], rel=1e-4)
