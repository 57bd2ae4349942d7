"""state_dtype="int8" on the Triton backend (fusedopt/backends/triton/_int8.py and the INT8 path
of _kernel.multi_tensor_kernel) against fusedopt/_quantize.py's specification and the
reference backend.

Two comparisons, because the reference backend's float32 update is torch's CPU operations,
which do not round as the kernels' IEEE operations do: torch 2.13's CPU float32 sqrt is not
correctly rounded (here a fifth of its results on uniform values in [0, 1) are one ulp
off), and its vectorised lerp_, addcmul_ and add_(alpha=...) take fused multiply-adds (on
AVX2; with ATEN_CPU_CAPABILITY=default Lion and SGD match the kernels bit for bit with
float32 states, the other kinds still do not), so its float32 states and params differ from
the kernels' by an ulp here and there with float32 states too (test_triton compares those
with tolerances; test_stochastic_round's REFERENCE_FMA). An ulp in a new state moves its
absmax (the block's largest element is stored exactly) or, near a decision boundary, its
code, so no kind is bit for bit with the reference over several steps, and the comparisons
are:

1. Exact, for every kind, param dtype and master copy, 20 steps: each 8-bit step is the
   float32 step (the same Triton kernels with float32 params, grads and states, restarted
   every step from the 8-bit run's params and dequantized states, `_quantize.dequantized_like`)
   whose new states are quantized once (`_quantize.quantized_like`, which is what the reference
   backend stores): params and master copies, codes and absmax bit for bit. That is the
   reference backend's procedure (dequantize, the float32 update, quantize the new values,
   the param reading the new float32 state) around the kernels' arithmetic; it checks the
   dequantization, the block absmax, the code lookup, the table rows and the chunking exactly.
2. Against the reference backend, one step at a time from identical states (before every
   step the Triton optimizer's params and states, codes and absmax included, are set to the
   reference's), within what one step of those float32 rounding differences explains (the
   tolerances and their measured values: test_one_step_from_the_reference_states).

Bit for bit with other backends where that holds: SGD's 8-bit states with the reference's
(its momentum rounds in torch as in the kernels), and every kind with the compiled CPU
kernels (csrc/include/fusedopt/int8_states.h; skipped where fusedopt._C lacks them).

Edge blocks (all zeros, one huge value, NaN, a short last block), GradScaler's skipped step,
clip_grad_value and max_grad_norm, a small launch geometry, and a group with 8-bit states
beside one without, each through comparison 1.

Without a GPU the kernels run under Triton's interpreter (see test_triton.py), at about a
quarter of a second per step and run for three params (two quantized, one not): the
20-step matrix of comparison 1 takes about ten minutes on one core.
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # before anything below imports triton

pytest.importorskip("triton")

import fusedopt  # noqa: E402
from fusedopt import _quantize as Q  # noqa: E402
from fusedopt._layout import MASTER_KEY  # noqa: E402
from fusedopt.optim import _spec  # noqa: E402
from test_int8_states import KINDS, LR, OPTIONS  # noqa: E402
from test_triton import interpreted_kernels  # noqa: E402,F401  (module fixture: kernels built for the interpreter)

pytestmark = pytest.mark.triton
DEVICE = torch.device("cuda" if CUDA else "cpu")
# Two quantized params (16 whole blocks and a 4-element one; 18 whole blocks) and one small
# one (float32 states, or the param's dtype without a master copy).
SHAPES = ((4100,), (64, 72), (7, 5))
STEPS = 20
DTYPES = {  # id: (param dtype, master_weights)
    "fp32": (torch.float32, False),
    "bf16": (torch.bfloat16, False),
    "bf16-master": (torch.bfloat16, True),
    "fp16": (torch.float16, False),
    "fp16-master": (torch.float16, True),
}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _params(dtype=torch.float32, shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(DEVICE, dtype).requires_grad_() for shape in shapes]


def _grads(params, step, scale=1.0):
    """Random grads plus a pull towards 0, the same for every run."""
    g = torch.Generator().manual_seed(100 + step)
    return [((torch.randn(p.shape, generator=g) + 0.5 * p.detach().float().cpu()) * scale).to(DEVICE, p.dtype)
            for p in params]


def _make(kind, params, **extra):
    options = {"lr": LR.get(kind, 1e-3), **OPTIONS.get(kind, {}), **extra}
    return _spec._CLASSES[kind](params, **options)


def _same(actual, expected):
    """Bit for bit, except that any NaN equals any NaN (their payloads are not specified)."""
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        return False
    if actual.is_floating_point():
        nan = actual.isnan()
        if not torch.equal(nan, expected.isnan()):
            return False
        actual, expected = actual[~nan], expected[~nan]
    return torch.equal(actual, expected)


class SpecTwin:
    """An 8-bit run on Triton and its float32 twin (float32 params, grads and states, on
    Triton too): before each step the twin is set to the 8-bit run's params (its master copies
    where it has them) and dequantized states, so after it the 8-bit run must hold the twin's
    params rounded once to their dtype and its new states quantized once."""

    def __init__(self, kind, params, groups=None, **options):
        self.kind, self.params = kind, params
        self.twins = [p.detach().float().requires_grad_() for p in params]
        twin_options = {k: v for k, v in options.items() if k not in ("state_dtype", "master_weights")}
        if groups is None:
            self.opt = _make(kind, params, backend="triton", state_dtype="int8", **options)
            self.twin = _make(kind, self.twins, backend="triton", **twin_options)
        else:  # param groups: lists of indices into params, each with its own options
            self.opt = _make(kind, [{"params": [params[i] for i in g], **o} for g, o in groups], backend="triton",
                             **options)
            self.twin = _make(kind, [{"params": [self.twins[i] for i in g]} for g, _ in groups], backend="triton",
                              **twin_options)
        self.keys = self.twin.state_keys(self.twin.param_groups[0])

    def restart(self):
        for p, t in zip(self.params, self.twins):
            state = self.opt.state[p]
            t.data.copy_(state[MASTER_KEY] if MASTER_KEY in state else p.detach().float())
            for key, value in state.items():
                if key.endswith(Q.SCALE_SUFFIX) or key == MASTER_KEY:
                    continue
                if value.dtype == Q.CODE_DTYPE:
                    value = Q.dequantized_like(value, state[Q.scale_key(key)], key)
                self.twin.state[t][key] = value.to(torch.float32, copy=True)

    def set_grads(self, grads):
        for p, t, g in zip(self.params, self.twins, grads):
            p.grad, t.grad = g, g.to(torch.float32, copy=True)

    def step(self, grads, scalers=None):
        self.restart()
        self.set_grads(grads)
        if scalers is None:
            self.opt.step()
            self.twin.step()
        else:
            for scaler, opt in zip(scalers, (self.opt, self.twin)):
                scaler.step(opt)
                scaler.update()

    def check(self, what=""):
        """The 8-bit run's params, master copies, codes and absmax are the spec's of the twin's step."""
        for i, (p, t) in enumerate(zip(self.params, self.twins)):
            state, twin_state = self.opt.state[p], self.twin.state[t]
            assert _same(p.detach(), t.detach().to(p.dtype)), (what, i, "param")
            if MASTER_KEY in state:
                assert _same(state[MASTER_KEY], t.detach()), (what, i, "master copy")
            for key in self.keys:
                if key not in state:
                    continue
                if state[key].dtype == Q.CODE_DTYPE:
                    codes, absmax = Q.quantized_like(twin_state[key], key)
                    assert _same(state[Q.scale_key(key)], absmax), (what, i, key, "absmax")
                    assert _same(state[key], codes), (what, i, key, "codes")
                else:  # float32 states (a small tensor, or a group without 8-bit states), or the param's dtype
                    assert _same(state[key], twin_state[key].to(state[key].dtype)), (what, i, key)


def _run_spec(kind, dtype=torch.float32, master=False, steps=STEPS, shapes=SHAPES, grads=_grads, **options):
    params = _params(dtype, shapes)
    run = SpecTwin(kind, params, **({"master_weights": True} if master else {}), **options)
    for step in range(steps):
        run.step(grads(params, step))
        run.check(step)
    return run


# ----------------------------------------------------------------- 1. the spec, exactly
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_each_step_quantizes_the_float32_step(kind, dtype):
    run = _run_spec(kind, *DTYPES[dtype])
    state = run.opt.state[run.params[0]]
    assert all(state[key].dtype == Q.CODE_DTYPE for key in run.keys)


@pytest.mark.parametrize("kind", ["adam", "lamb"])
def test_grad_clipping(kind):
    """max_grad_norm (LAMB's norm pass reads the dequantized states) and clip_grad_value."""
    _run_spec(kind, steps=6, max_grad_norm=0.5, clip_grad_value=0.05)


def test_small_launch_geometry(monkeypatch):
    """Blocks of 128 (raised to one quantization block, 256) and chunks of 512 elements: many
    programs per tensor, each starting on a quantization block."""
    from fusedopt.backends import triton as backend

    monkeypatch.setattr(backend, "LAUNCH_CONFIG", backend.LaunchConfig(block=128, blocks_per_program=4))
    _run_spec("adam", steps=4, shapes=((4100,), (4097,), (7, 5)))


# ----------------------------------------------------------------- edge blocks
def _edge_grads(params, step):
    """Block 2 of the first param all zeros, one huge value (1e15: its square, 1e30, is a
    finite float32) in block 5 among values about 1, and a tensor with one element in its last block."""
    grads = _grads(params, step)
    grads[0][512:768] = 0
    grads[0][1300] = 1e15
    return grads


def test_all_zero_block_and_one_huge_value():
    run = _run_spec("adam", steps=3, shapes=((4100,), (4097,), (7, 5)), grads=_edge_grads)
    state = run.opt.state[run.params[0]]
    for key in run.keys:
        absmax = state[Q.scale_key(key)]
        assert absmax[2].item() == 0.0, key  # the all-zero block: absmax 0, every code at 0.0
        assert bool((state[key][512:768] == Q.zero_code(Q.is_signed(key))).all()), key
        assert absmax[5].item() == Q.dequantized_like(state[key], absmax, key)[1300].abs().item(), key
    assert state["exp_avg_sq_absmax"][5].item() > 1e26  # the huge value is its block's absmax


def test_nan_grad_poisons_its_blocks_only():
    """A NaN grad without GradScaler: the NaN reaches the states of its element, so its blocks'
    absmax are NaN (as torch.amax) and their codes 0; the other blocks go on."""
    def grads(params, step):
        grads = _grads(params, step)
        if step == 1:
            grads[0][300] = float("nan")
        return grads

    run = _run_spec("adam", steps=3, grads=grads)
    state = run.opt.state[run.params[0]]
    for key in run.keys:
        absmax = state[Q.scale_key(key)]
        assert absmax[1].isnan().item() and bool((state[key][256:512] == 0).all()), key
        assert not absmax[torch.arange(absmax.numel()) != 1].isnan().any().item(), key


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_grad_scaler_skipped_step_leaves_codes_and_absmax(bad):
    params = _params()
    run = SpecTwin("adam", params, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)
    scalers = [torch.amp.GradScaler(DEVICE.type, init_scale=256.0) for _ in range(2)]
    for scaler in scalers:
        scaler.scale(torch.ones((), device=DEVICE))  # the scale exists before the first step
    for step in range(4):
        scale = scalers[0].get_scale()
        grads = _grads(params, step, scale=scale)
        if step == 2:
            grads[1].view(-1)[5] = float(bad)
            before = [{k: v.clone() for k, v in run.opt.state[p].items()} for p in params]
            weights = [p.detach().clone() for p in params]
        run.step(grads, scalers)
        if step == 2:
            for p, saved, w in zip(params, before, weights):
                assert torch.equal(p, w)
                for key, value in saved.items():
                    assert torch.equal(run.opt.state[p][key], value), (step, key)
        else:
            run.check(step)
    assert run.opt.state[params[0]]["step"].item() == 3
    assert scalers[0].get_scale() == scalers[1].get_scale()


def test_group_with_int8_states_beside_one_without():
    """A group with state_dtype="int8" (one quantized param, one small) beside a group with
    float32 states (a param large enough to be quantized, which is not)."""
    params = _params()
    run = SpecTwin("adam", params, groups=[([0, 2], {"state_dtype": "int8"}), ([1], {})])
    for step in range(4):
        run.step(_grads(params, step))
        run.check(step)
    assert run.opt.state[params[0]]["exp_avg"].dtype == Q.CODE_DTYPE
    assert run.opt.state[params[1]]["exp_avg"].dtype == torch.float32


# ----------------------------------------------------------------- 2. the reference backend, the cpu kernels
REFERENCE_STEPS = 5
CPU_REASON = fusedopt.backends.unusable_reason("cpu", torch.device("cpu"), "int8_states")


def _independent_grads(params, step):
    """Grads that do not depend on the params, so a param an ulp away changes no state."""
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g).to(DEVICE, p.dtype) for p in params]


def _twenty_steps(kind, backend, dtype, master, device=DEVICE, grads=_grads):
    params = [p.detach().to(device).requires_grad_() for p in _params(dtype)]
    opt = _make(kind, params, backend=backend, state_dtype="int8", master_weights=master)
    for step in range(STEPS):
        for p, g in zip(params, grads(params, step)):
            p.grad = g.to(device)
        opt.step()
    return params, opt


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_states_bit_for_bit_with_the_reference(dtype):
    """SGD's momentum (buf * momentum + grad, dampening 0) rounds in torch's operations as in
    the kernels, so with grads that do not depend on the params its codes, absmax and small
    float32 states are the reference's bit for bit after 20 steps; the params and master
    copies to float32 rounding (test_triton's rtol 1e-5, atol 1e-6: torch's add_(buf,
    alpha=-lr) is a fused multiply-add, an ulp a step apart), 16-bit params to one ulp (a
    float32 value an ulp away may round to the other neighbour)."""
    (reference_params, reference), (params, opt) = [_twenty_steps("sgd", backend, *DTYPES[dtype], grads=_independent_grads)
                                                    for backend in ("reference", "triton")]
    for i, (r, p) in enumerate(zip(reference_params, params)):
        eps = torch.finfo(p.dtype).eps
        tolerance = dict(rtol=1e-5, atol=1e-6) if p.dtype == torch.float32 else dict(rtol=eps, atol=eps)
        torch.testing.assert_close(p, r, **tolerance)
        for key, value in reference.state[r].items():
            if key == MASTER_KEY:
                torch.testing.assert_close(opt.state[p][key], value, rtol=1e-5, atol=1e-6)
            else:
                assert _same(opt.state[p][key], value), (dtype, i, key)
    assert opt.state[params[0]]["momentum_buffer"].dtype == Q.CODE_DTYPE


@pytest.mark.skipif(CPU_REASON is not None, reason=f"backend 'cpu' has no 8-bit kernels here: {CPU_REASON}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_twenty_steps_equal_the_cpu_kernels(kind, dtype):
    """The compiled CPU kernels and the Triton kernels state the same IEEE operations without
    contraction and the same quantization (csrc/include/fusedopt/int8_states.h, _int8.py), so
    after 20 steps params, master copies, codes, absmax and small float32 states are equal bit
    for bit (the cpu backend on CPU tensors, Triton on this module's device)."""
    (cpu_params, cpu), (params, opt) = (_twenty_steps(kind, "cpu", *DTYPES[dtype], device=torch.device("cpu")),
                                        _twenty_steps(kind, "triton", *DTYPES[dtype]))
    for i, (c, p) in enumerate(zip(cpu_params, params)):
        assert _same(p.detach().cpu(), c.detach()), (kind, dtype, i)
        assert set(opt.state[p]) == set(cpu.state[c])
        for key, value in cpu.state[c].items():
            assert _same(opt.state[p][key].cpu(), value), (kind, dtype, i, key)


def _ulps_apart(actual, expected):
    """How many float32 values apart (both non-negative or both non-positive)."""
    return (actual.view(torch.int32).long() - expected.view(torch.int32).long()).abs()


@pytest.mark.parametrize("kind", KINDS)
def test_one_step_from_the_reference_states(kind):
    """Before every step the Triton optimizer's params and states (codes, absmax, step
    counters) are set to the reference's; after it they must agree up to one step of float32
    rounding differences (torch's not correctly rounded sqrt, its fused multiply-adds): params
    within 2^-22 of the tensor's largest |value| (two ulps there; measured: at most 2^-23.7);
    absmax within 4 ulps (measured: 1; one ulp in a new state moves its block's absmax, stored
    exactly, by as much), 8 for Adadelta's acc_delta, which squares a quotient of two square
    roots and so doubles its rounding error (measured: 5 on an Intel Sapphire Rapids, the
    reference 2 ulps below a float64 evaluation from the same inputs, Triton 3 above; 3 on an
    AMD EPYC); codes at most one apart (a new state an ulp across a decision boundary), in at
    most 1% of the elements (measured: none); the small params' float32 states within 2^-21 of
    their largest |value| (measured: 2^-22)."""
    reference_params = _params()
    params = _params()
    reference = _make(kind, reference_params, backend="reference", state_dtype="int8")
    opt = _make(kind, params, backend="triton", state_dtype="int8")
    keys = opt.state_keys(opt.param_groups[0])
    for step in range(REFERENCE_STEPS):
        for p, r in zip(params, reference_params):
            p.data.copy_(r.detach())
            for key, value in reference.state[r].items():
                opt.state[p][key].copy_(value)
        grads = _grads(reference_params, step)
        for p, r, g in zip(params, reference_params, grads):
            p.grad, r.grad = g.clone(), g
        reference.step()
        opt.step()
        for i, (p, r) in enumerate(zip(params, reference_params)):
            where = (kind, step, i)
            torch.testing.assert_close(p, r, rtol=0, atol=2.0**-22 * r.abs().max().item(),
                                       msg=lambda m: f"{where} param: {m}")
            for key in keys:
                actual, expected = opt.state[p][key], reference.state[r][key]
                if actual.dtype != Q.CODE_DTYPE:
                    torch.testing.assert_close(actual, expected, rtol=0, atol=2.0**-21 * expected.abs().max().item(),
                                               msg=lambda m: f"{where} {key}: {m}")
                    continue
                scale = Q.scale_key(key)
                absmax_ulps = 8 if (kind, key) == ("adadelta", "acc_delta") else 4
                assert _ulps_apart(opt.state[p][scale], reference.state[r][scale]).max().item() <= absmax_ulps, (where, key)
                apart = (actual.int() - expected.int()).abs()
                assert apart.max().item() <= 1, (where, key)
                assert (apart > 0).float().mean().item() <= 0.01, (where, key)

def test_backend_triton_is_chosen_by_name():
    """backend='triton' runs 8-bit states when named."""
    assert fusedopt.backends.unusable_reason("triton", DEVICE, "int8_states") is None
    params = _params()
    opt = fusedopt.Adam(params, state_dtype="int8", backend="triton")
    for p, g in zip(params, _grads(params, 0)):
        p.grad = g
    opt.step()
    assert opt.state[params[0]]["exp_avg"].dtype == Q.CODE_DTYPE
