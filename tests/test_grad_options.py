"""fusedopt's two gradient options (issue 11): `clip_grad_value` on every optimizer and
`weight_decay_mode="absolute"` on those with decoupled weight decay.

The step-by-step equality with torch.optim for every optimizer and backend comes from the
spec rows (tests/optimizer_specs.py: `grad_options`, expected optimizers wrapped in
WithGradOptions); this file checks what the rows cannot: the order of the grad transforms
against torch's own calls (scaler.unscale_, clip_grad_norm_, clip_grad_value_), the grad
written back under GradScaler, per-group values, absolute decay's independence of lr, the
ValueErrors, checkpoints with and without the new group keys, and the torch.compile op.
"""
import copy
import inspect

import pytest
import torch

import fusedopt
from _compare import assert_params_close, initial_values
from fusedopt.optim._ops import compiled_step

BACKENDS = ("reference", "cpu", "triton")
SHAPES = ((7, 5), (33,), (1,))
# every optimizer of dense grads takes clip_grad_value (SparseAdam has torch's signature, and
# lazy mode refuses it: tests/test_sparse_adam.py)
# Every optimizer that takes the grad options (not SparseAdam, whose grads are sparse, nor
# Adafactor, which takes none of fusedopt's clipping options, as torch's takes none).
ALL_OPTIMIZERS = tuple(n for n in fusedopt.optim.__all__
                       if "clip_grad_value" in inspect.signature(getattr(fusedopt.optim, n)).parameters)
DECOUPLED = {"AdamW": {}, "Adam": {"decoupled_weight_decay": True}, "RAdam": {"decoupled_weight_decay": True},
             "NAdam": {"decoupled_weight_decay": True}, "Lion": {}}


def _usable(backend):
    reason = fusedopt.backends.unusable_reason(backend, torch.device("cpu"))
    if reason:
        pytest.skip(f"backend {backend!r} cannot run here: {reason}")


def _params(dtype=torch.float32, seed=0):
    return [torch.nn.Parameter(v.to(dtype)) for v in initial_values(seed, SHAPES)]


def _grads(step, scale=1.0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(100 + step)
    return [(torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype) for shape in SHAPES]


# --------------------------------------------------------------------------- the order of the transforms
TORCH_HYPER = {"AdamW": dict(lr=1e-2, weight_decay=0.1), "SGD": dict(lr=1e-2, momentum=0.9),
               "RMSprop": dict(lr=1e-3, centered=True, momentum=0.5)}


@pytest.mark.parametrize("name", list(TORCH_HYPER))
@pytest.mark.parametrize("backend", BACKENDS)
def test_unscale_then_norm_clip_then_value_clip_then_step(backend, name):
    """GradScaler + max_grad_norm + clip_grad_value equal torch's scaler.unscale_,
    clip_grad_norm_ (its norm over the unclamped grads), clip_grad_value_, then the step;
    p.grad after the step is the grad so transformed (written back under GradScaler, as
    torch's calls leave it). Scale 4 (a power of two: dividing by it is multiplying by its
    inverse, which is what torch's unscale_ does)."""
    _usable(backend)
    ours_params, torch_params = _params(), _params()
    ours = getattr(fusedopt, name)(ours_params, backend=backend, max_grad_norm=2.0, clip_grad_value=0.1,
                                   **TORCH_HYPER[name])
    theirs = getattr(torch.optim, name)(torch_params, foreach=False, **TORCH_HYPER[name])
    scalers = [torch.amp.GradScaler("cpu", init_scale=4.0, growth_interval=1000) for _ in range(2)]
    for step in range(4):
        given = _grads(step, scale=4.0)
        for params, optimizer, scaler in ((ours_params, ours, scalers[0]), (torch_params, theirs, scalers[1])):
            scaler.scale(torch.ones(()))  # sets up the scale, as scaling a loss does
            for p, g in zip(params, given):
                p.grad = g.clone()
            if optimizer is theirs:
                scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(params, 2.0)
                assert norm > 2.0  # the norm clip bites, then the clamp on top of it
                torch.nn.utils.clip_grad_value_(params, 0.1)
            scaler.step(optimizer)
            scaler.update()
        for mine, torchs, g in zip(ours_params, torch_params, given):
            torch.testing.assert_close(mine.grad, torchs.grad, rtol=1e-6, atol=1e-7)
            assert mine.grad.abs().max() <= 0.1 and torch.isclose(mine.grad.abs().max(), torch.tensor(0.1))
        assert_params_close(ours_params, torch_params, torch.float32)


@pytest.mark.parametrize("name", ["SGD", "AdamW", "RMSprop", "Adagrad", "NAdam", "RAdam", "Adamax", "ASGD",
                                  "Adadelta"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_max_grad_norm_scales_float64_grads_in_float64(backend, name):
    """torch's clip_grad_norm_ scales float64 grads by a float64 coefficient, and so do the
    kernels: it reached them rounded to float32 (about 1e-8 relative off torch, held to a
    float32 tolerance). 20 steps to float64's tolerance, the clip biting on each."""
    _usable(backend)
    hyper = TORCH_HYPER.get(name, dict(lr=1e-2))
    ours_params, torch_params = _params(torch.float64), _params(torch.float64)
    ours = getattr(fusedopt, name)(ours_params, backend=backend, max_grad_norm=0.5, **hyper)
    theirs = getattr(torch.optim, name)(torch_params, foreach=False, **hyper)
    for step in range(20):
        for p, q, g in zip(ours_params, torch_params, _grads(step, dtype=torch.float64)):
            p.grad, q.grad = g.clone(), g.clone()
        assert torch.nn.utils.clip_grad_norm_(torch_params, 0.5) > 0.5
        ours.step()
        theirs.step()
        assert_params_close(ours_params, torch_params, torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_alone_leaves_the_grads_as_they_were(backend):
    """Without GradScaler's scale nothing is written back: the clamp is on the value the
    update reads (as max_grad_norm's coefficient is)."""
    _usable(backend)
    params = _params()
    optimizer = fusedopt.SGD(params, lr=0.1, clip_grad_value=0.05, backend=backend)
    given = _grads(0)
    for p, g in zip(params, given):
        p.grad = g.clone()
    before = [p.detach().clone() for p in params]
    optimizer.step()
    for p, g, b in zip(params, given, before):
        assert torch.equal(p.grad, g)
        torch.testing.assert_close(p.detach(), b - 0.1 * g.clamp(-0.05, 0.05), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_group_clamps_with_its_own_value(backend):
    _usable(backend)
    params, torch_params = _params(), _params()
    ours = fusedopt.Adam([{"params": params[:2], "clip_grad_value": 0.2}, {"params": params[2:]}], lr=1e-2,
                         clip_grad_value=0.7, backend=backend)
    assert [g["clip_grad_value"] for g in ours.param_groups] == [0.2, 0.7]
    theirs = torch.optim.Adam(torch_params, lr=1e-2, foreach=False)
    for step in range(3):
        given = _grads(step)
        for p, g in zip(params, given):
            p.grad = g.clone()
        for p, g, bound in zip(torch_params, given, (0.2, 0.2, 0.7)):
            p.grad = g.clamp(-bound, bound)
        ours.step()
        theirs.step()
    assert_params_close(params, torch_params, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_grad_stays_nan(backend):
    """torch.clamp keeps a NaN a NaN (and clip_grad_value_ too): the clamp must not hide one."""
    _usable(backend)
    p = torch.nn.Parameter(torch.zeros(4))
    optimizer = fusedopt.SGD([p], lr=1.0, clip_grad_value=0.5, backend=backend)
    p.grad = torch.tensor([float("nan"), 2.0, -3.0, float("-inf")])
    optimizer.step()
    assert torch.isnan(p[0]) and p[1:].tolist() == [-0.5, 0.5, 0.5]


# --------------------------------------------------------------------------- absolute weight decay
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(DECOUPLED))
@pytest.mark.parametrize("backend", BACKENDS)
def test_absolute_decay_does_not_depend_on_lr(backend, name, dtype):
    """With lr = 0 the update moves nothing and absolute decay still multiplies every param
    by 1 - wd, rounded once to the math type (as torch's p.mul_(1 - wd)); decoupled decay
    (1 - lr*wd) then leaves the params as they were."""
    _usable(backend)
    for mode in ("absolute", "decoupled"):
        params = _params(dtype)
        before = [p.detach().clone() for p in params]
        optimizer = getattr(fusedopt, name)(params, lr=0.0, weight_decay=0.25, weight_decay_mode=mode,
                                            backend=backend, **DECOUPLED[name])
        for p, g in zip(params, _grads(0, dtype=dtype)):
            p.grad = g
        optimizer.step()
        for p, b in zip(params, before):
            in_math_type = b if dtype == torch.float64 else b.float()
            expected = (in_math_type * (1 - 0.25)).to(dtype) if mode == "absolute" else b
            assert torch.equal(p.detach(), expected), mode


# --------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("value", [0, 0.0, -1.0, float("nan"), float("inf"), True, "1", torch.tensor(1.0)], ids=repr)
@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_bad_clip_grad_value_is_a_value_error(name, value):
    with pytest.raises(ValueError, match="clip_grad_value"):
        getattr(fusedopt, name)(_params(), clip_grad_value=value)
    optimizer = getattr(fusedopt, name)(_params()[:1])
    with pytest.raises(ValueError, match="clip_grad_value"):
        optimizer.add_param_group({"params": _params()[1:], "clip_grad_value": value})
    assert len(optimizer.param_groups) == 1  # refused, not half added


@pytest.mark.parametrize("value", [0, 0.0, -1.0, float("nan"), float("inf"), True, "1", torch.tensor(1.0)], ids=repr)
@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_bad_max_grad_norm_is_a_value_error_in_every_group(name, value):
    """A group's own max_grad_norm is checked as the constructor's is: a negative one would
    have multiplied the grads by a negative coefficient (params moving up the gradient), NaN
    made every param NaN, 0 frozen them."""
    with pytest.raises(ValueError, match="max_grad_norm"):
        getattr(fusedopt, name)(_params(), max_grad_norm=value)
    with pytest.raises(ValueError, match="max_grad_norm"):
        getattr(fusedopt, name)([{"params": _params()[:1]}, {"params": _params()[1:], "max_grad_norm": value}])
    optimizer = getattr(fusedopt, name)(_params()[:1])
    with pytest.raises(ValueError, match="max_grad_norm"):
        optimizer.add_param_group({"params": _params()[1:], "max_grad_norm": value})
    assert len(optimizer.param_groups) == 1  # refused, not half added


# fusedopt's group options, and optimizers that do not take them.
NOT_TAKEN = [("Adafactor", key, value) for key, value in (("clip_grad_value", 1e-4), ("max_grad_norm", 1e-4),
                                                          ("clip_grad_norm_per_tensor", 1e-4), ("master_weights", True),
                                                          ("bf16_stochastic_round", True), ("lazy_mode", True))]
NOT_TAKEN += [(name, "lazy_mode", True) for name in ("SGD", "LAMB", "Lion", "Adagrad", "RMSprop", "NAdam", "Rprop")]
NOT_TAKEN += [(name, "optimized_update", True) for name in ("SGD", "RMSprop", "NAdam", "Lion")]
NOT_TAKEN += [("SparseAdam", "max_grad_norm", 1.0), ("SparseAdam", "master_weights", True)]


@pytest.mark.parametrize("name, key, value", NOT_TAKEN, ids=lambda v: str(v))
def test_a_group_option_the_optimizer_does_not_take_is_refused(name, key, value):
    """A group asking for an option its optimizer does not take is refused when added: it was
    silently ignored (Adafactor's clipping) or failed inside step() with an AttributeError or
    KeyError (lazy_mode outside Adam)."""
    refused = rf"^{name}( does not take |: ){key}\b"  # the reason, where a check above names one
    with pytest.raises(ValueError, match=refused):
        getattr(fusedopt, name)([{"params": _params()[:1]}, {"params": _params()[1:], key: value}])
    optimizer = getattr(fusedopt, name)(_params()[:1])
    with pytest.raises(ValueError, match=refused):
        optimizer.add_param_group({"params": _params()[1:], key: value})
    assert len(optimizer.param_groups) == 1
    off = {"master_weights": False, "bf16_stochastic_round": False, "lazy_mode": False, "optimized_update": False}
    if key in off:  # the value that leaves it off is no request
        optimizer.add_param_group({"params": _params()[1:], key: off[key]})
        assert len(optimizer.param_groups) == 2


@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_a_good_clip_grad_value_is_kept(name):
    optimizer = getattr(fusedopt, name)(_params(), clip_grad_value=3)
    assert optimizer.param_groups[0]["clip_grad_value"] == 3 and optimizer.defaults["clip_grad_value"] == 3


@pytest.mark.parametrize("option", ("clip_grad_value", "max_grad_norm", "clip_grad_norm_per_tensor"))
@pytest.mark.parametrize("backend", ("reference", "cpu"))
def test_a_clip_option_spoiled_after_construction_fails_before_any_update(backend, option):
    """Set by hand in the second group: refused before the first group's params move (a bad
    clip_grad_value was refused only when its own group's update ran, after the others')."""
    params = _params()
    optimizer = fusedopt.AdamW([{"params": params[:1]}, {"params": params[1:], option: 1.0}], backend=backend)
    optimizer.param_groups[1][option] = -2.0
    for p, g in zip(params, _grads(0)):
        p.grad = g
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match=option):
        optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))


@pytest.mark.parametrize("name", list(DECOUPLED))
def test_bad_weight_decay_mode_is_a_value_error(name):
    for mode in ("Absolute", "l2", "", None, 1):
        with pytest.raises(ValueError, match="weight_decay_mode"):
            getattr(fusedopt, name)(_params(), weight_decay_mode=mode, **DECOUPLED[name])
    optimizer = getattr(fusedopt, name)(_params()[:1], **DECOUPLED[name])
    with pytest.raises(ValueError, match="weight_decay_mode"):
        optimizer.add_param_group({"params": _params()[1:], "weight_decay_mode": "lr"})
    assert len(optimizer.param_groups) == 1
    optimizer.param_groups[0]["weight_decay_mode"] = "relative"  # spoiled later: refused at the step
    with pytest.raises(ValueError, match="weight_decay_mode"):
        optimizer.step()


@pytest.mark.parametrize("name", ["Adam", "RAdam", "NAdam"])
def test_absolute_decay_with_l2_decay_is_a_value_error(name):
    """Adam and RAdam add their weight decay to the gradient unless decoupled_weight_decay:
    absolute decay would have no meaning there, so it is refused rather than ignored."""
    with pytest.raises(ValueError, match="L2"):
        getattr(fusedopt, name)(_params(), weight_decay=0.1, weight_decay_mode="absolute")
    optimizer = getattr(fusedopt, name)(_params()[:1], decoupled_weight_decay=True, weight_decay_mode="absolute")
    with pytest.raises(ValueError, match="L2"):
        optimizer.add_param_group({"params": _params()[1:], "decoupled_weight_decay": False})
    getattr(fusedopt, name)(_params(), decoupled_weight_decay=True, weight_decay_mode="absolute")


@pytest.mark.parametrize("name", ["SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "Rprop", "ASGD"])
def test_optimizers_with_l2_decay_take_no_weight_decay_mode(name):
    """No keyword where the decay is L2 (Python's TypeError names it); a param group asking
    for absolute decay (or a mode that does not exist) is a ValueError, not ignored."""
    with pytest.raises(TypeError, match="weight_decay_mode"):
        getattr(fusedopt, name)(_params(), weight_decay_mode="absolute")
    optimizer = getattr(fusedopt, name)(_params()[:1])
    for mode in ("absolute", "bogus"):
        with pytest.raises(ValueError, match="weight_decay_mode"):
            optimizer.add_param_group({"params": _params()[1:], "weight_decay_mode": mode})
    optimizer.add_param_group({"params": _params()[1:], "weight_decay_mode": "decoupled"})


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_defaults_are_left_out_of_state_dict(name):
    """fusedopt's own keys at their defaults are not in state_dict() (so torch.optim and DCP
    load fusedopt checkpoints); set, they are."""
    group = getattr(fusedopt, name)(_params()).state_dict()["param_groups"][0]
    assert "clip_grad_value" not in group and "weight_decay_mode" not in group
    extra = {"weight_decay_mode": "absolute", **DECOUPLED[name]} if name in DECOUPLED else {}
    group = getattr(fusedopt, name)(_params(), clip_grad_value=0.5, **extra).state_dict()["param_groups"][0]
    assert group["clip_grad_value"] == 0.5
    if extra:
        assert group["weight_decay_mode"] == "absolute"


@pytest.mark.parametrize("name", list(DECOUPLED))
def test_a_checkpoint_without_the_keys_loads_with_the_defaults(name):
    """An older fusedopt checkpoint (or torch.optim's) has neither key: the loaded groups get
    clip_grad_value=None and weight_decay_mode="decoupled", whatever this optimizer was
    built with, and the next step runs."""
    params = _params()
    source = getattr(fusedopt, name)(params, **DECOUPLED[name])
    for p, g in zip(params, _grads(0)):
        p.grad = g
    source.step()
    checkpoint = copy.deepcopy(source.state_dict())
    assert not {"clip_grad_value", "weight_decay_mode"} & set(checkpoint["param_groups"][0])
    target = getattr(fusedopt, name)(params, clip_grad_value=0.5, weight_decay_mode="absolute",
                                     **DECOUPLED[name])
    target.load_state_dict(checkpoint)
    group = target.param_groups[0]
    assert group["clip_grad_value"] is None and group["weight_decay_mode"] == "decoupled"
    target.step()


def test_a_checkpoint_with_the_options_loads_into_torch_optim():
    params = _params()
    ours = fusedopt.AdamW(params, clip_grad_value=0.5, weight_decay_mode="absolute")
    for p, g in zip(params, _grads(0)):
        p.grad = g
    ours.step()
    theirs = torch.optim.AdamW(_params())
    theirs.load_state_dict(ours.state_dict())
    assert theirs.param_groups[0]["weight_decay_mode"] == "absolute"  # kept, unread, as any extra key


# --------------------------------------------------------------------------- torch.compile's op
@pytest.mark.parametrize("name", ["AdamW", "Lion", "SGD"])
@pytest.mark.parametrize("backend", ("reference", "cpu"))
def test_the_compiled_path_carries_both_options(backend, name):
    """compiled_step (what dynamo traces: fusedopt::update_ per group and dtype) gives the
    eager step's bits with clip_grad_value and absolute decay."""
    extra = {"weight_decay_mode": "absolute", "weight_decay": 0.05} if name != "SGD" else {}
    runs = []
    for traced in (False, True):
        params = _params()
        optimizer = getattr(fusedopt, name)(params, lr=1e-2, clip_grad_value=0.3, backend=backend, **extra)
        for step in range(3):
            for p, g in zip(params, _grads(step)):
                p.grad = g
            compiled_step(optimizer) if traced else optimizer.step()
        runs.append(params)
    for eager, traced in zip(*runs):
        assert torch.equal(eager, traced)


def test_the_op_refuses_a_bad_clip_value():
    p = torch.nn.Parameter(torch.zeros(3))
    g = torch.ones(3)
    with pytest.raises(ValueError, match="clip_grad_value"):
        torch.ops.fusedopt.update_("sgd", [p], [g], [], [], "", "lr,momentum,dampening,weight_decay,nesterov,maximize",
                                   [0.1, 0.0, 0.0, 0.0, 0.0, 0.0], False, False, None, None, None, "reference", -1.0)
