"""`_step_supports_amp_scaling` (issue 15): torch's GradScaler.step reads it as "hand me
grad_scale and found_inf, I unscale inside step()" (fusedopt's fast path: no separate
unscale pass, no sync); frameworks (Lightning) read it as "never unscale before step()" and
then refuse to clip. fusedopt says True to torch only, and copes with an explicit unscale_."""
import pytest
import torch

import fusedopt


def _model_and_loss(scale_targets=50.0):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 2))
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 6, generator=g), scale_targets * torch.randn(8, 2, generator=g)) for _ in range(5)]
    return model, batches


_check_and_unscale = torch._amp_foreach_non_finite_check_and_unscale_


def _only_checks(grads, found_inf, inv_scale):
    """GradScaler's inf check (inv_scale 1) runs for fused optimizers too; unscaling must not."""
    if inv_scale.item() != 1.0:
        pytest.fail("GradScaler unscaled fusedopt's grads itself")
    return _check_and_unscale(grads, found_inf, inv_scale)


def test_flag_is_true_for_torch_only(backend):
    optimizer = fusedopt.AdamW([torch.nn.Parameter(torch.ones(3))], backend=backend)
    assert getattr(optimizer, "_step_supports_amp_scaling", False) is False  # as Lightning reads it
    from torch.amp import grad_scaler
    assert eval("getattr(optimizer, '_step_supports_amp_scaling', False)",  # noqa: S307 — a frame in torch's module
                vars(grad_scaler), {"optimizer": optimizer}) is True


def test_grad_scaler_step_keeps_the_fused_unscale(backend, monkeypatch):
    """scaler.step without unscale_: GradScaler hands the scale to the optimizer (torch's own
    unscale kernel never runs), and the result equals torch.optim.AdamW under GradScaler."""
    model, batches = _model_and_loss()
    reference, _ = _model_and_loss()
    optimizer = fusedopt.AdamW(model.parameters(), lr=1e-2, backend=backend)
    theirs = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    ours_scaler, their_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10), torch.amp.GradScaler("cpu", init_scale=2.0**10)
    seen = []
    step = optimizer.step

    def recording_step(*args, **kwargs):
        seen.append(getattr(optimizer, "grad_scale", None))
        return step(*args, **kwargs)

    monkeypatch.setattr(optimizer, "step", recording_step)
    for x, y in batches:
        for net, opt, scaler in ((model, optimizer, ours_scaler), (reference, theirs, their_scaler)):
            scaler.scale(torch.nn.functional.mse_loss(net(x), y)).backward()
            if opt is optimizer:
                with monkeypatch.context() as m:
                    m.setattr(torch, "_amp_foreach_non_finite_check_and_unscale_", _only_checks)
                    scaler.step(opt)
            else:
                scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    assert len(seen) == len(batches) and all(isinstance(s, torch.Tensor) and s.item() == 2.0**10 for s in seen)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_unscale_then_clip_then_step_as_frameworks_do(backend):
    """scaler.unscale_, clip_grad_norm_, scaler.step (Lightning's and HF Trainer's order):
    GradScaler then hands over found_inf alone; an inf grad skips the step, as for torch."""
    model, batches = _model_and_loss()
    reference, _ = _model_and_loss()
    optimizer = fusedopt.AdamW(model.parameters(), lr=1e-2, backend=backend)
    theirs = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    scalers = {id(optimizer): torch.amp.GradScaler("cpu", init_scale=2.0**10),
               id(theirs): torch.amp.GradScaler("cpu", init_scale=2.0**10)}
    for index, (x, y) in enumerate(batches):
        for net, opt in ((model, optimizer), (reference, theirs)):
            scaler = scalers[id(opt)]
            scaler.scale(torch.nn.functional.mse_loss(net(x), y)).backward()
            if index == 2:
                net[0].weight.grad[0, 0] = float("inf")
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    assert scalers[id(optimizer)].get_scale() == scalers[id(theirs)].get_scale() == 2.0**9  # one skip halved it
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert optimizer.state[model[0].weight]["step"].item() == len(batches) - 1
