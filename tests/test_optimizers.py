"""Every optimizer x every option combination x backend x dtype, step by step against
torch.optim (and against KingmaBaAdam for optimized_update=True), plus state layout and
defaults."""
import pytest
import torch

import fusedopt
from _compare import (ALL_CASES, SCALAR_STATE_KEYS, DTYPE_IDS, LR, KingmaBaAdam, assert_low_precision_ok, assert_params_close, assert_same_state, expected_run, gradients, initial_values, max_error, run)

EXACT_DTYPES = [torch.float64, torch.float32]
LOW_DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", EXACT_DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("case", ALL_CASES, ids=str)
def test_matches_torch(case, dtype, backend):
    expected_params, expected_opt = expected_run(case, dtype)
    params, opt = run(lambda ps: case.fused(ps, backend), initial_values(), gradients(), dtype)
    assert_params_close(params, expected_params, dtype)
    assert_same_state(opt, expected_opt, params, expected_params, dtype)


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("case", ALL_CASES, ids=str)
def test_low_precision_error_at_most_twice_torchs(case, dtype, backend):
    """16-bit params: error against a float64 run on the same (rounded) inputs is at most
    about twice torch.optim's own (fused=True where torch has it) in the same dtype."""
    truth, _ = expected_run(case, torch.float64, round_to=dtype)
    torch_case = case.torch_default_form()  # torch has only the default bias-correction form
    torch_params, _ = expected_run(torch_case, dtype, fused_torch=True)
    torch_truth, _ = expected_run(torch_case, torch.float64, round_to=dtype)
    params, opt = run(lambda ps: case.fused(ps, backend), initial_values(), gradients(), dtype)
    for p in params:
        assert p.dtype == dtype and torch.isfinite(p).all()
        for key, value in opt.state[p].items():
            assert value.dtype == (torch.float32 if key == "step" or key in SCALAR_STATE_KEYS else dtype), key
    assert_low_precision_ok(max_error(params, truth), max_error(torch_params, torch_truth), dtype, case.id)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_optimized_update_differs_measurably_with_large_eps(name, backend):
    """With eps=1e-1 the two bias-correction forms give clearly different params, and each
    still matches its own float64 reference."""
    values, grads = initial_values(), gradients(steps=10)
    kwargs = dict(lr=1e-2, eps=1e-1, weight_decay=0.1)
    ref_default, _ = run(lambda ps: getattr(torch.optim, name)(ps, foreach=False, **kwargs), values, grads,
                         torch.float64)
    ref_kb, _ = run(lambda ps: KingmaBaAdam(ps, decoupled=name == "AdamW", **kwargs), values, grads, torch.float64)
    for optimized, reference in ((False, ref_default), (True, ref_kb)):
        params, _ = run(lambda ps: getattr(fusedopt, name)(ps, optimized_update=optimized, backend=backend, **kwargs),
                        values, grads, torch.float64)
        assert_params_close(params, reference, torch.float64)
    # The forms differ by a factor ~sqrt(1 - b2^t) on eps: after 10 steps that moves
    # params by far more than rounding could.
    assert max_error(ref_default, ref_kb) > 1e-3


@pytest.mark.parametrize("case", ALL_CASES, ids=str)
def test_state_layout(case, backend):
    """Exactly torch's state keys per param (and in state_dict, in torch's order), step a float tensor with
    torch's value, state tensors of the param's dtype and shape, group keys a superset of
    torch's."""
    values, grads = initial_values(), gradients(steps=3)
    params, opt = run(lambda ps: case.fused(ps, backend), values, grads, torch.float32)
    torch_case = case.torch_default_form()
    torch_params, torch_opt = run(lambda ps: torch_case.expected(ps), values, grads, torch.float32)
    sd, torch_sd = opt.state_dict(), torch_opt.state_dict()  # before `opt.state[p]` creates entries
    assert {i: list(s) for i, s in sd["state"].items()} == {i: list(s) for i, s in torch_sd["state"].items()}
    assert set(sd["param_groups"][0]) >= set(torch_sd["param_groups"][0])
    for p, q in zip(params, torch_params):
        keys = set(torch_opt.state.get(q, {}))
        assert set(opt.state.get(p, {})) == keys
        if "step" in keys:
            step = opt.state[p]["step"]
            assert isinstance(step, torch.Tensor) and step.dtype == torch_opt.state[q]["step"].dtype
            assert step.item() == torch_opt.state[q]["step"].item() == 3
    assert_same_state(opt, torch_opt, params, torch_params)
    # Each state tensor is a buffer of its own (no aliasing of each other or of the param).
    for p in params:
        if p.numel():
            tensors = [p] + [t for k, t in opt.state.get(p, {}).items() if k != "step" and k not in SCALAR_STATE_KEYS]
            assert len({t.data_ptr() for t in tensors}) == len(tensors)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "RMSprop"])
def test_defaults_match_torch(name):
    p = torch.nn.Parameter(torch.zeros(3))
    ours, theirs = getattr(fusedopt, name)([p]).defaults, getattr(torch.optim, name)([p]).defaults
    shared = set(ours) & set(theirs)
    assert shared >= {"lr", "weight_decay", "maximize"}
    assert {k: ours[k] for k in shared} == {k: theirs[k] for k in shared}
    assert ours["backend"] == "auto"
    if name in ("Adam", "AdamW"):
        assert ours["optimized_update"] is False


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "RMSprop"])
def test_tensor_lr_matches_torch(name, backend):
    """A one-element tensor lr (which torch accepts) gives the same numbers as torch. (A
    float64 tensor: with a float32 one torch computes lr/(1-b1^t) in float32, 1e-7 away.)"""
    values, grads = initial_values(), gradients(steps=5)
    lr = torch.tensor(LR[name], dtype=torch.float64)
    params, _ = run(lambda ps: getattr(fusedopt, name)(ps, lr=lr, backend=backend), values, grads, torch.float64)
    expected, _ = run(lambda ps: getattr(torch.optim, name)(ps, lr=lr, foreach=False), values, grads, torch.float64)
    assert_params_close(params, expected, torch.float64)
