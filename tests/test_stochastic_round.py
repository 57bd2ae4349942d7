"""bf16_stochastic_round=True (issue 13): bf16 params without master weights are stored rounded
stochastically, `upper 16 bits of (float32 bits + r)` with r 16 random bits hashed from (a seed
drawn per update call from torch's default generator, the tensor's index in the call, the
element's index in its memory); fusedopt/backends/reference/_rounding.py is the statement.

Reference, cpu, triton (interpreter) and the host build of the CUDA kernels compute the same
bits; runs are reproducible under torch.manual_seed; the rounding is unbiased, lands on one of
the two neighbouring bf16 values, keeps NaN and Inf; GradScaler's skipped step moves nothing;
the options it cannot honour are refused.
"""
import math

import pytest
import torch

import fusedopt
from fusedopt.backends.reference._rounding import mix32, rounding_bits, rounding_key, stochastic_bf16
from fusedopt.optim import _spec

from test_state_dtype import OPTIONS
from _triton_loops import triton_backends

KINDS = tuple(_spec.elementwise_kinds())
# The reference is torch's own operations, and torch's CPU lerp_ and addcmul_ take a fused
# multiply-add on their vectorised path (the 4097-element tensor), where the kernels round the
# product first: Lion's momentum and RMSprop's and Adadelta's square_avg then differ by a
# rounding from the kernels' with round-to-nearest too (reproduced with
# bf16_stochastic_round=False), so for these the reference is compared on the small tensors.
REFERENCE_FMA = {"lion", "rmsprop", "adadelta"}
STEPS = 20


def _host_backends(monkeypatch):
    """The host build of the CUDA kernels (large and classic parameter blocks), LAMB's norm pass
    and update included."""
    try:
        from _host_cuda import register_host_backends  # skips without fusedopt._cuda_host
    except pytest.skip.Exception:
        return ()
    register_host_backends(monkeypatch)
    return ("cuda_host", "cuda_host_classic")


def _class(kind):
    return _spec._CLASSES[kind]


def _params(seed=0):
    """Odd sizes, several tensors in a bucket, one laid out transposed (its memory order is
    not its logical order: the random bits follow the memory)."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(shape, generator=g).to(torch.bfloat16) for shape in ((1,), (7,), (4097,))]
    params.append(torch.randn(3, 5, generator=g).to(torch.bfloat16).t())
    return [p.requires_grad_() for p in params]


def _grads(params, step):
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=g).to(torch.bfloat16) for p in params]


def _run(kind, backend, steps=STEPS, seed=1234, rounding=True, **extra):
    params = _params()
    opt = _class(kind)(params, backend=backend, bf16_stochastic_round=rounding,
                       **{"lr": 1e-3, **OPTIONS.get(kind, {}), **extra})
    torch.manual_seed(seed)
    for step in range(steps):
        for p, g in zip(params, _grads(params, step)):
            p.grad = g
        opt.step()
    return params, opt


def _bits(t):
    return t.detach().contiguous().view(torch.int16 if t.element_size() == 2 else torch.int32)


def _assert_same(actual, expected, what):
    (params_a, opt_a), (params_e, opt_e) = actual, expected
    for i, (a, e) in enumerate(zip(params_a, params_e)):
        assert torch.equal(_bits(a), _bits(e)), f"{what}: param {i} differs in {int((_bits(a) != _bits(e)).sum())}"
        for key, value in opt_e.state[e].items():
            assert torch.equal(_bits(opt_a.state[a][key]), _bits(value)), f"{what}: state {key!r} of param {i}"


@pytest.mark.parametrize("states", ["fp32_states", "bf16_states"])
@pytest.mark.parametrize("kind", KINDS)
def test_same_bits_on_every_backend(kind, states, monkeypatch):
    extra = {"state_dtype": torch.bfloat16} if states == "bf16_states" else {}
    expected = _run(kind, "cpu", **extra)
    nearest = _run(kind, "cpu", rounding=False, **extra)
    assert any(not torch.equal(_bits(a), _bits(b)) for a, b in zip(expected[0], nearest[0])), \
        "stochastic rounding gave round-to-nearest's bits"
    for backend in (*triton_backends(), *_host_backends(monkeypatch), "reference"):
        actual = _run(kind, backend, **extra)
        if backend == "reference" and kind in REFERENCE_FMA:
            keep = [i for i, p in enumerate(actual[0]) if p.numel() < 4097]
            actual = ([actual[0][i] for i in keep], actual[1])
            expected_small = ([expected[0][i] for i in keep], expected[1])
            _assert_same(actual, expected_small, backend)
            continue
        _assert_same(actual, expected, backend)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_reproducible_under_manual_seed(backend):
    first, again = _run("adam", backend, steps=5), _run("adam", backend, steps=5)
    other = _run("adam", backend, steps=5, seed=99)
    for a, b, c in zip(first[0], again[0], other[0]):
        assert torch.equal(_bits(a), _bits(b))
    assert any(not torch.equal(_bits(a), _bits(c)) for a, c in zip(first[0], other[0]))
    assert not torch.equal(_bits(first[0][2]), _bits(other[0][2]))  # 4097 elements: some round otherwise


def test_random_stream_drawn_only_when_rounding():
    """One draw per bucket per step with it; none without it, or for params it does not round."""
    def stream_after(rounding, dtype=torch.bfloat16, master=False):
        p = torch.zeros(4, dtype=dtype, requires_grad=True)
        extra = {"master_weights": True} if master else {}
        opt = fusedopt.SGD([p], lr=0.1, backend="cpu", **({"bf16_stochastic_round": True} if rounding else {}),
                           **extra)
        torch.manual_seed(5)
        for _ in range(3):
            p.grad = torch.ones_like(p)
            opt.step()
        return torch.rand(3)

    torch.manual_seed(5)
    untouched = torch.rand(3)
    assert torch.equal(stream_after(False), untouched)
    assert torch.equal(stream_after(False, master=True), untouched)
    torch.manual_seed(5)
    for _ in range(3):
        torch.randint(1, 2**62, (1,))
    after_three_draws = torch.rand(3)
    assert torch.equal(stream_after(True), after_three_draws)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_small_updates_are_not_lost_and_unbiased(backend):
    """A bf16 1.0 moved by SGD steps of lr*grad well below half a bf16 ulp (2^-8): to nearest,
    it never moves; stochastically, the mean over many elements after N steps is the exact
    float64 sum within a few standard errors."""
    n, steps, lr, grad = 1 << 16, 40, 0.3, -(2.0 ** -12)
    results = {}
    for rounding in (False, True):
        p = torch.ones(n, dtype=torch.bfloat16, requires_grad=True)
        opt = fusedopt.SGD([p], lr=lr, backend=backend, bf16_stochastic_round=rounding)
        torch.manual_seed(0)
        for _ in range(steps):
            p.grad = torch.full_like(p, grad)
            opt.step()
        results[rounding] = p.detach().double()
    assert torch.equal(results[False], torch.ones(n, dtype=torch.float64))
    exact = 1.0 + steps * (-float(torch.tensor(lr, dtype=torch.float32)) * grad)
    values = results[True]
    standard_error = values.std().item() / math.sqrt(n)
    assert standard_error > 0
    assert abs(values.mean().item() - exact) < 4 * standard_error, (values.mean().item(), exact, standard_error)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_one_rounding_lands_on_a_neighbour(backend):
    """One step of SGD on bf16 params: each stochastically rounded result is the float32 result
    truncated to bf16, or the next bf16 away from zero; exactly the float32 result where that is
    a bf16 value; and rounds up about as often as the dropped bits say."""
    g = torch.Generator().manual_seed(3)
    start = torch.randn(1 << 15, generator=g).to(torch.bfloat16)
    grad = torch.randn(1 << 15, generator=g).to(torch.bfloat16)
    p32 = start.float().requires_grad_()
    p32.grad = grad.float()
    fusedopt.SGD([p32], lr=1e-2, backend=backend).step()  # the float32 result, no rounding
    p = start.clone().requires_grad_()
    p.grad = grad.clone()
    torch.manual_seed(7)
    fusedopt.SGD([p], lr=1e-2, backend=backend, bf16_stochastic_round=True).step()
    exact = p32.detach().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    got = p.detach().view(torch.int16).to(torch.int64) & 0xFFFF
    down = exact >> 16
    assert bool(((got == down) | (got == down + 1)).all())
    representable = (exact & 0xFFFF) == 0
    assert bool((got[representable] == down[representable]).all())
    fraction = ((exact & 0xFFFF).double() / 65536)[~representable]
    rounded_up = (got != down)[~representable].double()
    standard_error = math.sqrt((fraction * (1 - fraction)).sum().item()) / fraction.numel()
    assert abs(rounded_up.mean().item() - fraction.mean().item()) < 4 * standard_error


def test_nan_and_inf(monkeypatch):
    """NaN stays NaN (quiet), +-Inf stay Inf, a value past the largest bf16 (by half its ulp)
    becomes Inf or the largest bf16, never NaN; the same bits on every engine."""
    big = torch.finfo(torch.bfloat16).max
    bits = torch.tensor([0x7F800000, 0xFF800000, 0x7FC00001, 0xFF800001, 0x7F7F0000 + 0x8000,
                         0xFF7F0000 + 0x8000, 0x00000001, 0x3F808000], dtype=torch.int64)
    values = (bits - ((bits & 0x80000000) << 1)).to(torch.int32).view(torch.float32).repeat(512)
    like = torch.empty(values.shape, dtype=torch.bfloat16)
    out = stochastic_bf16(values, 12345, 0, like).float()
    assert torch.isnan(out[2::8]).all() and torch.isnan(out[3::8]).all()
    assert (out[0::8] == math.inf).all() and (out[1::8] == -math.inf).all()
    for column, sign in ((4, 1), (5, -1)):
        seen = out[column::8]
        assert ((seen == sign * math.inf) | (seen == sign * big)).all()
        assert (seen == sign * math.inf).any() and (seen == sign * big).any()
    assert ((out[6::8] == 0) | (out[6::8] == 2.0 ** -133)).all()  # float32's least subnormal: bf16's or 0
    assert ((out[7::8] == 1.0) | (out[7::8] == 1.0 + 2.0 ** -7)).all()  # a tie: either neighbour
    assert (out[7::8] == 1.0).any() and (out[7::8] != 1.0).any()
    # through the optimizers: params NaN, +-Inf and near the largest bf16, every engine alike
    start = torch.tensor([math.nan, math.inf, -math.inf, big, -big, 1.0] * 100, dtype=torch.bfloat16)
    grad = torch.tensor([0.0, 0.0, 0.0, -1.0, 1.0, 0.0] * 100, dtype=torch.bfloat16)
    lr = 2.0 ** 119  # moves the largest bf16 by half its ulp (2^120)
    results = {}
    for backend in ("reference", "cpu", *triton_backends(), *_host_backends(monkeypatch)):
        p = start.clone().requires_grad_()
        p.grad = grad.clone()
        torch.manual_seed(11)
        fusedopt.SGD([p], lr=lr, backend=backend, bf16_stochastic_round=True).step()
        results[backend] = p.detach()
    p = results["cpu"]
    assert torch.isnan(p[0::6]).all() and (p[1::6] == math.inf).all() and (p[2::6] == -math.inf).all()
    assert ((p[3::6] == math.inf) | (p[3::6] == big)).all() and (p[3::6] == math.inf).any()
    assert ((p[4::6] == -math.inf) | (p[4::6] == -big)).all() and (p[4::6] == -math.inf).any()
    for backend, q in results.items():
        assert torch.equal(_bits(q), _bits(p)), backend


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_grad_scaler_skip_leaves_params(backend):
    params = _params()
    opt = fusedopt.AdamW(params, lr=1e-2, backend=backend, bf16_stochastic_round=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    scaler.scale(torch.ones(()))
    for step in range(4):
        grads = [g * scaler.get_scale() for g in _grads(params, step)]
        if step == 2:
            grads[1][0] = float("inf")
        for p, g in zip(params, grads):
            p.grad = g
        before = [_bits(p).clone() for p in params]
        scaler.step(opt)
        scaler.update()
        moved = [not torch.equal(_bits(p), b) for p, b in zip(params, before)]
        assert not any(moved) if step == 2 else any(moved)


def test_reference_hash_is_the_one_documented():
    """The reference's mix32 against plain Python integers (32-bit wrap-around), and the key and
    bits formulas: a change to any of them changes every engine's bits."""
    def py_mix32(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    xs = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 123456789]
    assert mix32(torch.tensor(xs)).tolist() == [py_mix32(x) for x in xs]
    seed = (0x1234567 << 32) | 0x89ABCDEF
    assert rounding_key(seed, 3) == py_mix32(py_mix32(py_mix32(3) ^ 0x89ABCDEF) ^ 0x1234567)
    index = torch.tensor([0, 5, (7 << 32) | 9])
    key = rounding_key(seed, 3)
    assert rounding_bits(key, index).tolist() == [py_mix32(py_mix32(key ^ (i & 0xFFFFFFFF)) ^ (i >> 32)) >> 16
                                                 for i in index.tolist()]


def test_refused_options():
    f32 = [torch.zeros(3, requires_grad=True)]
    bf16 = [torch.zeros(3, dtype=torch.bfloat16, requires_grad=True)]
    with pytest.raises(ValueError, match="bfloat16 params only"):
        fusedopt.Adam(f32, bf16_stochastic_round=True)
    with pytest.raises(ValueError, match="master_weights"):
        fusedopt.Adam(bf16, bf16_stochastic_round=True, master_weights=True)
    with pytest.raises(ValueError, match="True or False"):
        fusedopt.SGD(bf16, bf16_stochastic_round=1)
    with pytest.raises(ValueError, match="lazy mode"):
        fusedopt.Adam(bf16, bf16_stochastic_round=True, lazy_mode=True)
    opt = fusedopt.Adafactor([torch.zeros(4, 3, dtype=torch.bfloat16, requires_grad=True)])
    with pytest.raises(ValueError, match="Adafactor: bf16_stochastic_round=True is not supported"):
        opt.add_param_group({"params": bf16, "bf16_stochastic_round": True})
    assert len(opt.param_groups) == 1
    fusedopt.Adam(bf16, bf16_stochastic_round=True)  # accepted: implemented


def test_group_chooses_and_checkpoint_keeps_the_option():
    params = _params()
    opt = fusedopt.Adam([{"params": params[:2], "bf16_stochastic_round": True}, {"params": params[2:]}], lr=1e-2,
                        backend="cpu")
    saved = opt.state_dict()
    assert [g.get("bf16_stochastic_round", False) for g in saved["param_groups"]] == [True, False]  # defaults left out
    again = fusedopt.Adam([{"params": params[:2]}, {"params": params[2:]}], lr=1e-2, backend="cpu")
    again.load_state_dict(saved)
    assert [g["bf16_stochastic_round"] for g in again.param_groups] == [True, False]


@pytest.mark.slow
def test_compiled_step_equals_eager_step():
    """torch.compile'd step() (the fusedopt::update_ op) draws the same seeds and rounds the same."""
    import fusedopt._ops  # noqa: F401  registers the op

    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        params = _params()
        opt = fusedopt.AdamW(params, lr=1e-2, backend="cpu", bf16_stochastic_round=True)
        step = torch.compile(opt.step) if compiled else opt.step
        torch.manual_seed(3)
        for i in range(3):
            for p, g in zip(params, _grads(params, i)):
                p.grad = g
            step()
        results.append(params)
    for a, b in zip(*results):
        assert torch.equal(_bits(a), _bits(b))
