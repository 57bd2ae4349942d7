"""state_dtype=torch.bfloat16 (issue 13, first part): every state tensor stored in bf16, read
into float32, updated in float32 and rounded once to bf16 (nearest even) in the same pass.

Reference, cpu, triton (interpreter) and the host build of the CUDA kernels must compute the
same bits for every registered optimizer, float32 and bf16 params, after 20 steps; the
default (None or torch.float32) is today's behaviour; checkpoints convert between state
dtypes, and fusedopt.to_torch_state_dict hands a run over to torch.optim.
"""
import copy
import warnings

import pytest
import torch

import fusedopt
import fusedopt.backends
from fusedopt._layout import MASTER_KEY
from fusedopt.optim import _spec
from fusedopt.optim._checks import BF16_LARGEST_SHRINKING_DECAY
from _triton_loops import triton_backends

# The element-wise kinds (LAMB's norm pass included): Adafactor (factored kernels) and lazy
# mode / SparseAdam (sparse-row kernels) refuse bf16 states, tested at the end.
KINDS = tuple(_spec.elementwise_kinds())
# Options that make every state tensor of a kind appear (SGD keeps none without momentum).
OPTIONS = {"sgd": dict(momentum=0.9), "rmsprop": dict(momentum=0.9, centered=True), "adam": dict(amsgrad=True)}
SHAPES = ((5, 3), (17,), (1,))
STEPS = 20


def _class(kind):
    return _spec._CLASSES[kind]


def _params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype).requires_grad_() for shape in SHAPES]


def _grads(step, dtype):
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(shape, generator=g).to(dtype) for shape in SHAPES]


def _run(kind, backend, dtype, steps=STEPS, **extra):
    params = _params(dtype)
    opt = _class(kind)(params, backend=backend, **{**OPTIONS.get(kind, {}), **extra})
    for step in range(steps):
        for p, g in zip(params, _grads(step, dtype)):
            p.grad = g
        opt.step()
    return params, opt


def _bits(t):
    return t.detach().view(torch.int16) if t.element_size() == 2 else t.detach().view(torch.int32)


def _assert_same(actual, expected, what):
    params_a, opt_a = actual
    params_e, opt_e = expected
    for i, (a, e) in enumerate(zip(params_a, params_e)):
        assert a.dtype == e.dtype
        assert torch.equal(_bits(a), _bits(e)), f"{what}: param {i} differs"
        sa, se = opt_a.state[a], opt_e.state[e]
        assert set(sa) == set(se)
        for key in se:
            assert sa[key].dtype == se[key].dtype, (what, key)
            assert torch.equal(_bits(sa[key]), _bits(se[key])), f"{what}: state {key!r} of param {i} differs"


def _host_backends(monkeypatch, kind):
    """The host build of the CUDA kernels as two backends (large and classic parameter blocks);
    none for a kind with a norm pass (LAMB), which backend='cuda' hands to Triton."""
    if _spec.spec(kind).norm_pass:
        return ()
    try:
        from _host_cuda import register_host_backends  # skips without fusedopt._cuda_host
    except pytest.skip.Exception:
        return ()
    register_host_backends(monkeypatch)
    return ("cuda_host", "cuda_host_classic")


# The reference follows torch.optim's operations, and for these kinds torch's differ from the
# kernels' in the param update's rounding (e.g. RMSprop's addcdiv_ computes
# p + value * (g / avg), the kernels p + (value * g) / avg; SGD's p.add_(buf, alpha=-lr) is
# one fused multiply-add on this CPU, the kernels round the product first, as they must on
# every engine), so with float32 params the reference agrees to float32 rounding, not bit
# for bit -- as it does with float32 states. Its states (but ASGD's average of the param,
# `ax`), and everything with bf16 params, are bit for bit.
REFERENCE_PARAM_ROUNDING_DIFFERS = {"rmsprop", "adadelta", "asgd", "sgd"}
FOLLOWS_THE_PARAM = {"ax", MASTER_KEY}


def _assert_reference(reference, expected, exact):
    """The reference against the kernels: bit for bit when `exact`; else its float32 values that
    follow the param (the param, its master copy, ASGD's average) to float32 rounding, a 16-bit
    param to one of its ulps (a float32 value an ulp away may round the other way), and every
    other state bit for bit."""
    if exact:
        _assert_same(reference, expected, "reference")
        return
    for p, e in zip(reference[0], expected[0]):
        eps = torch.finfo(p.dtype).eps if p.dtype != torch.float32 else None
        torch.testing.assert_close(p, e, **(dict(rtol=1e-5, atol=1e-6) if eps is None else dict(rtol=eps, atol=eps)))
        sp, se = reference[1].state[p], expected[1].state[e]
        assert set(sp) == set(se)
        for key in se:
            assert sp[key].dtype == se[key].dtype, key
            if key in FOLLOWS_THE_PARAM:
                torch.testing.assert_close(sp[key], se[key], rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(_bits(sp[key]), _bits(se[key])), f"reference: state {key!r} differs"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", KINDS)
def test_bf16_states_same_bits_on_every_backend(kind, dtype, monkeypatch):
    expected = _run(kind, "cpu", dtype, state_dtype=torch.bfloat16)
    for key, value in expected[1].state[expected[0][0]].items():
        scalar = key == "step" or key in _spec.spec(kind).scalar_state_keys()
        assert value.dtype == (torch.float32 if scalar else torch.bfloat16), key
    for backend in (*triton_backends(), *_host_backends(monkeypatch, kind)):
        _assert_same(_run(kind, backend, dtype, state_dtype=torch.bfloat16), expected, backend)
    reference = _run(kind, "reference", dtype, state_dtype=torch.bfloat16)
    _assert_reference(reference, expected, exact=not (dtype == torch.float32 and kind in REFERENCE_PARAM_ROUNDING_DIFFERS))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("kind", ["adam", "sgd", "rmsprop", "lion", "asgd", "lamb"])
def test_bf16_states_with_master_weights(kind, dtype, monkeypatch):
    """16-bit params with a float32 master copy and bf16 states: the kernels bit for bit; the
    reference too, but where torch's operations round the master's update differently
    (REFERENCE_PARAM_ROUNDING_DIFFERS: the master is float32 math)."""
    expected = _run(kind, "cpu", dtype, steps=8, state_dtype=torch.bfloat16, master_weights=True)
    state = expected[1].state[expected[0][0]]
    assert state[MASTER_KEY].dtype == torch.float32
    assert all(state[k].dtype == torch.bfloat16 for k in expected[1].state_keys(expected[1].param_groups[0]))
    for backend in (*triton_backends(), *_host_backends(monkeypatch, kind)):
        _assert_same(_run(kind, backend, dtype, steps=8, state_dtype=torch.bfloat16, master_weights=True),
                     expected, backend)
    reference = _run(kind, "reference", dtype, steps=8, state_dtype=torch.bfloat16, master_weights=True)
    _assert_reference(reference, expected, exact=kind not in REFERENCE_PARAM_ROUNDING_DIFFERS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("kind", ["adam", "sgd", "adagrad"])
def test_float32_state_dtype_is_the_default(kind, dtype, backend):
    _assert_same(_run(kind, backend, dtype, steps=5, state_dtype=torch.float32), _run(kind, backend, dtype, steps=5),
                 "state_dtype=torch.float32")


def test_one_rounding_of_the_float32_update(backend):
    """A bf16 state is the float32 update of the stored value, rounded once to nearest even."""
    params = _params(torch.float32)
    twins = [p.detach().clone().requires_grad_() for p in params]
    bf16 = fusedopt.Adam(params, lr=0.01, backend=backend, state_dtype=torch.bfloat16)
    fp32 = fusedopt.Adam(twins, lr=0.01, backend=backend)
    for step in range(3):
        for p, t, g in zip(params, twins, _grads(step, torch.float32)):
            p.grad, t.grad = g, g.clone()
        # float32 run restarted from the bf16 run's (exactly representable) states and params
        for p, t in zip(params, twins):
            if bf16.state[p]:
                for key in ("exp_avg", "exp_avg_sq"):
                    fp32.state[t][key] = bf16.state[p][key].float()
                fp32.state[t]["step"] = bf16.state[p]["step"].clone()
            t.data.copy_(p.detach())
        bf16.step()
        fp32.step()
        for p, t in zip(params, twins):
            assert torch.equal(p, t)
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(bf16.state[p][key], fp32.state[t][key].to(torch.bfloat16))


def _run_with_grad_option(setting, backend):
    """AdamW with bf16 states for 6 steps under one grad option; with GradScaler, step 3 has an
    inf grad: the step is skipped and every state keeps its bits."""
    params = _params(torch.float32)
    extra = {"max_grad_norm": 0.5} if setting == "max_grad_norm" else {}
    extra.update({"clip_grad_value": 0.3} if setting == "clip_grad_value" else {})
    opt = fusedopt.AdamW(params, lr=0.01, backend=backend, state_dtype=torch.bfloat16, **extra)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0) if setting == "grad_scaler" else None
    if scaler is not None:
        scaler.scale(torch.ones(()))  # creates the scale
    for step in range(6):
        grads = _grads(step, torch.float32)
        if scaler is not None:
            grads = [g * scaler.get_scale() for g in grads]
            if step == 3:
                grads[1][0] = float("inf")
        for p, g in zip(params, grads):
            p.grad = g
        if scaler is not None:
            before = {k: v.clone() for k, v in opt.state[params[0]].items()} if step == 3 else None
            scaler.step(opt)
            scaler.update()
            if before is not None:  # the inf skipped the step: states unchanged
                for k, v in before.items():
                    assert torch.equal(opt.state[params[0]][k], v)
        else:
            opt.step()
    return params, opt


@pytest.mark.parametrize("setting", ["grad_scaler", "max_grad_norm", "clip_grad_value"])
def test_composes_with_grad_options(setting, monkeypatch):
    """GradScaler (including a skipped step), max_grad_norm and clip_grad_value with bf16
    states: the kernels (cpu, triton, the host build of the CUDA kernels) compute the same
    bits; the reference the same bf16 states, and params to float32 rounding.

    Why not the reference's param bits: the reference is torch's own operations, and torch's
    CPU lerp_ (Adam's first moment) is one fused multiply-add, where the kernels round the
    product first (no contraction on any engine, so CPU and GPU agree). The float32 moment the
    param update reads (before it is rounded to bf16) then differs by a rounding; with
    clip_grad_value's clamped grads (all +-0.3, so m = lerp(0.03, -0.3, 0.1) = -0.003 cancels)
    that difference is large enough to move a float32 param by an ulp. The same difference
    exists with float32 states (state_dtype=None): it is not the bf16 storage."""
    expected = _run_with_grad_option(setting, "cpu")
    for backend in (*triton_backends(), *_host_backends(monkeypatch, "adam")):
        _assert_same(_run_with_grad_option(setting, backend), expected, backend)
    params, opt = _run_with_grad_option(setting, "reference")
    for p, e in zip(params, expected[0]):
        torch.testing.assert_close(p, e, rtol=1e-5, atol=1e-6)
        for key, value in expected[1].state[e].items():
            assert value.dtype == opt.state[p][key].dtype
            assert torch.equal(_bits(opt.state[p][key]), _bits(value)), f"reference: state {key!r} differs"


def test_group_chooses_its_own_state_dtype(backend):
    params = _params(torch.float32)
    opt = fusedopt.Adam([{"params": params[:1], "state_dtype": torch.bfloat16}, {"params": params[1:]}],
                        lr=0.01, backend=backend)
    for step in range(2):
        for p, g in zip(params, _grads(step, torch.float32)):
            p.grad = g
        opt.step()
    assert opt.state[params[0]]["exp_avg"].dtype == torch.bfloat16
    assert opt.state[params[1]]["exp_avg"].dtype == torch.float32
    assert opt.state[params[2]]["exp_avg_sq"].dtype == torch.float32


def test_state_dict_keeps_bf16_and_converts_on_load(backend):
    params, bf16 = _run("adam", backend, torch.float32, steps=4, state_dtype=torch.bfloat16)
    saved = bf16.state_dict()
    assert saved["state"][0]["exp_avg"].dtype == torch.bfloat16
    assert saved["state"][0]["step"].dtype == torch.float32
    assert saved["param_groups"][0]["state_dtype"] == torch.bfloat16
    # bf16 states into a float32-state optimizer: exact
    fp32 = fusedopt.Adam([p.detach().clone().requires_grad_() for p in params], backend=backend, amsgrad=True)
    fp32.load_state_dict({**saved, "param_groups": [{**g, "state_dtype": None} for g in saved["param_groups"]]})
    loaded = fp32.state[fp32.param_groups[0]["params"][0]]
    assert loaded["exp_avg"].dtype == torch.float32
    assert torch.equal(loaded["exp_avg"], saved["state"][0]["exp_avg"].float())
    # a float32 checkpoint into a bf16-state optimizer: rounded once from the saved values
    params32, opt32 = _run("adam", backend, torch.float32, steps=4)
    saved32 = opt32.state_dict()
    target = fusedopt.Adam([p.detach().clone().requires_grad_() for p in params32], backend=backend,
                           amsgrad=True, state_dtype=torch.bfloat16)
    target.load_state_dict({**saved32, "param_groups": [{**g, "state_dtype": torch.bfloat16}
                                                        for g in saved32["param_groups"]]})
    state = target.state[target.param_groups[0]["params"][0]]
    assert state["exp_avg_sq"].dtype == torch.bfloat16
    assert torch.equal(state["exp_avg_sq"], saved32["state"][0]["exp_avg_sq"].to(torch.bfloat16))
    target_params = target.param_groups[0]["params"]
    for p, g in zip(target_params, _grads(99, torch.float32)):
        p.grad = g
    target.step()  # the converted state runs
    assert state["exp_avg"].dtype == torch.bfloat16


def test_to_torch_state_dict_continues_in_torch_optim():
    params, opt = _run("adam", "cpu", torch.float32, steps=5, state_dtype=torch.bfloat16, weight_decay=0.01,
                       decoupled_weight_decay=True)
    saved = opt.state_dict()
    converted = fusedopt.to_torch_state_dict(saved)
    assert saved["state"][0]["exp_avg"].dtype == torch.bfloat16  # the input is left alone
    assert converted["state"][0]["exp_avg"].dtype == torch.float32
    assert "state_dtype" not in converted["param_groups"][0] and "backend" not in converted["param_groups"][0]
    twins = [p.detach().clone().requires_grad_() for p in params]
    reference = [p.detach().clone().requires_grad_() for p in params]
    torch_opt = torch.optim.AdamW(twins, lr=1e-3, amsgrad=True)
    torch_opt.load_state_dict(converted)
    fp32 = fusedopt.AdamW(reference, lr=1e-3, amsgrad=True, backend="cpu")
    fp32.load_state_dict(copy.deepcopy(converted))
    for step in range(3):
        for a, b, g in zip(twins, reference, _grads(200 + step, torch.float32)):
            a.grad, b.grad = g, g.clone()
        torch_opt.step()
        fp32.step()
    for a, b in zip(twins, reference):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert torch_opt.state[a]["exp_avg"].dtype == torch.float32
        torch.testing.assert_close(torch_opt.state[a]["exp_avg"], fp32.state[b]["exp_avg"], rtol=1e-6, atol=1e-8)


def test_refused_options():
    params = _params(torch.float32)
    with pytest.raises(ValueError, match="Invalid state_dtype"):
        fusedopt.Adam(params, state_dtype=torch.float16)
    with pytest.raises(ValueError, match="float64"):
        fusedopt.SGD([torch.zeros(3, dtype=torch.float64, requires_grad=True)], momentum=0.9,
                     state_dtype=torch.bfloat16)
    opt = fusedopt.Adam(params)
    with pytest.raises(ValueError, match="Invalid state_dtype"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "state_dtype": "int4"})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, "int8"], ids=["bf16", "int8"])
@pytest.mark.parametrize("after_a_step", [False, True], ids=["fresh", "stepped"])
@pytest.mark.parametrize("kind", KINDS)
def test_params_made_float64_after_construction_are_refused_at_the_step(kind, after_a_step, state_dtype,
                                                                        monkeypatch):
    """`model.double()` after the optimizer was built with bf16 or 8-bit states: the constructor
    never saw a float64 param, so the step refuses the group before anything moves. Before this
    check the double-precision kernels read the 2-byte states as doubles, past their end, and
    corrupted the heap (the process died)."""
    options = {key: value for key, value in OPTIONS.get(kind, {}).items() if key != "centered"}
    if state_dtype == "int8" and kind in ("asgd", "rprop"):
        pytest.skip("these kinds refuse 8-bit states at construction")
    for backend in ("reference", "cpu", *_host_backends(monkeypatch, kind)):
        torch.manual_seed(0)
        model = torch.nn.Linear(80, 64)  # 5,120 weights: 8-bit states in an "int8" group
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bf16 states' decay warning
            opt = _class(kind)(model.parameters(), backend=backend, state_dtype=state_dtype, **options)
        if after_a_step:
            model(torch.randn(4, 80)).square().sum().backward()
            opt.step()
            opt.zero_grad()
        model.double()
        model(torch.randn(4, 80, dtype=torch.float64)).square().sum().backward()
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(ValueError, match=r"needs float32, float16 or bfloat16 params.*float64"):
            opt.step()
        for p, b in zip(model.parameters(), before):
            assert torch.equal(p, b), backend


def test_kernels_refuse_bf16_states_for_float64_batches(monkeypatch):
    """The same refusal below step(): a backend handed a float64 batch with bf16 states (the
    torch.library op, a direct call) raises before its kernels run, and the native dispatch
    itself refuses it too: the CPU kernels' (called directly) and the CUDA kernels' (the host
    build's test backends call them without the backends' Python check)."""
    from fusedopt._buckets import Bucket
    from fusedopt._layout import UpdateConfig
    from fusedopt.backends.native import _native_kinds, common_arguments

    params = [torch.zeros(300, dtype=torch.float64)]
    grads = [torch.ones(300, dtype=torch.float64)]
    state = {params[0]: {"exp_avg": torch.zeros(300, dtype=torch.bfloat16),
                         "exp_avg_sq": torch.zeros(300, dtype=torch.bfloat16), "step": torch.tensor(0.0)}}
    batch, _ = Bucket(params, "Adam").batch(state, ("exp_avg", "exp_avg_sq"), True, lambda p, s: None,
                                            torch.bfloat16, grads)
    hyper = _spec.spec("adam").coerce(fusedopt.Adam.hyper(fusedopt.Adam(params).param_groups[0]))
    config = UpdateConfig(hyper, 1e-3, bf16_states=True)
    with pytest.raises(RuntimeError, match="bf16 or 8-bit states cannot serve torch.float64 params"):
        fusedopt.backends.get("cpu").update("adam", batch, config)
    for backend in _host_backends(monkeypatch, "adam"):
        with pytest.raises(ValueError, match="bf16 states are for float32 math, not float64 params"):
            fusedopt.backends.get(backend).update("adam", batch, config)
    with pytest.raises(ValueError, match="bf16 states are for float32 math, not float64 params"):
        _native_kinds().for_batch("adam", batch, config).cpu_update(*common_arguments(batch, config), 1,
                                                                    bf16_states=True)
    assert torch.equal(params[0], torch.zeros(300, dtype=torch.float64))


def test_master_copy_does_not_outlive_master_weights(backend):
    """master_weights switched off by hand, then on again: the copy kept from before would be
    stale (the params trained without it) and taking it up again would undo those steps."""
    torch.manual_seed(0)
    params = [torch.randn(300).to(torch.bfloat16).requires_grad_()]
    opt = fusedopt.Adam(params, lr=1e-2, betas=(0.9, 0.99), state_dtype=torch.bfloat16, master_weights=True,
                        backend=backend)
    for master in (True, False, False, False):
        opt.param_groups[0]["master_weights"] = master
        params[0].grad = torch.randn(300).to(torch.bfloat16)
        opt.step()
    assert MASTER_KEY not in opt.state[params[0]]
    trained = params[0].detach().clone()
    opt.param_groups[0].update(master_weights=True, lr=0.0)
    params[0].grad = torch.zeros_like(params[0])
    opt.step()
    assert torch.equal(params[0], trained)
    assert torch.equal(opt.state[params[0]][MASTER_KEY], trained.float())


@pytest.mark.parametrize("make, value, match", [
    (lambda ps: fusedopt.Adam(ps), "fp8", "Invalid state_dtype"),
    (lambda ps: fusedopt.RMSprop(ps, centered=True), "int8", "centered RMSprop"),
    (lambda ps: fusedopt.ASGD(ps), "int8", "not supported"),
    (lambda ps: fusedopt.Rprop(ps), "int8", "not supported"),
    (lambda ps: fusedopt.Adafactor(ps), "int8", "not supported"),
    (lambda ps: fusedopt.Adafactor(ps), torch.bfloat16, "not supported"),
    (lambda ps: fusedopt.Adam(ps), ("bf16_stochastic_round", True), "applies to bfloat16 params only"),
], ids=["fp8", "centered-rmsprop-int8", "asgd-int8", "rprop-int8", "adafactor-int8", "adafactor-bf16",
        "rounding-fp32"])
def test_low_precision_options_set_by_hand_are_checked_at_the_step(make, value, match):
    """What the constructor refuses is refused at the step too when set into a group by hand,
    before anything moves: it was ignored ("fp8", stochastic rounding of float32 params), ran
    (centered RMSprop's 8-bit states, which the constructor refuses for their NaNs) or failed
    inside the step (KeyError, TypeError)."""
    torch.manual_seed(0)
    params = [torch.randn(80, 64, requires_grad=True)]
    opt = make(params)
    params[0].grad = torch.randn(80, 64)
    opt.step()
    key, value = value if isinstance(value, tuple) else ("state_dtype", value)
    opt.param_groups[0][key] = value
    params[0].grad = torch.randn(80, 64)
    before = params[0].detach().clone()
    with pytest.raises(ValueError, match=match):
        opt.step()
    assert torch.equal(params[0], before)


@pytest.mark.parametrize("before, after", [
    (None, torch.bfloat16), (torch.bfloat16, None), ("int8", None), (None, "int8"), ("int8", torch.bfloat16),
    (torch.bfloat16, "int8"),
], ids=["fp32-bf16", "bf16-fp32", "int8-fp32", "fp32-int8", "int8-bf16", "bf16-int8"])
def test_state_dtype_changed_by_hand_says_how_to_convert(before, after, backend):
    """A group's state_dtype changed by hand after its state exists: where the step cannot take
    the state as it is (a state of another dtype is refused, as one stored by hand would be:
    README, Safety), it names the fix, and the fix (a state_dict round trip, which converts as
    any load does) works; where it can (new block scales), it converts as that load does."""
    def run(convert_by_loading):
        torch.manual_seed(0)
        params = [torch.randn(80, 64, requires_grad=True), torch.randn(7, requires_grad=True)]
        opt = fusedopt.Adam(params, betas=(0.9, 0.99), state_dtype=before, backend=backend)
        for step in range(3):
            if step == 2:
                opt.param_groups[0]["state_dtype"] = after
                if convert_by_loading:
                    opt.load_state_dict(opt.state_dict())
            for p in params:
                p.grad = torch.randn_like(p)
            try:
                opt.step()
            except RuntimeError as refused:
                assert "changed by hand" in str(refused) and "optimizer.load_state_dict(optimizer.state_dict())" in str(
                    refused), refused
                opt.load_state_dict(opt.state_dict())
                opt.step()
        return params, opt

    _assert_same(run(False), run(True), "by hand")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_master_weights_turned_on_by_hand_keeps_the_states(optimizer, backend):
    """master_weights turned on by hand for bf16 params: the states are converted to float32
    and the master copy made from the param, but the step is not a first step (SGD's momentum
    buffer used to restart from the grad)."""
    def run(master_from_start):
        torch.manual_seed(0)
        params = [torch.randn(300).to(torch.bfloat16).requires_grad_()]
        cls, options = (fusedopt.SGD, dict(lr=0.1, momentum=0.9)) if optimizer == "sgd" else (fusedopt.Adam, {})
        opt = cls(params, backend=backend, master_weights=master_from_start, **options)
        for step in range(4):
            if step == 2:
                opt.param_groups[0]["master_weights"] = True
            params[0].grad = torch.randn(300).to(torch.bfloat16)
            opt.step()
        return params, opt

    turned_on, throughout = run(False), run(True)
    for key, value in throughout[1].state[throughout[0][0]].items():
        if key != MASTER_KEY:  # the master copy differs: it began from a bf16 param two steps later
            torch.testing.assert_close(turned_on[1].state[turned_on[0][0]][key], value, rtol=0.05, atol=0.02)


def test_checkpoint_with_stochastic_rounding_loads_into_float32_params():
    """A checkpoint's bf16_stochastic_round holds where it applies (tests/test_stochastic_round.py)
    and gives way to this optimizer's where its params are not bf16: a run saved with bf16
    params and stochastic rounding resumes with float32 params."""
    saved = fusedopt.AdamW([torch.randn(8).to(torch.bfloat16).requires_grad_()], bf16_stochastic_round=True)
    saved.param_groups[0]["params"][0].grad = torch.randn(8).to(torch.bfloat16)
    saved.step()
    params = [torch.randn(8, requires_grad=True)]
    resumed = fusedopt.AdamW(params)
    resumed.load_state_dict(saved.state_dict())
    assert not resumed.param_groups[0].get("bf16_stochastic_round")
    params[0].grad = torch.randn(8)
    resumed.step()


def test_complex_params_with_low_precision_states_refused_at_the_step():
    """The step checks the params' own dtype: complex ones (updated through real views) are
    refused as the constructor refuses them."""
    params = [torch.randn(80, 64, dtype=torch.complex64, requires_grad=True)]
    opt = fusedopt.Adam(params)
    opt.param_groups[0]["state_dtype"] = torch.bfloat16
    params[0].grad = torch.randn_like(params[0])
    with pytest.raises(ValueError, match="complex64"):
        opt.step()
    assert not opt.state[params[0]]


def test_adafactor_refuses_bf16_states():
    """Adafactor's factored moments have no bf16 storage: refused when the optimizer or a group
    is made, with the reason; float32 (the same as None) is accepted and changes nothing."""
    params = [torch.zeros(4, 3, requires_grad=True)]
    with pytest.raises(ValueError, match=r"Adafactor: state_dtype=torch.bfloat16 is not supported: .*factored"):
        fusedopt.Adafactor(params, state_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="int8"):
        fusedopt.Adafactor(params, state_dtype="int8")
    opt = fusedopt.Adafactor(params, state_dtype=torch.float32, backend="cpu")
    with pytest.raises(ValueError, match="Adafactor: state_dtype=torch.bfloat16"):
        opt.add_param_group({"params": [torch.zeros(3, requires_grad=True)], "state_dtype": torch.bfloat16})
    assert len(opt.param_groups) == 1
    params[0].grad = torch.ones(4, 3)
    opt.step()
    assert opt.state[params[0]]["row_var"].dtype == torch.float32
    assert "state_dtype" not in fusedopt.Adafactor(params).state_dict()["param_groups"][0]  # torch's key set


@pytest.mark.parametrize("make", ["SparseAdam", "Adam(lazy_mode=True)", "AdamW(lazy_mode=True)"])
def test_lazy_mode_refuses_bf16_states(make):
    """Lazy mode's sparse-row kernels keep the states in the param's dtype: bf16 states refused
    at construction (Adam/AdamW; SparseAdam keeps torch's signature) and in an added group."""
    params = [torch.zeros(5, 3, requires_grad=True)]
    cls = getattr(fusedopt, make.split("(")[0])
    lazy = {} if make == "SparseAdam" else {"lazy_mode": True}
    if make == "SparseAdam":  # torch's signature: no state_dtype argument
        with pytest.raises(TypeError):
            cls(params, state_dtype=torch.bfloat16)
        opt = cls(params)
    else:
        with pytest.raises(ValueError, match=r"state_dtype=torch.bfloat16 is not supported in lazy mode"):
            cls(params, state_dtype=torch.bfloat16, **lazy)
        opt = cls(params, state_dtype=torch.float32, **lazy)
    with pytest.raises(ValueError, match=r"state_dtype=torch.bfloat16 is not supported in lazy mode"):
        opt.add_param_group({"params": [torch.zeros(2, 3, requires_grad=True)], "state_dtype": torch.bfloat16,
                             **lazy})
    assert len(opt.param_groups) == 1


def _decay_warnings(make):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        made = make()
    return made, [w for w in caught if "stalls the state it decays" in str(w.message)]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bf16_state_decay_bound_is_where_states_stall(backend):
    """The warning's bound is the fact it states. SGD's momentum buffer, decayed 600 times by
    zero grads: in bf16 at a momentum of 1 - 2**-8 (no warning) it comes down as float32's does;
    at 0.997 (warned) it stalls within a factor of two, and at 0.999 it never moves, while
    float32 buffers shrink to 0.165 and 0.549 of their start."""
    cases = ((BF16_LARGEST_SHRINKING_DECAY, "shrinks"), (0.997, "stalls"), (0.999, "stays"))
    for momentum, bf16_outcome in cases:
        for state_dtype in (torch.bfloat16, None):
            p = torch.zeros(300, requires_grad=True)
            opt, caught = _decay_warnings(lambda: fusedopt.SGD([p], lr=0.1, momentum=momentum,
                                                                state_dtype=state_dtype, backend=backend))
            outcome = bf16_outcome if state_dtype is not None else "shrinks"
            assert len(caught) == int(outcome != "shrinks")
            p.grad = torch.linspace(0.5, 8.0, 300)
            opt.step()
            first = opt.state[p]["momentum_buffer"].float().clone()
            p.grad = torch.zeros(300)
            for _ in range(600):
                opt.step()
            ratio = opt.state[p]["momentum_buffer"].float() / first
            if outcome == "shrinks":
                assert (ratio < min(0.6, 2 * momentum ** 600)).all(), (momentum, state_dtype)
            elif outcome == "stalls":
                assert (ratio >= 0.5).all() and (ratio < 1).any(), momentum
            else:
                assert (ratio == 1).all(), momentum


def test_bf16_state_decay_warning_names_the_call_and_the_decay():
    """Adam's family warns at its default beta2 = 0.999 when state_dtype=torch.bfloat16, naming
    beta2, at the user's line (constructor or add_param_group); float32 and 8-bit states, and the
    defaults of the optimizers whose decays bf16 can follow, do not warn."""
    params = [torch.zeros(3, requires_grad=True)]
    for kind, spec in _spec.elementwise_kinds().items():
        decays = spec.state_decays
        if not decays:
            continue
        cls = _class(kind)
        extra = {"momentum": 0.9} if kind == "sgd" else {}
        _, caught = _decay_warnings(lambda: cls(params, state_dtype=torch.bfloat16, **extra))
        expected = kind in ("adam", "adamax", "nadam", "radam", "lamb")  # beta2 = 0.999 by default
        assert len(caught) == int(expected), kind
        if expected:
            assert "beta2=0.999" in str(caught[0].message) and "beta1" not in str(caught[0].message)
            assert caught[0].filename == __file__
        for state_dtype in (None, torch.float32, "int8"):
            _, caught = _decay_warnings(lambda: cls(params, state_dtype=state_dtype, **extra))
            assert caught == [], (kind, state_dtype)
    _, caught = _decay_warnings(lambda: fusedopt.Lion(params, betas=(0.999, 0.99), state_dtype=torch.bfloat16))
    assert caught == []  # Lion's beta1 mixes the update direction; only beta2 decays exp_avg
    _, caught = _decay_warnings(lambda: fusedopt.RMSprop(params, momentum=0.999, state_dtype=torch.bfloat16))
    assert len(caught) == 1 and "momentum=0.999" in str(caught[0].message)
    opt = fusedopt.RMSprop(params, state_dtype=torch.bfloat16)
    _, caught = _decay_warnings(lambda: opt.add_param_group(
        {"params": [torch.zeros(2, requires_grad=True)], "alpha": 0.999}))
    assert len(caught) == 1 and "alpha=0.999" in str(caught[0].message) and caught[0].filename == __file__
