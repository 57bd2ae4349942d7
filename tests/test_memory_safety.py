"""Every fact a kernel relies on is checked before native code runs, on the cached fast
path as on the first step: each grad's shape, each tensor's span inside its storage as it
is now, and no grad sharing memory with a tensor the kernels write. Each case below was a
memory error before (an out-of-bounds read or a use-after-free under AddressSanitizer, or
__restrict aliasing); now it is a clear RuntimeError and nothing is written."""
import pytest
import torch

import fusedopt
from fusedopt._buckets import ParamState

OPTIMIZERS = {
    "SGD": lambda ps, b: fusedopt.SGD(ps, lr=0.1, momentum=0.9, backend=b),
    "Adam": lambda ps, b: fusedopt.Adam(ps, lr=0.1, backend=b),
    "RMSprop": lambda ps, b: fusedopt.RMSprop(ps, lr=0.1, centered=True, backend=b),
    "ASGD": lambda ps, b: fusedopt.ASGD(ps, lr=0.1, t0=0.0, backend=b),  # per-param scalars eta, mu
    "NAdam": lambda ps, b: fusedopt.NAdam(ps, lr=0.1, backend=b),  # per-param scalar mu_product
}


def snapshot(opt, params):
    state = {i: {k: v.clone() for k, v in opt.state[p].items()} for i, p in enumerate(params) if p in opt.state}
    return [p.detach().clone() for p in params], state


def assert_untouched(opt, params, before):
    values, state = before
    for p, v in zip(params, values):
        assert torch.equal(p.detach(), v)
    for i, saved in state.items():
        for key, value in saved.items():
            current = opt.state[params[i]][key]
            if current.untyped_storage().nbytes() >= value.nbytes:  # a freed tensor cannot be read
                assert torch.equal(current, value), key


def started(name, backend, shape=(3, 2), transposed=False):
    """An optimizer that has taken one step, so the next one runs on the cached table."""
    p = torch.nn.Parameter(torch.randn(shape).t() if transposed else torch.randn(shape))
    p.grad = torch.randn(shape).t() if transposed else torch.randn(shape)
    opt = OPTIMIZERS[name]([p], backend)
    opt.step()
    return p, opt


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_grad_set_to_a_smaller_storage_with_the_same_strides(name, backend):
    """The issue's heap-buffer-overflow: a grad with the param's byte count and strides but
    another shape, on a 5-element storage, passed the fast path's checks."""
    p, opt = started(name, backend, transposed=True)
    p.grad.set_(torch.randn(5).untyped_storage(), 0, (3, 2), (1, 2))
    before = snapshot(opt, [p])
    with pytest.raises(RuntimeError, match="shape"):
        opt.step()
    assert_untouched(opt, [p], before)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_grad_of_another_shape_with_the_same_bytes_raises(name, backend):
    """torch.optim raises on a (3, 2) grad for a (2, 3) param; the fast path accepted it."""
    p, opt = started(name, backend, shape=(2, 3))
    p.grad.data = torch.arange(6.0).reshape(3, 2)
    before = snapshot(opt, [p])
    with pytest.raises(RuntimeError, match=r"shape \(3, 2\)"):
        opt.step()
    assert_untouched(opt, [p], before)
    with pytest.raises(RuntimeError):  # torch.optim agrees that this is an error
        q = torch.nn.Parameter(torch.zeros(2, 3))
        q.grad = torch.arange(6.0).reshape(3, 2)
        torch.optim.Adam([q]).step()


@pytest.mark.parametrize("key", ["exp_avg", "exp_avg_sq", "step"])
def test_state_storage_freed_in_place_raises(key, backend):
    """The issue's heap-use-after-free: `untyped_storage().resize_(0)` frees a state
    tensor's memory but leaves the tensor object (and so the identity check) in place."""
    p, opt = started("Adam", backend, shape=(1000,))
    before = snapshot(opt, [p])
    opt.state[p][key].untyped_storage().resize_(0)
    with pytest.raises(RuntimeError, match="storage"):
        opt.step()
    assert_untouched(opt, [p], before)


@pytest.mark.parametrize("name, key", [("ASGD", "eta"), ("ASGD", "mu"), ("NAdam", "mu_product")])
def test_scalar_state_storage_freed_in_place_raises(name, key, backend):
    """A per-param scalar state is written through the table like the step counter: its
    storage freed under the same tensor object is noticed before any kernel runs."""
    p, opt = started(name, backend, shape=(1000,))
    before = snapshot(opt, [p])
    opt.state[p][key].untyped_storage().resize_(0)
    with pytest.raises(RuntimeError, match="storage"):
        opt.step()
    assert_untouched(opt, [p], before)


@pytest.mark.parametrize("name, key", [("ASGD", "eta"), ("NAdam", "mu_product")])
def test_scalar_state_of_several_numbers_raises(name, key, backend):
    """A scalar state replaced by a tensor of several elements is refused by name (one
    number is taken, of any dtype or device, as torch's checkpoints hold it)."""
    p, opt = started(name, backend, shape=(1000,))
    before = snapshot(opt, [p])
    opt.state[p][key] = torch.ones(3)
    with pytest.raises(RuntimeError, match=f"state '{key}' of a param must hold one number"):
        opt.step()
    assert torch.equal(p.detach(), before[0][0])


def test_param_storage_smaller_than_its_shape_raises(backend):
    """The issue's third overflow: `p.untyped_storage().resize_(400)` on 1,000 floats."""
    p, opt = started("Adam", backend, shape=(1000,))
    p.untyped_storage().resize_(400)
    with pytest.raises(RuntimeError, match="holds 400 bytes"):
        opt.step()


def test_param_storage_too_small_on_the_first_step_raises(backend):
    p = torch.nn.Parameter(torch.randn(1000))
    p.grad = torch.randn(1000)
    p.untyped_storage().resize_(400)
    with pytest.raises(RuntimeError, match="holds 400 bytes"):
        fusedopt.SGD([p], lr=0.1, backend=backend).step()


def test_grad_storage_shrunk_under_the_same_grad_object_raises(backend):
    """Same grad object, same address for all it knows: its storage's size is rechecked."""
    p, opt = started("SGD", backend, shape=(1000,))
    p.grad.untyped_storage().resize_(0)
    p.grad.untyped_storage().resize_(400)
    with pytest.raises(RuntimeError, match="storage"):
        opt.step()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_grad_aliasing_its_param_raises(name, backend):
    """`p.grad = p.detach()` passed the overlap check, though the kernels declare p and g
    __restrict (undefined behaviour no sanitizer sees)."""
    p = torch.nn.Parameter(torch.randn(10))
    p.grad = p.detach()
    opt = OPTIMIZERS[name]([p], backend)
    with pytest.raises(RuntimeError, match="shares memory"):
        opt.step()
    assert not opt.state[p]  # refused before any state was created


def test_grad_aliasing_another_params_state_raises(backend):
    a, b = torch.nn.Parameter(torch.randn(8)), torch.nn.Parameter(torch.randn(8))
    a.grad, b.grad = torch.randn(8), torch.randn(8)
    opt = fusedopt.Adam([a, b], backend=backend)
    opt.step()
    b.grad = opt.state[a]["exp_avg"]  # a grad reading memory the same launch writes
    with pytest.raises(RuntimeError, match="shares memory"):
        opt.step()


def test_grads_that_share_one_storage_without_overlap_are_fine(backend):
    """Disjoint views of one buffer (flat grad buffers, as DDP and Megatron keep) are
    valid grads: only overlap with written memory is refused."""
    flat = torch.randn(20)
    params = [torch.nn.Parameter(torch.randn(10)) for _ in range(2)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for i, (p, t) in enumerate(zip(params, twins)):
        p.grad = flat[10 * i:10 * (i + 1)]
        t.grad = p.grad.clone()
    fusedopt.Adam(params, lr=0.1, backend=backend).step()
    torch.optim.Adam(twins, lr=0.1).step()
    for p, t in zip(params, twins):
        torch.testing.assert_close(p, t)


def test_max_grad_norm_with_float64_params(backend):
    """The reference backend's clip norm raised for float64 (a float32 norm of float64
    grads); both backends now clip like torch's clip_grad_norm_ followed by a step."""
    torch.manual_seed(0)
    values = [torch.randn(7, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)]
    params = [torch.nn.Parameter(v.clone()) for v in values]
    twins = [torch.nn.Parameter(v.clone()) for v in values]
    opt = fusedopt.AdamW(params, lr=0.1, max_grad_norm=0.01, backend=backend)
    reference = torch.optim.AdamW(twins, lr=0.1)
    for _ in range(5):
        grads = [torch.randn_like(v) for v in values]
        for p, t, g in zip(params, twins, grads):
            p.grad, t.grad = g.clone(), g.clone()
        opt.step()
        torch.nn.utils.clip_grad_norm_(twins, 0.01)
        reference.step()
    for p, t in zip(params, twins):  # the clip coefficient reaches every kernel as a float32
        torch.testing.assert_close(p, t, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_clip_grad_norm_of_complex_grads_matches_torch(dtype):
    """It raised a bare KeyError for complex grads; torch clips them."""
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5, dtype=dtype)) for _ in range(2)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for p, t in zip(ours, theirs):
        p.grad = torch.randn(5, dtype=dtype) * 10
        t.grad = p.grad.clone()
    norm = fusedopt.clip_grad_norm_(ours, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert torch.equal(norm, expected)
    for p, t in zip(ours, theirs):
        assert torch.equal(p.grad, t.grad)


def test_clip_grad_norm_refuses_a_grad_outside_its_storage():
    p = torch.nn.Parameter(torch.randn(1000))
    p.grad = torch.randn(1000)
    p.grad.untyped_storage().resize_(400)
    with pytest.raises(RuntimeError, match="storage"):
        fusedopt.clip_grad_norm_([p], 1.0)


# --------------------------------------------------------------------------- stale state
def _replace(s, key, value):
    s[key] = value


# Every way to change a dict in place; `|=` used to bypass the change count, so the
# kernels kept updating the orphaned old tensor.
MUTATIONS = {
    "setitem": _replace,
    "update": lambda s, k, v: s.update({k: v}),
    "update-kwargs": lambda s, k, v: s.update(**{k: v}),
    "ior": lambda s, k, v: s.__ior__({k: v}),
    "ior-operator": None,  # spelled out in the test: `s |= ...` rebinds a local name
    "pop-setdefault": lambda s, k, v: (s.pop(k), s.setdefault(k, v)),
    "delitem-setitem": lambda s, k, v: (s.__delitem__(k), s.__setitem__(k, v)),
    "popitem-restore": None,  # spelled out in the test
    "clear-restore": None,  # spelled out in the test
}


def _mutate(how, state, key, value):
    if how == "ior-operator":
        state |= {key: value}
    elif how == "popitem-restore":
        saved = {}
        while key not in saved:
            k, v = state.popitem()
            saved[k] = v
        saved[key] = value
        for k, v in saved.items():
            state[k] = v
    elif how == "clear-restore":
        saved = dict(state)
        state.clear()
        saved[key] = value
        state.update(saved)
    else:
        MUTATIONS[how](state, key, value)


def test_mutations_list_covers_every_mutating_dict_method():
    mutating = {"__setitem__", "__delitem__", "__ior__", "pop", "popitem", "clear", "update", "setdefault"}
    assert mutating <= set(dir(dict))
    for method in mutating:  # each is overridden to count the change
        assert getattr(ParamState, method) is not getattr(dict, method), method


@pytest.mark.parametrize("how", MUTATIONS)
def test_state_replaced_by_any_dict_mutation_is_used(how, backend):
    torch.manual_seed(0)
    values = torch.randn(16)
    grads = [torch.randn(16) for _ in range(4)]
    runs = []
    for make in (lambda ps: fusedopt.Adam(ps, lr=0.1, backend=backend), lambda ps: torch.optim.Adam(ps, lr=0.1)):
        p = torch.nn.Parameter(values.clone())
        opt = make([p])
        for i, g in enumerate(grads):
            if i == 2:
                _mutate(how, opt.state[p], "exp_avg", torch.full((16,), 5.0))
            p.grad = g.clone()
            opt.step()
        runs.append((p, opt.state[p]["exp_avg"]))
    (p, m), (expected, expected_m) = runs
    # A stale exp_avg is off by about 0.4 here; rounding differences are below 1e-6.
    torch.testing.assert_close(m, expected_m, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-6)


def test_sum_of_squares_op_reads_no_tensor_by_a_wrong_size():
    """fusedopt::sum_of_squares is public: a mixed-dtype list must not make the kernel read a
    float32 tensor as float64 (twice its bytes); it is summed by torch instead."""
    import fusedopt._ops  # noqa: F401  (registers the op)
    grads = [torch.randn(3, dtype=torch.float64), torch.randn(1000, dtype=torch.float32)]
    total = torch.ops.fusedopt.sum_of_squares(grads, "cpu")
    expected = sum(g.double().square().sum() for g in grads)
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)
