"""Lines copied from torch code run unchanged: torch.optim's implementation keywords,
its __setstate__ defaults for checkpoints that lack a flag, and state_dict hooks that
store entries which are not per-param dicts."""
import inspect

import pytest
import torch

import fusedopt

# Every fusedopt optimizer torch.optim also has, and the implementation switches its
# torch namesake takes.
CLASSES = {name: (getattr(fusedopt, name), getattr(torch.optim, name))
           for name in fusedopt.optim.__all__ if hasattr(torch.optim, name)}
FLAGS = {name: tuple(flag for flag in ("foreach", "fused") if flag in inspect.signature(theirs).parameters)
         for name, (_, theirs) in CLASSES.items()}


def _param():
    p = torch.nn.Parameter(torch.randn(5))
    p.grad = torch.randn(5)
    return p


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("value", [True, False])
def test_foreach_and_fused_keywords_are_accepted(name, value, backend):
    ours, theirs = CLASSES[name]
    for flag in FLAGS[name]:
        p = _param()
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = p.grad.clone()
        opt = ours([p], lr=0.1, backend=backend, **{flag: value})
        assert opt.param_groups[0][flag] is value  # kept, so a checkpoint means the same to torch
        opt.step()
        theirs([q], lr=0.1).step()
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("name", [n for n, (_, theirs) in CLASSES.items()
                                  if "differentiable" in inspect.signature(theirs).parameters])
def test_differentiable_false_accepted_true_refused(name):
    ours, _ = CLASSES[name]
    ours([_param()], differentiable=False)
    with pytest.raises(RuntimeError, match="differentiable"):
        ours([_param()], differentiable=True)


def test_adam_decoupled_weight_decay_is_adamw(backend):
    torch.manual_seed(0)
    values = torch.randn(6)
    runs = []
    for make in (lambda ps: fusedopt.Adam(ps, lr=0.1, weight_decay=0.1, decoupled_weight_decay=True, backend=backend),
                 lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.1)):
        p = torch.nn.Parameter(values.clone())
        opt = make([p])
        for step in range(5):
            p.grad = torch.full((6,), float(step + 1))
            opt.step()
        runs.append(p)
    torch.testing.assert_close(runs[0], runs[1])


# torch.optim's __setstate__ defaults: a flag missing from a loaded group takes the value
# it historically had, not the one this optimizer was constructed with.
MISSING_FLAG = [("Adam", "maximize", True, False), ("Adam", "amsgrad", True, False),
                ("SGD", "maximize", True, False), ("SGD", "nesterov", True, False),
                ("RMSprop", "maximize", True, False), ("RMSprop", "centered", True, False),
                ("Adam", "optimized_update", True, False), ("Adam", "max_grad_norm", 1.0, None)]


@pytest.mark.parametrize("name,flag,constructed,historical", MISSING_FLAG, ids=lambda v: str(v))
def test_flag_missing_from_a_checkpoint_takes_torchs_default(name, flag, constructed, historical, backend):
    ours, theirs = CLASSES[name]
    kwargs = {"momentum": 0.9} if name in ("SGD", "RMSprop") else {}
    p = _param()
    saved = ours([p], lr=0.1, backend=backend, **kwargs).state_dict()
    saved["param_groups"][0].pop(flag, None)  # fusedopt leaves its own keys out at their defaults
    opt = ours([p], lr=0.1, backend=backend, **kwargs, **{flag: constructed})
    opt.load_state_dict(saved)
    assert opt.param_groups[0][flag] == historical
    if flag in ("maximize", "amsgrad", "nesterov", "centered"):  # torch agrees
        twin = theirs([p], lr=0.1, **kwargs, **{flag: constructed})
        twin.load_state_dict(saved)
        assert twin.param_groups[0][flag] == historical


def test_state_entries_that_are_not_dicts_pass_through(backend):
    """torch's own hook tests store `opt.state["test"] = 1` in a state_dict pre-hook."""
    p = _param()
    opt = fusedopt.Adam([p], backend=backend)
    opt.step()

    def pre_hook(optimizer):
        optimizer.state["test"] = 1

    def post_hook(optimizer, state_dict):
        state_dict["state"].pop("test", None)
        state_dict["ran"] = True
        return state_dict

    opt.register_state_dict_pre_hook(pre_hook)
    opt.register_state_dict_post_hook(post_hook)
    saved = opt.state_dict()
    assert saved["ran"] and "test" not in saved["state"] and set(saved["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    opt.state.pop("test")
    opt.step()  # the plain entry is gone again; steps go on

    plain = fusedopt.Adam([p], backend=backend)
    plain.state["test"] = 1
    assert plain.state_dict()["state"] == {"test": 1}


def test_load_state_dict_and_step_hooks_run(backend):
    p = _param()
    opt = fusedopt.SGD([p], lr=0.1, momentum=0.9, backend=backend)
    calls = []
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load-pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load-post"))
    opt.register_step_pre_hook(lambda o, a, k: calls.append("step-pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("step-post"))
    opt.step()
    opt.load_state_dict(opt.state_dict())
    assert calls == ["step-pre", "step-post", "load-pre", "load-post"]


# Tensor betas stay tensors in the group (and so in state_dict), as torch.optim keeps them;
# the kernels read their values at each step, so one changed in place takes effect.
TENSOR_BETAS = ["Adam", "AdamW", "Adamax", "RAdam"]


@pytest.mark.parametrize("name", TENSOR_BETAS)
@pytest.mark.parametrize("beta_dtype", [torch.float64, torch.float32])
def test_tensor_betas_are_kept_and_train_as_torchs(name, beta_dtype, backend):
    torch.manual_seed(0)
    start = torch.randn(9, dtype=torch.float64)
    grads = [torch.randn(9, dtype=torch.float64) for _ in range(20)]
    runs = []
    for make in (getattr(fusedopt, name), getattr(torch.optim, name)):
        p = torch.nn.Parameter(start.clone())
        betas = (torch.tensor(0.8, dtype=beta_dtype), torch.tensor(0.95, dtype=beta_dtype))
        kwargs = dict(backend=backend) if make.__module__.startswith("fusedopt") else dict(foreach=False)
        opt = make([p], lr=0.01, betas=betas, **kwargs)
        assert opt.param_groups[0]["betas"][0] is betas[0]
        for step, grad in enumerate(grads):
            if step == 10:
                betas[1].fill_(0.9)  # changed in place: both read the new value from here on
            p.grad = grad.clone()
            opt.step()
        runs.append((p, opt))
    (ours, ours_opt), (theirs, theirs_opt) = runs
    # torch computes float32 tensor betas' bias corrections in float32; fusedopt in float64
    tolerance = dict(rtol=1e-13, atol=1e-15) if beta_dtype == torch.float64 else dict(rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours, theirs, **tolerance)
    saved = ours_opt.state_dict()["param_groups"][0]["betas"]
    assert all(isinstance(b, torch.Tensor) and b.dtype == beta_dtype for b in saved)
    theirs_opt.load_state_dict(ours_opt.state_dict())  # and torch.optim takes them as its own
    assert torch.equal(theirs_opt.param_groups[0]["betas"][1], torch.tensor(0.9, dtype=beta_dtype))


def test_hooks_see_and_shape_the_state_dict_as_torchs_do(backend):
    """A state_dict post-hook sees the final form (no `backend`, which fusedopt leaves out),
    and a load pre-hook may convert a checkpoint before fusedopt judges it."""
    p = _param()
    opt = fusedopt.Adam([p], lr=0.1, backend=backend)
    opt.step()
    seen = []
    opt.register_state_dict_post_hook(lambda o, sd: seen.append(set(sd["param_groups"][0])))
    saved = opt.state_dict()
    assert seen == [set(saved["param_groups"][0])] and "backend" not in seen[0]

    legacy = opt.state_dict()
    del legacy["param_groups"][0]["eps"]  # a converter's job: a pre-hook restores it

    def restore_eps(optimizer, state_dict):
        state_dict["param_groups"] = [dict(group, eps=1e-8) for group in state_dict["param_groups"]]
        return state_dict

    for make in (lambda: fusedopt.Adam([p], lr=0.1, backend=backend), lambda: torch.optim.Adam([p], lr=0.1)):
        other = make()
        other.register_load_state_dict_pre_hook(restore_eps)
        other.load_state_dict(legacy)
        assert other.param_groups[0]["eps"] == 1e-8
    with pytest.raises(ValueError, match="eps"):  # without the hook, fusedopt says what is missing
        fusedopt.Adam([p], lr=0.1, backend=backend).load_state_dict(legacy)


@pytest.mark.parametrize("name", CLASSES)
def test_every_flag_torch_defaults_on_load_is_defaulted_alike(name):
    """For each flag torch.optim.<name>.__setstate__ fills in when a loaded group lacks it,
    fusedopt fills in the same value (found by asking torch, not by restating its table)."""
    ours, theirs = CLASSES[name]
    probe = theirs([_param()])
    flags = [key for key, value in probe.param_groups[0].items() if isinstance(value, bool) or value is None]
    assert flags
    for flag in flags:
        saved = probe.state_dict()
        del saved["param_groups"][0][flag]
        torch_loaded = theirs([_param()])
        torch_loaded.load_state_dict(saved)
        if flag not in torch_loaded.param_groups[0]:
            continue  # torch has no default for it either
        ours_loaded = ours([_param()])
        ours_loaded.load_state_dict(saved)
        assert ours_loaded.param_groups[0][flag] == torch_loaded.param_groups[0][flag], flag
