"""8-bit states (state_dtype="int8") on the compiled kernels (the CPU kernels, and the CUDA
kernels through their host build, fusedopt._cuda_host, with large and classic parameter
blocks) against the reference backend (fusedopt/_quantize.py's specification): params, codes,
block absmax and the float32 states of small tensors bit for bit after 20 steps, for every
kind that allows 8-bit states, float32 and 16-bit params (with and without a master copy); the
kernels' one-lookup quantization against the specification's binary search; edge blocks (all
zeros, one huge value, non-finite values, short last blocks, GradScaler's skipped step); the
norm pass of LAMB; thread counts.
"""
import pytest
import torch

import fusedopt
from fusedopt import _code_lookup as L
from fusedopt import _quantize as Q
from fusedopt.optim import _spec

CPU_REASON = fusedopt.backends.unusable_reason("cpu", torch.device("cpu"), "int8_states")
needs_cpu = pytest.mark.skipif(CPU_REASON is not None, reason=f"backend 'cpu' has no 8-bit kernels: {CPU_REASON}")

KINDS = ("adam", "sgd", "rmsprop", "lion", "adagrad", "adadelta", "adamax", "nadam", "radam", "lamb")
OPTIONS = {"sgd": dict(momentum=0.9), "rmsprop": dict(momentum=0.9), "adam": dict(amsgrad=True),
           "nadam": dict(decoupled_weight_decay=True)}
LR = {"sgd": 1e-2, "adagrad": 1e-2, "adadelta": 1.0, "rmsprop": 1e-3, "lion": 1e-4}
# Quantized tensors (a whole number of blocks, a short last block, 2-D) and a small one.
SHAPES = ((64, 96), (4100,), (5000,), (7, 5))
# Params of each dtype, with or without a float32 master copy.
STORAGE = [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True), (torch.float16, False),
           (torch.float16, True)]


@pytest.fixture(params=["cpu", "cuda_host", "cuda_host_classic"])
def backend(request, monkeypatch):
    """A backend with compiled 8-bit kernels: cpu, or the host build of the CUDA kernels."""
    if request.param == "cpu":
        if CPU_REASON is not None:
            pytest.skip(f"backend 'cpu' has no 8-bit kernels: {CPU_REASON}")
        return "cpu"
    from _host_cuda import register_host_backends  # skips without fusedopt._cuda_host

    register_host_backends(monkeypatch)
    return request.param


def _params(dtype, shapes=SHAPES):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=g).to(dtype).requires_grad_() for shape in shapes]


def _set_grads(params, step):
    """Grads that do not depend on the params: a param an ulp away (below) changes no state."""
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def _make(kind, params, backend, **extra):
    options = {"lr": LR.get(kind, 1e-3), **OPTIONS.get(kind, {}), "state_dtype": "int8", "backend": backend, **extra}
    return _spec._CLASSES[kind](params, **options)


def _assert_same_state(a, b, what):
    assert set(a) == set(b), what
    for key in a:
        assert a[key].dtype == b[key].dtype, (what, key)
        assert torch.equal(a[key], b[key]), (what, key, (a[key] != b[key]).sum().item())


def _run_both(kind, dtype, master, steps, backend="cpu", other="reference", **extra):
    results = []
    for backend in (other, backend):
        params = _params(dtype)
        opt = _make(kind, params, backend, master_weights=master, **extra)
        for step in range(steps):
            _set_grads(params, step)
            opt.step()
        results.append((params, opt))
    return results


def _assert_close_param(a, b, what):
    """A param the reference and the kernels round differently: to float32 rounding, or one ulp
    of a 16-bit param (a float32 value an ulp away may round the other way)."""
    if a.dtype == torch.float32:
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=str(what))
    else:
        eps = torch.finfo(a.dtype).eps
        torch.testing.assert_close(b.float(), a.float(), rtol=eps, atol=eps, msg=str(what))


@pytest.mark.parametrize("dtype, master", STORAGE, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("kind", KINDS)
def test_twenty_steps_equal_the_cpu_kernels(kind, dtype, master, backend):
    """The compiled kernels round every operation alike (no contraction into fused multiply-adds
    on any engine), so the CUDA kernels' params, codes, absmax and float32 states equal the CPU
    kernels' bit for bit after 20 steps."""
    if backend == "cpu":
        pytest.skip("the CPU kernels are the comparison")
    if CPU_REASON is not None:
        pytest.skip(CPU_REASON)
    (cpu_params, cpu), (params, opt) = _run_both(kind, dtype, master, steps=20, backend=backend, other="cpu")
    for i, (a, b) in enumerate(zip(cpu_params, params)):
        assert torch.equal(a, b), (kind, i)
        _assert_same_state(cpu.state[a], opt.state[b], (kind, i))
    assert opt.state[params[0]][opt.state_keys(opt.param_groups[0])[0]].dtype == torch.uint8


@pytest.mark.parametrize("dtype, master", STORAGE, ids=lambda v: str(v).replace("torch.", ""))
def test_sgd_twenty_steps_bit_for_bit_with_the_reference(dtype, master, backend):
    """SGD's momentum (buf * momentum + grad) is computed with the same roundings by torch's
    operations and by the kernels, so its 8-bit states follow the specification bit for bit:
    codes and absmax after 20 steps, from the first step's copy of the grad on. The param to
    float32 rounding: torch's add_(buf, alpha=-lr) is one fused multiply-add (and a float32
    value an ulp away may round to the other 16-bit neighbour)."""
    (ref_params, ref), (params, opt) = _run_both("sgd", dtype, master, steps=20, backend=backend)
    for i, (a, b) in enumerate(zip(ref_params, params)):
        _assert_close_param(a, b, i)
        sa, sb = ref.state[a], opt.state[b]
        assert set(sa) == set(sb)
        for key in sa:
            if key == "master_param":
                torch.testing.assert_close(sb[key], sa[key], rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(sa[key], sb[key]), (i, key)


@pytest.mark.parametrize("dtype, master", STORAGE, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("kind", KINDS)
def test_each_step_follows_the_reference(kind, dtype, master, backend):
    """Every kind against the reference, one step at a time from the same params and states
    (the reference's, copied into the kernels' optimizer before each of 8 steps). torch's CPU
    lerp_, addcmul_ and addcdiv_ take a fused multiply-add on vectorised stretches of large
    tensors where the kernels round each operation (tests/test_state_dtype.py), so a new
    float32 state may differ by an ulp: its block's absmax then differs by an ulp or two, and a
    value within an ulp of a decision boundary takes the neighbouring code. So: codes equal but
    for at most 0.2% that moved by exactly one, absmax to 4 float32 ulps, params to float32
    rounding (one ulp of a 16-bit param)."""
    ref_params, params = _params(dtype), _params(dtype)
    ref = _make(kind, ref_params, "reference", master_weights=master)
    opt = _make(kind, params, backend, master_weights=master)
    moved = total = 0
    for step in range(8):
        _set_grads(ref_params, step)
        _set_grads(params, step)
        ref.step()
        opt.step()
        for i, (a, b) in enumerate(zip(ref_params, params)):
            _assert_close_param(a, b, (kind, step, i))
            sa, sb = ref.state[a], opt.state[b]
            assert set(sa) == set(sb)
            for key in sa:
                x, y = sa[key], sb[key]
                assert x.dtype == y.dtype, key
                if x.dtype == torch.uint8:
                    diff = (x.int() - y.int()).abs()
                    assert int(diff.max()) <= 1, (kind, key, step)
                    moved += int((diff != 0).sum())
                    total += x.numel()
                elif key.endswith(Q.SCALE_SUFFIX):
                    torch.testing.assert_close(y, x, rtol=4 * 2 ** -23, atol=0, msg=f"{kind} {key} {step}")
                elif key == "step":
                    assert torch.equal(x, y)
                else:  # float32 states of the small tensor, the master copy
                    torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)
            # the next step starts from the reference's params and states
            with torch.no_grad():
                b.copy_(a)
            for key, value in sa.items():
                sb[key].copy_(value)
    assert moved <= total * 2e-3, (kind, moved, total)


def test_lookup_equals_the_binary_search():
    """The kernels' bucket lookup (fusedopt/_code_lookup.py) gives the specification's code for
    every boundary, its float32 neighbours and random q of both codes."""
    for signed in (False, True):
        boundaries = Q.code_boundaries(signed)
        g = torch.Generator().manual_seed(1)
        low = -1.0 if signed else 0.0
        near = torch.cat([boundaries, torch.nextafter(boundaries, torch.tensor(2.0)),
                          torch.nextafter(boundaries, torch.tensor(-2.0))]).clamp(low, 1.0)
        q = torch.cat([near, torch.rand(200_000, generator=g) * (1 - low) + low,
                       torch.rand(100_000, generator=g) ** 30 * (-1 if signed else 1),
                       torch.tensor([0.0, -0.0, 1.0, 1e-30, 2.0 ** -26, 5e-8])])
        assert torch.equal(L.code_of(q, signed), torch.searchsorted(boundaries, q, right=False)), signed
        # NaN q (an all-NaN or 0/0 block) is code 0 by the specification; the lookup gives it too
        assert L.code_of(torch.tensor([float("nan"), -float("nan")]), signed).tolist() == [0, 0]


def _edge_params():
    zeros = torch.zeros(4096)
    huge = torch.randn(4096, generator=torch.Generator().manual_seed(3)) * 1e-3
    huge[300] = 1e6
    return [zeros.requires_grad_(), huge.requires_grad_()]


@pytest.mark.parametrize("kind", ["sgd", "adam", "lion"])
def test_all_zero_block_and_one_huge_value(kind, backend):
    """An all-zero param with zero grads keeps all-zero blocks (absmax 0, every code at 0.0); a
    block with one huge value quantizes its neighbours to the smallest codes: SGD's states as
    the reference's bit for bit (its momentum rounds as torch's, see above)."""
    runs = []
    for name in ("reference", backend):
        params = _edge_params()
        opt = _make(kind, params, name)
        for step in range(3):
            params[0].grad = torch.zeros(4096)
            params[1].grad = params[1].detach().clone()
            opt.step()
        runs.append((params, opt))
    (ref_params, ref), (params, opt) = runs
    key = opt.state_keys(opt.param_groups[0])[0]
    assert bool((opt.state[params[0]][Q.scale_key(key)] == 0).all())
    assert bool((opt.state[params[0]][key] == Q.zero_code(Q.is_signed(key))).all())
    assert torch.equal(params[0], ref_params[0])
    if kind == "sgd":
        for a, b in zip(ref_params, params):
            _assert_close_param(a, b, kind)
            _assert_same_state(ref.state[a], opt.state[b], kind)
    huge_block = opt.state[params[1]][key][256:512]  # the block holding 1e6
    small = Q.dequantize(huge_block, opt.state[params[1]][Q.scale_key(key)][1:2], Q.is_signed(key))
    assert (small.abs() < 1e-1).sum() >= 255  # its neighbours (about 1e-3) round to the smallest codes or 0


def test_non_finite_grads_poison_their_blocks_as_in_the_reference(backend):
    """Without GradScaler a NaN or Inf grad reaches the states: its block's absmax becomes NaN
    or Inf and the block's codes follow the specification's rule (NaN q: code 0)."""
    runs = []
    for name in ("reference", backend):
        params = _params(torch.float32, shapes=((4100,),))
        opt = _make("sgd", params, name)
        _set_grads(params, 0)
        params[0].grad[10] = float("nan")
        params[0].grad[700] = float("inf")
        opt.step()
        runs.append((params, opt))
    (ref_params, ref), (params, opt) = runs
    torch.testing.assert_close(params[0], ref_params[0], rtol=1e-5, atol=1e-6, equal_nan=True)
    for key, value in ref.state[ref_params[0]].items():
        torch.testing.assert_close(opt.state[params[0]][key], value, rtol=0, atol=0, equal_nan=True)
    absmax = opt.state[params[0]]["momentum_buffer_absmax"]
    assert absmax[0].isnan() and absmax[2].isinf() and absmax[1].isfinite()
    codes = opt.state[params[0]]["momentum_buffer"]
    assert bool((codes[:256] == 0).all())  # NaN q everywhere in the NaN block


def test_grad_scaler_skipped_step_leaves_codes_unchanged(backend):
    params = _params(torch.float32)
    opt = fusedopt.AdamW(params, lr=1e-3, state_dtype="int8", backend=backend)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    scaler.scale(torch.ones(()))  # the scaler's state, as after scaling a loss
    _set_grads(params, 0)
    for p in params:
        p.grad.mul_(256.0)
    scaler.step(opt)
    scaler.update()
    before = {i: {k: v.clone() for k, v in opt.state[p].items()} for i, p in enumerate(params)}
    weights = [p.detach().clone() for p in params]
    _set_grads(params, 1)
    params[0].grad[0, 0] = float("inf")
    scaler.step(opt)
    for i, p in enumerate(params):
        assert torch.equal(p, weights[i])
        _assert_same_state(before[i], opt.state[p], i)


@pytest.mark.parametrize("extra", [{"max_grad_norm": 0.5}, {"clip_grad_value": 0.3},
                                   {"clip_grad_norm_per_tensor": 1.0}, {"bf16_stochastic_round": True}],
                         ids=["max_grad_norm", "clip_grad_value", "per_tensor_clip", "stochastic_round"])
def test_grad_options_bit_for_bit(extra, backend):
    """SGD's 8-bit states with each grad option, as the reference's bit for bit (bf16 params for
    stochastic rounding, bit for bit too; float32 params to float32 rounding, as above)."""
    stochastic = "bf16_stochastic_round" in extra
    dtype = torch.bfloat16 if stochastic else torch.float32
    # stochastic rounding: one step, as an ulp of difference in the float32 result may move the
    # rounding to the other neighbour, and the params then walk apart by a few ulps
    steps = 1 if stochastic else 6
    (ref_params, ref), (params, opt) = _run_both("sgd", dtype, False, steps=steps, backend=backend, **extra)
    for a, b in zip(ref_params, params):
        _assert_close_param(a, b, extra)
        _assert_same_state(ref.state[a], opt.state[b], extra)


@needs_cpu
def test_thread_count_does_not_change_the_bits():
    """Blocks never straddle two threads' slices: the same bits with 1 and 2 threads, on
    tensors large enough to be split (more than 2 x 32k elements), the states as the
    reference's."""
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            params = _params(torch.float32, shapes=((70_001,), (300, 257)))
            opt = _make("adam", params, "cpu")
            for step in range(3):
                _set_grads(params, step)
                opt.step()
            results.append((params, opt))
    finally:
        torch.set_num_threads(previous)
    (one_params, one), (two_params, two) = results
    for a, b in zip(one_params, two_params):
        assert torch.equal(a, b)
        _assert_same_state(one.state[a], two.state[b], "threads")


def test_groups_with_and_without_8_bit_states(backend):
    def build(backend):
        params = _params(torch.bfloat16)
        opt = fusedopt.SGD([{"params": params[:2], "state_dtype": "int8"}, {"params": params[2:]}], lr=1e-2,
                           momentum=0.9, backend=backend)
        for step in range(5):
            _set_grads(params, step)
            opt.step()
        return params, opt

    (ref_params, ref), (cpu_params, cpu) = build("reference"), build(backend)
    for a, b in zip(ref_params, cpu_params):
        _assert_close_param(a, b, "groups")
        _assert_same_state(ref.state[a], cpu.state[b], "groups")
    assert cpu.state[cpu_params[0]]["momentum_buffer"].dtype == torch.uint8
    assert cpu.state[cpu_params[2]]["momentum_buffer"].dtype == torch.bfloat16


@needs_cpu
def test_auto_picks_the_cpu_kernels_without_a_warning():
    import warnings

    fusedopt.backends._resolved.clear()
    params = _params(torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        opt = fusedopt.Adam(params, state_dtype="int8")
        _set_grads(params, 0)
        opt.step()
    assert opt.state[params[0]]["exp_avg"].dtype == torch.uint8


def test_direct_call_with_a_missing_scale_row_is_refused():
    """A batch whose absmax rows do not match its states is refused in Python, before the kernel."""
    from fusedopt.backends.native import int8_arguments
    from fusedopt._layout import TensorBatch, UpdateConfig

    batch = TensorBatch([], [], None, [[]], torch.device("cpu"), torch.float32, None, 0, scales=())
    with pytest.raises(RuntimeError, match="absmax rows"):
        int8_arguments(batch, UpdateConfig(hyper={}, lr=1e-3, int8_states=True, int8_signed=(True,)))
