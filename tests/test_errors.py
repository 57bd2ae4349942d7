"""Bad input: torch.optim's ValueErrors for hyper-parameters (same type and message),
RuntimeError for what fusedopt cannot update safely, and in every failing step the
params, step counters and state left exactly as they were."""
import copy
import inspect
import re
import warnings

import pytest
import torch

import fusedopt
from _compare import assert_params_close

T = torch.tensor

# (optimizer, kwargs) that torch.optim rejects with ValueError.
BAD_HYPERPARAMETERS = [
    *[(name, kwargs) for name in ("Adam", "AdamW") for kwargs in (
        dict(lr=-1e-3), dict(lr=T([1e-3, 1e-3])), dict(eps=-1e-8),
        dict(betas=(-0.1, 0.999)), dict(betas=(1.0, 0.999)), dict(betas=(0.9, 1.0)), dict(betas=(0.9, -0.5)),
        dict(weight_decay=-0.1), dict(betas=(T(0.9), 0.999)), dict(betas=(0.9, T(0.999))), dict(betas=(0, 0)),
    )],
    *[("SGD", kwargs) for kwargs in (
        dict(lr=-0.1), dict(lr=T([0.1, 0.1])), dict(momentum=-0.9), dict(weight_decay=-1.0),
        dict(nesterov=True), dict(nesterov=True, momentum=0.9, dampening=0.1),
    )],
    *[("RMSprop", kwargs) for kwargs in (
        dict(lr=-0.1), dict(lr=T([0.1, 0.1])), dict(eps=-1.0), dict(momentum=-0.1), dict(weight_decay=-0.1),
        dict(alpha=-0.5),
    )],
]


def _id(value):
    if isinstance(value, torch.Tensor):
        return f"T{list(value.shape)}"
    if isinstance(value, tuple):
        return "(" + ",".join(_id(v) for v in value) + ")"
    return repr(value)


def _kwargs_id(kwargs):
    return ",".join(f"{k}={_id(v)}" for k, v in kwargs.items())


@pytest.mark.parametrize("name,kwargs", BAD_HYPERPARAMETERS,
                         ids=[f"{n}-{_kwargs_id(k)}" for n, k in BAD_HYPERPARAMETERS])
def test_bad_hyperparameters_raise_torchs_error(name, kwargs):
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError) as torch_error:
        getattr(torch.optim, name)([p], **kwargs)
    with pytest.raises(ValueError, match=re.escape(str(torch_error.value))):
        getattr(fusedopt, name)([p], **kwargs)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "Adamax", "NAdam", "RAdam"])
def test_one_element_betas_raise_torchs_exception_type(name):
    """torch.optim reads betas[0] and betas[1] in its constructor: a 1-element tuple is an
    IndexError there, and must be here, not a ValueError from unpacking it later."""
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(Exception) as torch_error:
        getattr(torch.optim, name)([p], betas=(0.9,))
    with pytest.raises(type(torch_error.value)):
        getattr(fusedopt, name)([p], betas=(0.9,))


# Edge values torch.optim accepts: so must fusedopt, with the same numbers.
GOOD_EDGES = [
    ("Adam", dict(lr=0.0)), ("Adam", dict(eps=0.0, lr=1e-2)), ("Adam", dict(betas=(0.0, 0.0))),
    ("AdamW", dict(weight_decay=0.0)),
    ("AdamW", dict(betas=(T(0.8, dtype=torch.float64), T(0.9, dtype=torch.float64)))),
    ("SGD", dict(lr=0.0, momentum=0.9)), ("SGD", dict(momentum=0.9, dampening=1.0)),
    ("SGD", dict(dampening=0.5)), ("RMSprop", dict(alpha=0.0)), ("RMSprop", dict(alpha=1.0, eps=1e-3)),
]


@pytest.mark.parametrize("name,kwargs", GOOD_EDGES, ids=[f"{n}-{_kwargs_id(k)}" for n, k in GOOD_EDGES])
def test_edge_hyperparameters_accepted_like_torch(name, kwargs, backend):
    g = torch.Generator().manual_seed(0)
    values = [torch.randn(5, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64)]
    grads = [[torch.randn_like(v) for v in values] for _ in range(4)]
    results = []
    for make in (lambda ps: getattr(torch.optim, name)(ps, foreach=False, **kwargs),
                 lambda ps: getattr(fusedopt, name)(ps, backend=backend, **kwargs)):
        params = [torch.nn.Parameter(v.clone()) for v in values]
        opt = make(params)
        for step_grads in grads:
            for p, gr in zip(params, step_grads):
                p.grad = gr.clone()
            opt.step()
        results.append(params)
    assert_params_close(results[1], results[0], torch.float64)



@pytest.mark.parametrize("step_sizes", [(0.01, 0.001), (float("nan"), 50.0), (1e-6, float("nan")), (None, 0.02),
                                        (0.02, None)],
                         ids=["min-above-max", "nan-min", "nan-max", "no-min", "no-max"])
@pytest.mark.parametrize("backend_name", ["reference", "cpu", "triton", "cuda_host"])
def test_rprop_step_sizes_clamp_as_torchs(step_sizes, backend_name, monkeypatch):
    """torch.optim.Rprop's constructor takes any step_sizes and clamps with torch's clamp_(min,
    max): max where min > max, NaN where a bound is NaN, no bound where it is None. The kernels
    clamp the same way (the CUDA ones through their host build)."""
    if backend_name == "triton":
        pytest.importorskip("triton")
    if backend_name == "cuda_host":
        from _host_cuda import register_host_backends  # skips where fusedopt._cuda_host is not built
        register_host_backends(monkeypatch)
    g = torch.Generator().manual_seed(0)
    value = torch.randn(7, generator=g, dtype=torch.float64)
    grads = [torch.randn(7, generator=g, dtype=torch.float64) for _ in range(5)]
    results = []
    for make in (lambda ps: torch.optim.Rprop(ps, lr=0.01, step_sizes=step_sizes, foreach=False),
                 lambda ps: fusedopt.Rprop(ps, lr=0.01, step_sizes=step_sizes, backend=backend_name)):
        p = torch.nn.Parameter(value.clone())
        opt = make([p])
        for grad in grads:
            p.grad = grad.clone()
            opt.step()
        results.append((p.detach(), opt.state[p]["step_size"]))
    for ours, theirs in zip(results[1], results[0]):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0, equal_nan=True)


BIAS_CORRECTED = [  # (optimizer, the betas it keeps below 1 at every step)
    ("Adam", (0, 1)), ("AdamW", (0, 1)), ("Adamax", (0,)), ("NAdam", (1,)), ("RAdam", (0, 1)), ("LAMB", (0, 1)),
]


@pytest.mark.parametrize("beta", [1.0, 1.5, float("nan")])
@pytest.mark.parametrize("name,indices", BIAS_CORRECTED, ids=[name for name, _ in BIAS_CORRECTED])
def test_bias_corrected_beta_moved_to_one_is_refused_before_any_update(name, indices, beta, backend):
    """A beta changed to 1 or above after construction makes the bias correction 1 - beta**t
    zero or negative: torch divides by zero there, or fills the params with NaN. fusedopt
    refuses it as the constructor does, before the first group moves."""
    params = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(2)]
    opt = getattr(fusedopt, name)(params[:1], backend=backend)
    opt.add_param_group({"params": params[1:]})
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    for index in indices:
        betas = list(opt.param_groups[1]["betas"])
        betas[index] = beta
        opt.param_groups[1]["betas"] = tuple(betas)
        before = snapshot(opt, params)
        with pytest.raises(ValueError, match=f"Invalid beta parameter at index {index}"):
            opt.step()
        assert_untouched(opt, params, before)
        betas[index] = 0.5
        opt.param_groups[1]["betas"] = tuple(betas)
        opt.step()  # a value below 1 steps again


def test_lamb_without_bias_correction_takes_a_beta_of_one(backend):
    """Nothing divides by 1 - beta**t when LAMB's bias correction is off."""
    p = torch.nn.Parameter(torch.ones(4, 3))
    optimizer = fusedopt.LAMB([p], bias_correction=False, backend=backend)
    optimizer.param_groups[0]["betas"] = (1.0, 0.999)
    p.grad = torch.ones(4, 3)
    optimizer.step()


def test_a_beta_refused_at_step_creates_no_lazy_state(backend):
    """Every group's step-time checks run before any state is created, lazy groups' too."""
    embedding, dense = torch.nn.Embedding(6, 3, sparse=True), torch.nn.Parameter(torch.ones(3))
    optimizer = fusedopt.Adam([{"params": embedding.parameters(), "lazy_mode": True}, {"params": [dense]}],
                              backend=backend)
    optimizer.param_groups[1]["betas"] = (1.0, 0.999)
    embedding(torch.tensor([1, 2])).sum().backward()
    dense.grad = torch.ones(3)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 0"):
        optimizer.step()
    assert len(optimizer.state) == 0


@pytest.mark.parametrize("backend_name", ["reference", "cpu"])
def test_one_cycle_momentum_up_to_one_is_refused_like_torchs_division_by_zero(backend_name):
    """OneCycleLR(max_momentum=1.0) accepts a beta1 of 1.0 and writes it into the group: torch's
    Adam then raises ZeroDivisionError at the step; fusedopt raises its ValueError, and the
    params keep their values instead of turning NaN."""
    for cls, kwargs in ((torch.optim.Adam, dict(foreach=False)), (fusedopt.Adam, dict(backend=backend_name))):
        p = torch.nn.Parameter(torch.ones(3))
        opt = cls([p], lr=0.01, **kwargs)
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10, base_momentum=0.9, max_momentum=1.0)
        assert opt.param_groups[0]["betas"][0] == 1.0
        p.grad = torch.ones(3)
        with pytest.raises(ValueError if cls is fusedopt.Adam else ZeroDivisionError):
            opt.step()
        assert torch.equal(p.detach(), torch.ones(3))


# Strings where numbers belong, which torch's constructors take and its step's arithmetic
# refuses with TypeError: float() would read them as numbers.
STRING_HYPERPARAMETERS = [("SGD", dict(momentum=0.9, dampening="0.1")), ("ASGD", dict(lambd="0.1")),
                          ("ASGD", dict(t0="5")), ("Rprop", dict(step_sizes=("1e-6", 50))),
                          # and torch's RuntimeError where clamp_ gets no bound at all
                          ("Rprop", dict(step_sizes=(None, None)))]


@pytest.mark.parametrize("name,kwargs", STRING_HYPERPARAMETERS,
                         ids=[f"{n}-{_kwargs_id(k)}" for n, k in STRING_HYPERPARAMETERS])
def test_a_string_hyperparameter_is_a_type_error_as_in_torch(name, kwargs, backend):
    for make in (lambda ps: getattr(torch.optim, name)(ps, foreach=False, **kwargs),
                 lambda ps: getattr(fusedopt, name)(ps, backend=backend, **kwargs)):
        p = torch.nn.Parameter(torch.ones(3))
        with pytest.raises(RuntimeError if kwargs.get("step_sizes") == (None, None) else TypeError):
            optimizer = make([p])
            for _ in range(2):  # torch's SGD reads dampening from its second step on
                p.grad = torch.ones(3)
                optimizer.step()


@pytest.mark.parametrize("name,key,value", [("Adam", "lr", "0.1"), ("Adam", "betas", ("0.9", 0.999)),
                                            ("Adafactor", "lr", "0.1")])
def test_a_string_set_in_a_group_is_a_type_error_before_any_update(name, key, value, backend):
    """torch's add_param_group takes these, and its step's arithmetic raises TypeError. fusedopt
    raises it at the step before any update, or already when the group is added (betas are
    read then)."""
    params = [torch.nn.Parameter(torch.ones(3, 2)) for _ in range(2)]
    optimizer = getattr(fusedopt, name)(params[:1], backend=backend)
    for p in params:
        p.grad = torch.ones(3, 2)
    with pytest.raises(TypeError, match="must be a number"):
        optimizer.add_param_group({"params": params[1:], key: value})
        optimizer.step()
    assert all(torch.equal(p.detach(), torch.ones(3, 2)) for p in params)


@pytest.mark.parametrize("lr", [float("nan"), torch.tensor(float("nan"))], ids=["float", "tensor"])
def test_sgd_takes_a_nan_lr_as_torchs_does(lr, backend):
    """torch.optim.SGD checks `lr < 0.0`, which NaN passes (the other optimizers check
    `not 0.0 <= lr`); its step then makes the params NaN, and so does fusedopt's."""
    params = []
    for make in (lambda ps: torch.optim.SGD(ps, lr=lr, foreach=False),
                 lambda ps: fusedopt.SGD(ps, lr=lr, backend=backend)):
        p = torch.nn.Parameter(torch.ones(3))
        optimizer = make([p])
        p.grad = torch.ones(3)
        optimizer.step()
        params.append(p.detach())
    assert params[0].isnan().all() and params[1].isnan().all()

def test_torch_construction_errors_are_inherited():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="empty parameter list"):
        fusedopt.Adam([])
    with pytest.raises(TypeError, match="iterable of Tensors or dicts"):
        fusedopt.Adam(p)
    with pytest.raises(ValueError, match="can't optimize a non-leaf Tensor"):
        fusedopt.SGD([p * 2])
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        fusedopt.RMSprop([{"params": [p]}, {"params": [p]}])


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad"])
def test_fused_and_foreach_flags_as_torch_reads_them(name):
    """torch.optim refuses fused and foreach both asked for, with RuntimeError, and reads
    the flags by truth value (foreach=1 is accepted)."""
    p = torch.nn.Parameter(torch.zeros(3))
    for cls in (getattr(torch.optim, name), getattr(fusedopt, name)):
        with pytest.raises(RuntimeError, match="`fused` and `foreach` cannot be `True` together"):
            cls([p], fused=True, foreach=True)
        cls([p], foreach=1)
        cls([p], fused=False, foreach=True)


@pytest.mark.parametrize("name", ["Adafactor", "Adamax", "NAdam", "RAdam", "Rprop", "ASGD", "Adadelta", "RMSprop"])
def test_foreach_is_read_by_truth_value_as_torch_reads_it(name):
    """The optimizers without a fused flag take any foreach value, as torch.optim's do
    (Adafactor refused foreach=1 with a TypeError torch does not raise)."""
    p = torch.nn.Parameter(torch.ones(3, 2))
    for cls in (getattr(torch.optim, name), getattr(fusedopt, name)):
        optimizer = cls([p], foreach=1)
        p.grad = torch.ones(3, 2)
        optimizer.step()


# --------------------------------------------------------------------------- helpers
OPTIMIZERS = {
    "Adam": lambda ps, b: fusedopt.Adam(ps, lr=0.1, amsgrad=True, backend=b),
    "AdamW": lambda ps, b: fusedopt.AdamW(ps, lr=0.1, weight_decay=0.1, backend=b),
    "SGD": lambda ps, b: fusedopt.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1, backend=b),
    "RMSprop": lambda ps, b: fusedopt.RMSprop(ps, lr=0.1, centered=True, momentum=0.9, backend=b),
}


def snapshot(opt, params):
    """Deep copies of the params and of the whole optimizer state."""
    return [p.detach().clone() for p in params], copy.deepcopy({i: opt.state[p] for i, p in enumerate(params)
                                                                if p in opt.state})


def assert_untouched(opt, params, before):
    params_before, state_before = before
    for p, b in zip(params, params_before):
        assert torch.equal(p.detach(), b)
    state_now = {i: opt.state[p] for i, p in enumerate(params) if p in opt.state}
    assert state_now.keys() == state_before.keys()
    for i, entries in state_before.items():
        assert state_now[i].keys() == entries.keys()
        for key, value in entries.items():
            now = state_now[i][key]
            same = torch.equal(now, value) if isinstance(value, torch.Tensor) else now == value
            assert same, f"state[{key!r}] of param {i} changed"


def started(name, backend, dtypes=(torch.float32, torch.float64)):
    """An optimizer two steps into training on params of the given dtypes (one group)."""
    params = [torch.nn.Parameter(torch.randn(5, 3, dtype=d)) for d in dtypes for _ in range(2)]
    opt = OPTIMIZERS[name](params, backend)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    return params, opt


# --------------------------------------------------------------------------- unsupported tensors
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_sparse_grad_raises(name, backend):
    params, opt = started(name, backend)
    params[1].grad = torch.sparse_coo_tensor(T([[0, 2]]), torch.randn(2, 3), (5, 3), check_invariants=True)
    before = snapshot(opt, params)
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert_untouched(opt, params, before)


@pytest.mark.parametrize("dtype", [torch.complex32, torch.int32, torch.int64, torch.uint8, torch.bool],
                         ids=str)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_unsupported_param_dtype_raises(name, dtype, backend):
    good = torch.nn.Parameter(torch.randn(4))
    bad = torch.zeros(4, dtype=dtype)
    bad.grad = torch.ones(4, dtype=dtype)
    good.grad = torch.randn(4)
    before = good.detach().clone()
    with pytest.raises(RuntimeError, match=str(dtype)):
        OPTIMIZERS[name]([good, bad], backend).step()
    assert torch.equal(good.detach(), before)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool], ids=str)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_an_unsupported_param_without_a_grad_is_passed_over_as_torch_does(name, dtype, backend):
    """torch.optim accepts any leaf tensor and passes over those without grads; so must
    fusedopt (it refuses such a param only when a step would update it, above)."""
    good = torch.nn.Parameter(torch.randn(4))
    counts = torch.zeros(4, dtype=dtype)
    good.grad = torch.randn(4)
    before = good.detach().clone()
    OPTIMIZERS[name]([good, counts], backend).step()
    assert not torch.equal(good.detach(), before)
    assert torch.equal(counts, torch.zeros(4, dtype=dtype))


@pytest.mark.parametrize("name", ["Adam", "SGD", "Adagrad", "SparseAdam", "Adafactor", "LAMB"])
def test_add_param_group_of_a_non_dict_is_torchs_type_error(name):
    opt = getattr(fusedopt, name)([torch.nn.Parameter(torch.randn(4))])
    with pytest.raises(TypeError, match="param_group must be a dict"):
        opt.add_param_group([torch.nn.Parameter(torch.randn(4))])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_non_dense_param_raises(name, backend):
    """A strided view (gaps in memory) is not updatable in one flat pass: RuntimeError."""
    base = torch.randn(6, 8)
    p = base[:, ::2].requires_grad_()
    p.grad = torch.randn(6, 4)
    before = base.clone()
    with pytest.raises(RuntimeError, match="dense"):
        OPTIMIZERS[name]([p], backend).step()
    assert torch.equal(base, before)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_meta_param_raises_naming_the_meta_device(name):
    """A param on the meta device (a model built before `to_empty`) has no memory to update:
    the error says so (it used to blame params sharing memory: every meta tensor is at 0)."""
    params = [torch.nn.Parameter(torch.empty(3, 2, device="meta")) for _ in range(2)]
    optimizer = OPTIMIZERS[name](params, "reference")
    for p in params:
        p.grad = torch.empty(3, 2, device="meta")
    with pytest.raises(RuntimeError, match="meta device.*to_empty"):
        optimizer.step()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_meta_params_without_grads_are_passed_over(name):
    """As torch.optim passes over them: only the params a step updates need memory. (A
    backend named explicitly is refused for them at construction: it cannot run on meta.)"""
    params = [torch.nn.Parameter(torch.ones(3, 2)), *(torch.nn.Parameter(torch.empty(3, 2, device="meta"))
                                                     for _ in range(2))]
    optimizer = OPTIMIZERS[name](params, "auto")
    params[0].grad = torch.ones(3, 2)
    optimizer.step()
    assert not torch.equal(params[0].detach(), torch.ones(3, 2))


# --------------------------------------------------------------------------- grads changed behind the setter's back
BAD_GRADS = {
    "dtype": lambda p: torch.zeros(p.shape, dtype=torch.float16),
    "shape": lambda p: torch.zeros(3),
    "numel": lambda p: torch.zeros(p.numel() + 1),
    "same-numel-other-shape": lambda p: torch.zeros(p.shape[::-1]),
}


@pytest.mark.parametrize("bad", BAD_GRADS)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_grad_swapped_through_data_raises(name, bad, backend):
    """`p.grad.data = <wrong tensor>` skips the grad setter's checks: the step must raise
    RuntimeError and leave every param (of both dtypes in the group) and state as it was."""
    params, opt = started(name, backend)
    params[3].grad.data = BAD_GRADS[bad](params[3])
    before = snapshot(opt, params)
    with pytest.raises(RuntimeError):
        opt.step()
    assert_untouched(opt, params, before)
    # Fixing the grad makes the optimizer usable again.
    params[3].grad = torch.randn_like(params[3])
    opt.step()
    assert not torch.equal(params[3].detach(), before[0][3])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_grad_on_other_device_raises(name, backend):
    params, opt = started(name, backend)
    params[0].grad.data = torch.zeros(params[0].shape, device="cuda")
    before = snapshot(opt, params)
    with pytest.raises(RuntimeError):
        opt.step()
    assert_untouched(opt, params, before)


NON_CONTIGUOUS_GRADS = {
    "transposed-strides": lambda g: g.t().contiguous().t(),
    "expanded-row": lambda g: g[:1].expand_as(g),
    "expanded-scalar": lambda g: g[0, 0].expand_as(g),
    "strided-view": lambda g: torch.stack([g, g], dim=-1)[..., 0],
    "storage-offset": lambda g: torch.cat([torch.zeros(1, g.shape[1]), g])[1:],
}


@pytest.mark.parametrize("layout", NON_CONTIGUOUS_GRADS)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_non_contiguous_grad_same_result_as_torch(name, layout, backend):
    g = torch.Generator().manual_seed(0)
    values = [torch.randn(6, 9, generator=g), torch.randn(9, 6, generator=g)]
    grads = [[torch.randn(v.shape, generator=g) for v in values] for _ in range(4)]
    torch_kwargs = {"Adam": dict(lr=0.1, amsgrad=True), "AdamW": dict(lr=0.1, weight_decay=0.1),
                    "SGD": dict(lr=0.1, momentum=0.9, weight_decay=0.1),
                    "RMSprop": dict(lr=0.1, centered=True, momentum=0.9)}[name]
    results = []
    for make in (lambda ps: getattr(torch.optim, name)(ps, foreach=False, **torch_kwargs),
                 lambda ps: OPTIMIZERS[name](ps, backend)):
        params = [torch.nn.Parameter(v.clone()) for v in values]
        opt = make(params)
        for step_grads in grads:
            for p, gr in zip(params, step_grads):
                p.grad = NON_CONTIGUOUS_GRADS[layout](gr.clone())
            kept = [p.grad.clone() for p in params]
            opt.step()
            for p, k in zip(params, kept):
                assert torch.equal(p.grad, k)  # grads are read, never written
        results.append(params)
    assert_params_close(results[1], results[0], torch.float32)


# --------------------------------------------------------------------------- duplicates and aliasing
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_same_param_twice_in_a_group(name, backend):
    """torch.optim warns (and then updates the param twice); a fused update cannot write
    one tensor twice, so fusedopt refuses the group at construction, naming the duplicate."""
    p, q = torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="same parameter twice"):
        OPTIMIZERS[name]([p, q, p], backend)
    opt = OPTIMIZERS[name]([q], backend)
    with pytest.raises(ValueError, match="same parameter twice"):
        opt.add_param_group({"params": [p, p]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_overlapping_views_raise(name, backend):
    """Two params that are overlapping views of one tensor cannot be updated elementwise."""
    base = torch.randn(10)
    a, b = base[:6].requires_grad_(), base[4:].requires_grad_()
    a.grad, b.grad = torch.randn(6), torch.randn(6)
    before = base.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = OPTIMIZERS[name]([a, b], backend)
    with pytest.raises(RuntimeError, match="share memory"):
        opt.step()
    assert torch.equal(base, before)


# --------------------------------------------------------------------------- state replaced
def _state_keys(name):
    return {"Adam": ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"], "AdamW": ["exp_avg", "exp_avg_sq"],
            "SGD": ["momentum_buffer"], "RMSprop": ["square_avg", "grad_avg", "momentum_buffer"]}[name]


BAD_STATE = {
    "wrong-size": lambda t: torch.zeros(3, dtype=t.dtype),
    "wrong-shape-same-numel": lambda t: torch.zeros(t.shape[::-1], dtype=t.dtype),
    "wrong-dtype": lambda t: torch.zeros(t.shape, dtype=torch.float16),
    "not-a-tensor": lambda t: 0.0,
}


@pytest.mark.parametrize("bad", BAD_STATE)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_replaced_with_wrong_tensor_raises(name, bad, backend):
    params, opt = started(name, backend)
    for key in _state_keys(name):
        for p in params:
            p.grad = torch.randn_like(p)
        original = opt.state[params[2]][key]
        opt.state[params[2]][key] = BAD_STATE[bad](original)
        before = snapshot(opt, params)
        with pytest.raises(RuntimeError, match=key):
            opt.step()
        assert_untouched(opt, params, before)
        opt.state[params[2]][key] = original  # repaired: steps again
        opt.step()


@pytest.mark.parametrize("name", ["Adam", "RMSprop"])
def test_state_replaced_with_good_tensor_is_used(name, backend):
    """A state tensor replaced by a new one of the right layout (e.g. a checkpoint value
    patched in) is what the next step reads and writes."""
    params, opt = started(name, backend)
    reference_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    torch_class = getattr(torch.optim, name)
    accepted = inspect.signature(torch_class).parameters
    reference = torch_class(reference_params, **{k: v for k, v in opt.defaults.items() if k in accepted})
    reference.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch would alias same-dtype tensors
    key = _state_keys(name)[0]
    for o, ps in ((opt, params), (reference, reference_params)):
        o.state[ps[1]][key] = torch.full_like(ps[1], 0.5)
        o.state[ps[1]]["step"] = torch.tensor(7.0)
        for p, g in zip(ps, [torch.full_like(p, 0.1 * i) for i, p in enumerate(ps)]):
            p.grad = g
        o.step()
    assert_params_close(params, reference_params, torch.float32)
    assert opt.state[params[1]]["step"].item() == 8


@pytest.mark.parametrize("kwargs", [
    pytest.param(dict(momentum=0.9), id="SGD-momentum"),
    pytest.param(dict(momentum=0.9, dampening=0.5), id="SGD-momentum-dampening"),
])
def test_failed_first_step_leaves_no_trace(kwargs, backend):
    """A first step that raises must not change what later steps compute: after the bad
    grad is replaced, training matches a torch.optim run that never saw it."""
    g = torch.Generator().manual_seed(0)
    values = [torch.randn(5, generator=g), torch.randn(4, generator=g)]
    grads = [[torch.randn(v.shape, generator=g) for v in values] for _ in range(4)]
    results = []
    for make in (lambda ps: fusedopt.SGD(ps, lr=0.1, backend=backend, **kwargs),
                 lambda ps: torch.optim.SGD(ps, lr=0.1, **kwargs)):
        params = [torch.nn.Parameter(v.clone()) for v in values]
        opt = make(params)
        if isinstance(opt, fusedopt.SGD):
            params[0].grad, params[1].grad = grads[0][0].clone(), grads[0][1].clone()
            params[1].grad.data = torch.zeros(4, dtype=torch.float64)
            with pytest.raises(RuntimeError, match="dtype"):
                opt.step()
        for step_grads in grads:
            for p, gr in zip(params, step_grads):
                p.grad = gr.clone()
            opt.step()
        results.append(params)
    assert_params_close(results[0], results[1], torch.float32)
